"""The OpenAPI document states what validation enforces: schemathesis generates requests from it, valid and not, for
every operation of the real app (PostgreSQL event store and read models, chDB) in-process over ASGI, and no answer
is a server error, an undocumented status or a body that does not match its documented schema; and no request the
schema admits is refused with a 400 or 422 (positive data acceptance), but for the rules listed in BEYOND_SCHEMA.
Bounded: a few examples per operation, derandomized."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, positive_data_acceptance,
                                               response_schema_conformance, status_code_conformance)


from tests.support.tenants import isolated_app

pytestmark = pytest.mark.integration
EXAMPLES = 40  # per operation: the whole run stays well under a minute
DOCUMENTED = [status_code_conformance, content_type_conformance, response_schema_conformance]
# Refusals of schema-valid requests that no keyword of the documents can prevent: (operation, problem field,
# detail), all regular expressions. Each depends on what exists (a referenced object, a file) or on another field,
# or is a rule on an object's keys, which the documents test holds to free-form objects (`propertyNames` would
# change their meaning). Only what this run meets is listed: keep it short and specific.
BEYOND_SCHEMA: list[tuple[str, str, str]] = [
    # a referenced object must exist: 422 names the body field
    ("POST /api/v1/models/{name}/versions", "job_id", "no job"),
    (r"(POST|PUT) /api/v1/deployments(/\{name\})?", r"variants\[\d+\]\.(model|alias)", "no model|has no alias"),
    # across fields: a model reference gives a version or an alias
    (r"(POST|PUT) /api/v1/deployments(/\{name\})?", r"variants\[\d+\]\.version", "a version number or an alias"),
    # a builtin dataset has its task and target; a file must be inside a dataset root (the pattern does not model
    # a URI's query, fragment or percent-encoding)
    (r"POST /api/v1/(training/jobs|studies)", "task", r"builtin://\w+ is a \w+ dataset"),
    (r"POST /api/v1/(training/jobs|studies)", r"dataset\.target", "has a fixed target"),
    (r"POST /api/v1/(training/jobs|studies)", r"dataset\.uri",
     "outside the dataset roots|no such file|not enabled|unsupported file type|is not a .csv"),
    # across fields (the framework): a built-in job needs a dataset and takes no code, and resources only with
    # pytorch; a code job (python) needs its code, a bundle of the project with that entrypoint; so does a study of
    # code; resources no runner seen lately has are refused
    (r"POST /api/v1/training/jobs", r"dataset|code|resources(\.\w+)?",
     "required for framework|only for framework python|only for frameworks python and pytorch|no runner seen"),
    (r"POST /api/v1/(training/jobs|studies)", r"code\.(code_id|entrypoint)", "no code bundle|is not a .py file"),
    (r"POST /api/v1/studies", r"code|resources", "only for framework python|required for framework python"),
    # the names a job's params take depend on its framework (described per framework); keys of free-form objects
    (r"POST /api/v1/training/jobs", r"params(\..*)?", "."),
    # a study's objective metric depends on its task, the names in its search space and fixed params on the
    # framework; those two, the sampler and the pruner are free-form objects described in words
    (r"POST /api/v1/studies", r"objective\.metric", r"must be one of the \w+ metrics|must be a metric name"),
    (r"POST /api/v1/studies", r"(search_space|fixed_params|sampler|pruner)(\..*)?", "."),
    # a validation's fields depend on its strategy and on the dataset (rows left to train, a time column there)
    (r"POST /api/v1/(training/jobs|studies)", r"validation(\..*)?", "."),
    # a forecasting job's dataset block and framework, an image job's framework and params depend on the task
    (r"POST /api/v1/(training/jobs|studies)", r"dataset\.forecast(\..*)?|framework|validation",
     "only for task forecasting|trained by|forecasting|image"),
    # a schedule's cron and timezone are read by croniter and the tz database; its template is checked as a submit
    ("POST /api/v1/schedules", r"cron|timezone", "."),
    (r"(POST|PATCH) /api/v1/schedules(/\{schedule_id\})?", r"(job|study|retrain)(\..*)?", "."),
    # a retrain is checked as the job it submits (params by framework, validation, dataset), its gate's metric
    # against the task, and a challenger only with register_as
    (r"POST /api/v1/deployments/\{name\}/retrain", r"(params|validation|dataset|gate|variant|challenger)(\..*)?", "."),
    # an upload's file name (a multipart part's filename has no schema)
    ("POST /api/v1/datasets", "file", "file name must end with"),
    # a code bundle's content must be a .tar.gz or .zip archive (a multipart part's content has no schema)
    ("POST /api/v1/code", "file", r"not a \.tar\.gz or \.zip|not a readable"),
    # a password must not be one of the commonest (a list, not a pattern)
    (r"POST /api/v1/users|PUT /api/v1/me/password", "password", "most common"),
    # a token scope must match at least one action (patterns over the action names)
    ("POST /api/v1/tokens", "scopes", "matches no action"),
    # logout ends a login session: the test's credential is an API token
    ("POST /api/v1/auth/logout", "Authorization", "logout ends a login session"),
    # a form whose generated extra field has an empty name is not parsed as the form it means
    ("POST /api/v1/auth/token", "username|password", "Field required"),
]


def beyond_schema(case: Any, response: Any) -> bool:
    """True if `response` refuses `case` for one of the BEYOND_SCHEMA rules (by the problem's field and detail)."""
    try:
        problem = json.loads(response.content)
    except ValueError:
        return False
    field, detail = str(problem.get("field") or ""), str(problem.get("detail") or "")
    return any(re.fullmatch(op, case.operation.label) and re.fullmatch(f, field) and re.search(d, detail)
               for op, f, d in BEYOND_SCHEMA)


def accepts_valid_data(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, less the refusals listed in BEYOND_SCHEMA."""
    if response.status_code in (400, 422) and beyond_schema(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


def whole_numbers(value: Any) -> Any:
    """`value` with every integral float (2.0) an int. JSON Schema counts 2.0 as an integer; the API takes JSON
    integers strictly (StrictInt refuses 2.0 as it refuses "2"), and no keyword can tell 2.0 from 2."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


CHECKS = [not_a_server_error, accepts_valid_data, *DOCUMENTED]  # /readyz answers a documented 503 when not ready


@pytest.fixture(scope="module")
def app(module_database_url: str, clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # chDB allows one data path per process: share the session's (data_dir/chdb is the clickhouse fixture's path);
    # the read models run as in `serve`, so a command's answer (read back from its read model) is the real one
    root: Path = tmp_path_factory.mktemp("dataset-root")
    with isolated_app(module_database_url, clickhouse.path.parent, root) as (client, _):
        client.app.state.test_headers = {"Authorization": client.headers["Authorization"]}
        yield client.app


def test_every_answer_is_documented_and_none_is_a_server_error(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    findings: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            if isinstance(case.body, (dict, list)):
                case.body = whole_numbers(case.body)
            case.call_and_validate(checks=CHECKS if case.path != "/readyz" else DOCUMENTED,
                                   headers={**(case.headers or {}), **app.state.test_headers})

        try:
            check()
        except (Exception, BaseExceptionGroup) as e:  # every operation's findings, then one assertion
            findings[operation.label] = " ".join(str(e).split())[:1200]
    assert not findings, "\n".join(f"{label}: {why}" for label, why in findings.items())
