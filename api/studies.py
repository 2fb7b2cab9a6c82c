"""/api/v1/studies: create, watch, list, trials, history, importances, cancel; /api/v1/experiments/compare."""
from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.quotas import admit_study
from api.auth import Access, access_of, allow
from api.code_jobs import check_code_job, is_code, refuse_code_fields
from api.context import IDEMPOTENT, CommandContextDep, idempotency_key, repeated
from api.deps import READ_YOUR_WRITES_TIMEOUT_S, Services, ServicesDep
from api.importances import ImportanceCache
from api.jobs import check_forecast, check_job_dataset, check_validation, stored_evaluation
from api.limits import SafeText, check_params
from api.problems import Problem
from api.schemas.common import IdPrefix, Tag, problems
from api.schemas.jobs import Comparison
from api.schemas.studies import (Importances, StudyAccepted, StudyHistory, StudyIn, StudyList, StudyPublic, TrialList,
                                 TrialPublic)
from commands.studies import CreateStudy, StudyNotFoundError
from commands.study_optimizer import StudyOptimizer, TrialRecord
from domain.frameworks import ParamsError
from domain.search_space import StudySpecError, check_study, default_direction
from domain.vocabulary import StudyStatus, TrialState

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])
experiments = APIRouter(prefix="/api/v1/experiments", tags=["studies"])


def _study(s: Services, study_id: UUID, request: Request) -> dict:
    """The study in the request's project; StudyNotFoundError (404) for a missing one and another project's alike."""
    row = s.studies.get(study_id, project=access_of(request).project)
    if row is None:
        raise StudyNotFoundError(str(study_id))
    return row


def _catch_up(s: Services, position: int | None) -> None:
    if position is not None:
        s.applied.wait_for("studies", s.app.name, position, READ_YOUR_WRITES_TIMEOUT_S)


def check_study_in(body: StudyIn, s: Services, access: Access) -> tuple[dict, dict | None, dict | None]:
    """(objective with its direction filled in, code, resources) once every rule holds; Problem(422) naming the
    field. A study of framework python runs the user's code in every trial: its submitter must be allowed to run
    code (403 otherwise), and its bundle and entrypoint are checked as a code job's (api/code_jobs.py)."""
    direction = body.objective.direction or default_direction(body.objective.metric)
    objective = {"metric": body.objective.metric, "direction": direction}
    try:
        for where in ("search_space", "fixed_params", "sampler", "pruner"):
            if not (where == "fixed_params" and is_code(body.framework)):  # a code job's bounds: below
                check_params(getattr(body, where), where)
        check_study(body.framework, body.task, objective, body.search_space, body.fixed_params, body.sampler,
                    body.pruner, body.n_trials, body.max_parallel)
    except (StudySpecError, ParamsError) as e:
        raise Problem(422, "Invalid request", f"{e.field}: {e.reason}", e.field) from e
    code = resources = None
    if is_code(body.framework):
        code, resources = check_code_job(body.code, body.resources, body.fixed_params, s, access,
                                         params_field="fixed_params")
    else:
        refuse_code_fields(body.code, body.resources)
    check_job_dataset(body.framework, body.task, body.dataset.uri, body.dataset.target, body.fixed_params, s,
                      params_field="fixed_params", project=access.project)
    return objective, code, resources


@router.post("", dependencies=[allow("study.create")], status_code=202, response_model=StudyAccepted,
             responses={**problems(400, 409, 413, 422, 429), **repeated(StudyAccepted)}, openapi_extra=IDEMPOTENT)
def create_study(body: StudyIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> JSONResponse:
    """Create a study (202; 200 when the Idempotency-Key was seen before). Its trials start at once."""
    access = access_of(request)
    project = access.project
    objective, code, resources = check_study_in(body, s, access)
    check_forecast(body.framework, body.task, body.dataset, body.validation, s)
    admit_study(s, project)
    cmd = CreateStudy(project=project, name=body.name, framework=body.framework, task=body.task,
                      dataset=body.dataset.model_dump(exclude_none=True), objective=objective,
                      search_space=body.search_space, fixed_params=body.fixed_params, sampler=body.sampler,
                      pruner=body.pruner, n_trials=body.n_trials, max_parallel=body.max_parallel,
                      timeout_s=body.timeout_s, priority=body.priority, tags=body.tags, code=code,
                      resources=resources, validation=check_validation(body.validation, body.framework, body.dataset, s))
    out = s.study_commands.create(cmd, idempotency_key(request), ctx)
    _catch_up(s, out.position)
    accepted = StudyAccepted(study_id=out.study_id, status=out.status, created_at=out.created_at)  # type: ignore[arg-type]
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202 if out.created else 200,
                        headers={"Location": f"{router.prefix}/{out.study_id}"})


@router.get("", dependencies=[allow("study.read")], response_model=StudyList, responses=problems(422))
def list_studies(request: Request, s: ServicesDep,
                 status: Annotated[list[StudyStatus] | None, Query(max_length=5, description="any of")] = None,
                 tag: Annotated[list[Tag] | None, Query(max_length=20, description="all of")] = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                 id_prefix: IdPrefix = None) -> StudyList:
    rows, total = s.studies.list(project=access_of(request).project, status=status, tag=tag, limit=limit, offset=offset, id_prefix=id_prefix)
    return StudyList(items=[StudyPublic.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{study_id}", dependencies=[allow("study.read")], response_model=StudyPublic, responses=problems(404, 422))
def get_study(study_id: UUID, request: Request, s: ServicesDep) -> StudyPublic:
    return StudyPublic.model_validate(_study(s, study_id, request))


@router.get("/{study_id}/trials", dependencies=[allow("study.read")], response_model=TrialList, responses=problems(404, 422))
def list_trials(study_id: UUID, request: Request, s: ServicesDep,
                state: Annotated[list[TrialState] | None, Query(max_length=5, description="any of")] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> TrialList:
    _study(s, study_id, request)
    rows, total = s.studies.trials(study_id, state=state, limit=limit, offset=offset)
    return TrialList(items=[TrialPublic.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{study_id}/history", dependencies=[allow("study.read")], response_model=StudyHistory, responses=problems(404, 422))
def history(study_id: UUID, request: Request, s: ServicesDep) -> StudyHistory:
    """Completed trials in order with the best value so far: the data of an optimisation-history plot."""
    study = _study(s, study_id, request)
    return StudyHistory(study_id=study_id, direction=study["objective"]["direction"],
                        points=s.studies.history(study_id))  # type: ignore[arg-type]


@router.get("/{study_id}/importances", dependencies=[allow("study.read")], response_model=Importances, responses=problems(404, 422))
async def importances(study_id: UUID, s: ServicesDep, request: Request) -> Importances:
    """Optuna's parameter importances over the completed trials (computed from the read model; once per number of
    completed trials, a few at a time: 503 with Retry-After while the server is busy computing others)."""
    study = await run_in_threadpool(_study, s, study_id, request)  # visible first: 404 across projects

    def compute() -> Importances:
        done = s.studies.completed_trials(study_id)
        opt = StudyOptimizer(study_id, study["objective"]["direction"], study["search_space"], study["sampler"],
                             {"type": "none"})
        opt.restore([TrialRecord(number=i, params=p, state="completed", value=v) for i, (p, v) in enumerate(done)])
        return Importances(study_id=study_id, completed_trials=len(done), importances=opt.importances())

    cache: ImportanceCache = request.app.state.importances
    # completed trials only grow (a trial's end is final): their count names the data importances are computed from
    return await cache.get((study_id, study["counts"][TrialState.COMPLETED.value]), compute)


@router.delete("/{study_id}", dependencies=[allow("study.cancel")], status_code=202, response_model=StudyPublic, responses=problems(404, 409, 422))
def cancel_study(study_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep) -> StudyPublic:
    """Cancel: no new trials start, running trials are cancelled; completed trials and the best are kept."""
    _, position = s.study_commands.request_cancel(study_id, project=access_of(request).project, ctx=ctx)
    _catch_up(s, position)
    return StudyPublic.model_validate(_study(s, study_id, request))


_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
JOB_IDS = f"^{_UUID}(,{_UUID}){{0,9}}$"


@experiments.get("/compare", dependencies=[allow("job.read")], response_model=Comparison, responses=problems(404, 422))
def compare(request: Request, s: ServicesDep,
            job_ids: Annotated[SafeText, Query(min_length=36, max_length=10 * 37,
                                               json_schema_extra={"pattern": JOB_IDS},
                                               description="1 to 10 comma-separated job ids")],
            metric: Annotated[SafeText, Query(min_length=1, max_length=200)] = "valid_loss",
            max_points: Annotated[int, Query(ge=4, le=10_000)] = 1000) -> Comparison:
    """One metric's series of up to 10 jobs side by side (each downsampled keeping first, last, min and max, its
    latest attempt) with their final metrics: the comparison of training runs (e.g. a study's trials)."""
    try:
        ids = list(dict.fromkeys(UUID(x.strip()) for x in job_ids.split(",")))
    except ValueError:
        raise Problem(422, "Invalid request", "job_ids: comma-separated UUIDs", "job_ids") from None
    if not 1 <= len(ids) <= 10:
        raise Problem(422, "Invalid request", "job_ids: 1 to 10 distinct job ids", "job_ids")
    runs, project = [], access_of(request).project
    for job_id in ids:
        row = s.jobs.get(job_id, project=project)
        if row is None:  # another project's job is as missing as an unknown one
            raise Problem(404, "Not found", f"no training job {job_id}", "job_ids")
        attempt, points = s.metrics.series_of(str(job_id), [metric], max_points=max_points).get(metric, (None, []))
        runs.append({"job_id": job_id, "name": row["name"], "status": row["status"], "attempt": attempt,
                     "final_metrics": row["final_metrics"], "evaluation": _figures(stored_evaluation(s, row)),
                     "points": [{"step": st, "value": v, "ts": ts} for st, v, ts in points]})
    return Comparison(metric=metric, runs=runs)  # type: ignore[arg-type]


def _figures(report: dict | None) -> dict | None:
    """What a side-by-side view shows of an evaluation report: each split's metrics (and per-class F1 and ROC AUC),
    the folds' mean and sd, the best step and the top features."""
    if report is None:
        return None
    splits = {}
    for name, section in report.get("splits", {}).items():
        figures = {"rows": section.get("rows"), "metrics": section.get("metrics")}
        if "per_class" in section:
            auc = {c["label"]: c.get("auc") for c in section.get("roc", [])}
            figures["per_class"] = [{"label": c["label"], "f1": c["f1"], "support": c["support"],
                                     "roc_auc": auc.get(c["label"])} for c in section["per_class"][:20]]
        splits[name] = figures
    folds = report.get("folds")
    return {"splits": splits, "folds": {"mean": folds["mean"], "sd": folds["sd"]} if folds else None,
            "best_step": report.get("best_step"),
            "top_features": [f["feature"] for f in (report.get("feature_importance") or [])[:5]]}
