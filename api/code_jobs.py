"""A code job's submit checks: what a job with `"framework": "python"` must carry beyond a built-in job's.

Who: submitting a code job is the action `code.run` (engineer and up; a token's scopes must cover it), checked on
top of the route's `job.submit`. What: a code bundle of the job's own project (`code.code_id`; another project's
is as missing as an unknown one) and an entrypoint among its top-level .py files (`code.entrypoint`); free-form
params within the code bounds (api/limits.py); a dataset, when given, checked as any job's. The answer is the
job's `code` and `resources` as its Submitted event records them: the bundle's sha256 pins the bytes the runner
will unpack.
"""
from __future__ import annotations

from typing import Any

from api.auth import Access
from api.deps import Services
from api.limits import check_params
from api.problems import Problem
from api.schemas.jobs import CODE_RESOURCES, CodeIn, ResourcesIn
from domain.access import authorize
from domain.frameworks import ParamsError, framework_spec
from infra.code_bundles import get_bundle


def is_code(framework: str) -> bool:
    return framework_spec(framework).code


def check_code_job(code: CodeIn | None, resources: ResourcesIn | None, params: dict[str, Any], s: Services,
                   access: Access, params_field: str = "params") -> tuple[dict[str, Any], dict[str, Any]]:
    """(code, resources) of a code job, or Problem 403/422 naming what is wrong (a study's `fixed_params` are
    checked as its trials' params, named `params_field`)."""
    authorize(access.principal, access.project, "code.run")
    if code is None:
        raise Problem(422, "Invalid request", "code: required for framework python (a code_id and an entrypoint)",
                      "code")
    try:
        check_params(params, params_field, code=True)
    except ParamsError as e:
        raise Problem(422, "Invalid request", f"{e.field}: {e.reason}", e.field) from e
    bundle = get_bundle(s.settings.code_root, access.project, code.code_id)
    if bundle is None:
        raise Problem(422, "Invalid request", f"code.code_id: no code bundle {code.code_id} in project "
                      f"{access.project}; upload it with POST /api/v1/code", "code.code_id")
    if code.entrypoint not in bundle.entrypoints:
        shown = ", ".join(bundle.entrypoints[:10]) or "none"
        raise Problem(422, "Invalid request", f"code.entrypoint: {code.entrypoint!r} is not a .py file at the top "
                      f"of bundle {code.code_id} (its entrypoints: {shown})", "code.entrypoint")
    return ({"code_id": bundle.code_id, "sha256": bundle.sha256, "entrypoint": code.entrypoint,
             "args": list(code.args)},
            resources.model_dump() if resources is not None else dict(CODE_RESOURCES))


def refuse_code_fields(code: CodeIn | None, resources: ResourcesIn | None) -> None:
    """A built-in job names no code, and no resources unless its trainer can use them (PyTorch: a GPU)."""
    for field, value, which in (("code", code, "framework python (your own code)"),
                                ("resources", resources, "frameworks python and pytorch")):
        if value is not None:
            raise Problem(422, "Invalid request", f"{field}: only for {which}", field)
