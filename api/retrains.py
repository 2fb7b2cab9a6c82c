"""/api/v1/deployments/{name}/retrain and …/retrains: a deployed variant's model trained again on new data, judged by
a gate against the deployed version on the same test rows, and what came of it.

The job a retrain submits is checked exactly as a submit (params, dataset, validation, quotas) with the submitter's
`job.submit`; `register_as` needs `model.write` and `challenger` `model.export` too. serve's retrain driver
(commands/retrain_driver.py) takes every later step; these routes read the `retrains` read model only.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from api.auth import Access, access_of, allow
from api.context import IDEMPOTENT, CommandContextDep, idempotency_key, repeated
from api.deps import READ_YOUR_WRITES_TIMEOUT_S, Services, ServicesDep
from api.jobs import check_job_dataset, check_params_shape, check_validation
from api.problems import Problem
from api.quotas import admit_job
from api.schemas.common import IdPrefix, problems
from api.schemas.datasets import DatasetIn
from api.schemas.deployments import DeploymentName
from api.schemas.retrains import RetrainIn, RetrainList, RetrainPublic
from commands.retrains import RetrainPlan
from domain.access import authorize
from domain.retrain import RetrainStatus
from domain.vocabulary import TASK_METRICS

router = APIRouter(prefix="/api/v1/deployments", tags=["retrains"])
NamePath = Annotated[DeploymentName, Path()]
READ_MODEL = "deployments"  # the retrains table is the deployments read model's


def check_retrain(name: str, body: RetrainIn, s: Services, access: Access) -> RetrainPlan:
    """What retraining `name` as `body` asks submits, checked as a submit with the permissions it needs; Problem
    (403, 404, 422 naming the field) otherwise."""
    for wanted, action in ((True, "job.submit"), (body.register_as is not None, "model.write"),
                           (body.challenger is not None, "model.export")):
        if wanted:
            authorize(access.principal, access.project, action)
    if body.challenger is not None and body.register_as is None:
        raise Problem(422, "Invalid request", "challenger: needs register_as (only a registered version can serve)",
                      "challenger")
    check_params_shape(body.params)
    plan = s.retrain_commands.plan(name, project=access.project, variant=body.variant,
                                   dataset=body.dataset.model_dump(exclude_none=True) if body.dataset else None,
                                   params=body.params, priority=body.priority)
    job = plan.job
    if body.gate is not None and body.gate.metric not in TASK_METRICS.get(job.task, ()):
        raise Problem(422, "Invalid request", f"gate.metric: a {job.task} model reports "
                                              f"{', '.join(TASK_METRICS.get(job.task, ()))}", "gate.metric")
    check_params_shape(job.params)
    check_job_dataset(job.framework, job.task, job.dataset["uri"], job.dataset.get("target"), job.params, s,
                      project=access.project)
    if body.validation is None:
        return plan
    validation = check_validation(body.validation, job.framework, DatasetIn(**job.dataset), s)
    if not (validation or {}).get("test_fraction"):
        raise Problem(422, "Invalid request", "validation.test_fraction: a retrain is judged on a test split "
                                              "(holdout or time_series with test_fraction > 0)",
                      "validation.test_fraction")
    return replace(plan, job=replace(job, validation=validation))


def _retrain(s: Services, name: str, retrain_id: UUID, project: str) -> RetrainPublic:
    row = s.retrains.get(name, retrain_id, project=project)
    if row is None:
        raise Problem(404, "Not found", f"no retrain {retrain_id} of deployment {name!r}", "retrain_id")
    return RetrainPublic.model_validate(row)


@router.post("/{name}/retrain", dependencies=[allow("deployment.write")], status_code=202,
             response_model=RetrainPublic, responses={**problems(400, 403, 404, 409, 413, 422, 429),
                                                      **repeated(RetrainPublic)}, openapi_extra=IDEMPOTENT)
def retrain(name: NamePath, body: RetrainIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> JSONResponse:
    """Retrain a variant's model version (default: the control's) from its lineage on `dataset`, with `params`
    merged over its params, holding out a test split; the deployed version is scored on the same test rows. With
    `gate`, a completed job passes or fails with the figures in the reason; with `register_as`, a pass becomes that
    model's next version; with `challenger`, it is exported and added to the deployment at `weight` (202; 200 when
    the Idempotency-Key was seen before)."""
    access = access_of(request)
    plan = check_retrain(name, body, s, access)
    admit_job(s, access.project)
    retrain, position = s.retrain_commands.request(
        plan, gate=body.gate.model_dump(exclude_none=True) if body.gate else None, register_as=body.register_as,
        challenger=body.challenger.model_dump(exclude_none=True) if body.challenger else None,
        idempotency_key=idempotency_key(request), ctx=ctx)
    if position is not None:
        s.applied.wait_for(READ_MODEL, s.app.name, position, READ_YOUR_WRITES_TIMEOUT_S)
    out = _retrain(s, name, retrain.id, access.project)
    return JSONResponse(out.model_dump(mode="json"), status_code=202 if position is not None else 200,
                        headers={"Location": f"{router.prefix}/{name}/retrains/{retrain.id}"})


@router.get("/{name}/retrains", dependencies=[allow("deployment.read")], response_model=RetrainList,
            responses=problems(404, 422))
def list_retrains(name: NamePath, request: Request, s: ServicesDep,
                  status: Annotated[list[RetrainStatus] | None, Query(max_length=8, description="any of")] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                  id_prefix: IdPrefix = None) -> RetrainList:
    """The deployment's retrains, newest first."""
    project = access_of(request).project
    if s.deployments.get(name, project=project) is None:
        raise Problem(404, "Not found", f"no deployment {name!r}", "name")
    rows, total = s.retrains.list(name, project=project, status=status, limit=limit, offset=offset,
                                  id_prefix=id_prefix)
    return RetrainList(items=[RetrainPublic.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{name}/retrains/{retrain_id}", dependencies=[allow("deployment.read")], response_model=RetrainPublic,
            responses=problems(404, 422))
def get_retrain(name: NamePath, retrain_id: UUID, request: Request, s: ServicesDep) -> RetrainPublic:
    """One retrain: its status, the gate's verdict with the figures, the version and challenger it led to."""
    return _retrain(s, name, retrain_id, access_of(request).project)
