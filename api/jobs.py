"""/api/v1/training/jobs: submit, watch, list, cancel, retry, metrics."""
from __future__ import annotations

import json
from pathlib import Path as FilePath, PurePosixPath
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from api.quotas import admit_job
from api.auth import Access, access_of, allow
from api.code_jobs import check_code_job, is_code, refuse_code_fields
from api.deps import READ_YOUR_WRITES_TIMEOUT_S, Services, ServicesDep, services
from api.limits import SafeText, check_params
from api.context import IDEMPOTENT, CommandContextDep, idempotency_key, repeated
from api.problems import Problem
from api.resources import check_runners_fit
from api.schemas.common import NO_CONTROL, IdPrefix, Tag, problems
from api.schemas.datasets import DatasetIn
from api.schemas.jobs import (MAX_SERIES_NAMES, Evaluation, JobAccepted, JobIn, JobList, JobPublic, MetricNames,
                              MetricSeries, RetryIn, ValidationIn)
from commands.context import CommandContext
from commands.training import JobNotFoundError, RetryJob, SubmitJob
from domain.access import authorize
from domain.contract import EVALUATION_ARTIFACT
from domain.frameworks import ParamsError, check_budget, resolve_params
from domain.validation import ValidationError, stored
from domain.vocabulary import Framework, JobStatus, Task
from infra.dataset_uploads import check_upload_owner
from infra.datasets import DatasetError, check_time_column, validate_dataset
from infra.forecasting import check_forecast_columns

router = APIRouter(prefix="/api/v1/training/jobs", tags=["training jobs"])
ANY_OF, ALL_OF = "repeatable: any of", "repeatable (20 at most): all of"


def _catch_up(s: Services, position: int | None) -> None:
    """Wait until the jobs read model has applied `position`, so a GET right after a command sees it."""
    if position is not None:  # on timeout the projector is behind: the command stands, the read model catches up
        s.applied.wait_for("jobs", s.app.name, position, READ_YOUR_WRITES_TIMEOUT_S)


def check_validation(validation: ValidationIn | None, framework: str, dataset: DatasetIn | None,
                     s: Services) -> dict | None:
    """The `validation` a job or study keeps (None: the default holdout); Problem(422) naming the field when it
    cannot split the dataset's rows."""
    if validation is None:
        return None
    if is_code(framework):
        raise Problem(422, "Invalid request", "validation: a code job splits its own rows (its script reads "
                                              "run.dataset_path)", "validation")
    try:
        kept = stored(validation.model_dump(exclude_none=True))
        if kept and kept.get("time_column") and dataset is not None:
            check_time_column(dataset.uri, kept["time_column"], s.settings.dataset_root_paths)
    except (ValidationError, DatasetError) as e:
        raise Problem(422, "Invalid request", f"{e.field}: {e.reason}", e.field) from e
    return kept


def check_forecast(framework: str, task: str, dataset: DatasetIn | None, validation: ValidationIn | None,
                   s: Services) -> None:
    """A forecasting job trains LightGBM on a dataset with a `forecast` block whose columns are there; no other job
    has one. Problem(422) naming the field."""
    forecasting = task == Task.FORECASTING
    if dataset is not None and dataset.forecast is not None and not forecasting:
        raise Problem(422, "Invalid request", "dataset.forecast: only for task forecasting", "dataset.forecast")
    if not forecasting:
        return
    if framework != Framework.LIGHTGBM:
        raise Problem(422, "Invalid request", "framework: task forecasting is trained by lightgbm", "framework")
    if validation is not None:
        raise Problem(422, "Invalid request", "validation: a forecasting job validates on each series' last "
                                              "2 x horizon steps (dataset.forecast.horizon)", "validation")
    try:
        check_forecast_columns(dataset.model_dump(exclude_none=True) if dataset else {}, s.settings.dataset_root_paths)
    except DatasetError as e:
        raise Problem(422, "Invalid request", f"{e.field}: {e.reason}", e.field) from e


def check_job(body: JobIn, s: Services, access: Access) -> tuple[dict | None, dict | None]:
    """What pydantic cannot say about a job: the params' shape and values, the dataset, the compute budget; for a
    code job its bundle and entrypoint too (api/code_jobs.py). Raises Problem(422) naming the field at fault (403
    for a code job its submitter may not run). Returns the job's `code` and `resources` (None for a built-in)."""
    code = resources = None
    if is_code(body.framework):
        code, resources = check_code_job(body.code, body.resources, body.params, s, access)
    else:
        builtin_resources = body.resources if body.framework == Framework.PYTORCH else None
        refuse_code_fields(body.code, None if builtin_resources is not None else body.resources)
        resources = builtin_resources.model_dump() if builtin_resources is not None else None
        check_params_shape(body.params)
        if body.dataset is None:
            raise Problem(422, "Invalid request", f"dataset: required for framework {body.framework}", "dataset")
    if body.dataset is not None:
        check_job_dataset(body.framework, body.task, body.dataset.uri, body.dataset.target, body.params, s,
                          project=access.project)
    check_forecast(body.framework, body.task, body.dataset, body.validation, s)
    check_runners_fit(resources, s)
    return code, resources


def check_params_shape(params: dict, code: bool = False) -> None:
    """Problem(422) naming the exact location (`params.hidden_sizes.1`) unless `params` is bounded JSON (`code`:
    within a code job's bounds)."""
    try:
        check_params(params, code=code)
    except ParamsError as e:
        raise Problem(422, "Invalid request", f"{e.field}: {e.reason}", e.field) from e


def check_job_dataset(framework: str, task: str, uri: str, target: str | None, params: dict, s: Services,
                      params_field: str = "params", *, project: str) -> None:
    """`params` resolve for the framework, the dataset is readable, fits the task and is not another project's
    upload, and the job is within the compute budget on it. Raises Problem(422) naming the field at fault."""
    try:
        resolved = resolve_params(framework, task, params)
        check_upload_owner(uri, project, s.settings.dataset_root_paths)  # first: the check reads the file
        n_features = validate_dataset(uri, target, task, s.settings.dataset_root_paths)
        check_budget(framework, resolved, n_features)
    except (DatasetError, ParamsError) as e:
        field = e.field.replace("params", params_field, 1) if e.field.startswith("params") else e.field
        raise Problem(422, "Invalid request", f"{field}: {e.reason}", field) from e


@router.post("", dependencies=[allow("job.submit")], status_code=202, response_model=JobAccepted,
             responses={**problems(400, 409, 413, 422, 429), **repeated(JobAccepted)}, openapi_extra=IDEMPOTENT)
def submit_job(body: JobIn, request: Request, ctx: CommandContextDep) -> JSONResponse:
    """Submit a job (202; 200 when the Idempotency-Key was seen before). Every limit is in the body's schema."""
    s = services(request)  # the hot path: no dependency to resolve (see api/context.py)
    key = idempotency_key(request)
    access = access_of(request)
    code, resources = check_job(body, s, access)
    cmd = SubmitJob(project=access.project, name=body.name, framework=body.framework, task=body.task,
                    dataset=body.dataset.model_dump(exclude_none=True) if body.dataset else {}, params=body.params,
                    priority=body.priority, tags=body.tags, timeout_s=body.timeout_s, code=code,
                    resources=resources, validation=check_validation(body.validation, body.framework, body.dataset, s))
    return accept_job(s, cmd, key, ctx)


def accept_job(s: Services, cmd: SubmitJob, key: str | None, ctx: CommandContext) -> JSONResponse:
    """Submit a checked job within the project's quotas: 202 with it (200 when `key` was seen before), once the
    read model shows it."""
    admit_job(s, cmd.project)
    out = s.app.submit_job(cmd, key, ctx)
    _catch_up(s, out.position)
    accepted = JobAccepted(job_id=out.job_id, status=out.status, created_at=out.created_at)  # type: ignore[arg-type]
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202 if out.created else 200,
                        headers={"Location": f"{router.prefix}/{out.job_id}"})


@router.post("/{job_id}/retry", dependencies=[allow("job.submit")], status_code=202, response_model=JobAccepted,
             responses={**problems(400, 404, 409, 413, 422, 429), **repeated(JobAccepted)}, openapi_extra=IDEMPOTENT)
def retry_job(job_id: UUID, request: Request, ctx: CommandContextDep, body: RetryIn | None = None) -> JSONResponse:
    """Retry a failed or cancelled job (any other state: 409): a new job with its spec, `params` merged over its
    params and checked as a submit's, submitted like one (202; 200 when the Idempotency-Key was seen before). The
    new job's `retry_of` names this one; this one's `retried_by` names its latest retry."""
    s, body = services(request), body or RetryIn()
    key = idempotency_key(request)
    cmd = s.app.retry_submission(RetryJob(job_id, project=access_of(request).project, params=body.params,
                                          priority=body.priority, from_checkpoint=body.from_checkpoint))
    code = cmd.code is not None
    if code:  # a code job's retry runs code again
        authorize(access_of(request).principal, cmd.project, "code.run")
    check_params_shape(body.params, code)  # the overrides first: their own paths name the field at fault
    check_params_shape(cmd.params, code)  # then the merged params, bounded as a submit's
    if cmd.dataset:
        check_job_dataset(cmd.framework, cmd.task, cmd.dataset["uri"], cmd.dataset.get("target"), cmd.params, s,
                          project=cmd.project)
    return accept_job(s, cmd, key, ctx)


@router.get("", dependencies=[allow("job.read")], response_model=JobList, responses=problems(422))
def list_jobs(request: Request, s: ServicesDep,
              status: Annotated[list[JobStatus] | None, Query(max_length=5, description=ANY_OF)] = None,
              framework: Annotated[list[Framework] | None, Query(max_length=5, description=ANY_OF)] = None,
              tag: Annotated[list[Tag] | None, Query(max_length=20, description=ALL_OF)] = None,
              limit: Annotated[int, Query(ge=1, le=500, description="1 to 500")] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000, description="0 to 1,000,000")] = 0,
              study_id: Annotated[UUID | None, Query(description="only this study's trials")] = None,
              id_prefix: IdPrefix = None) -> JobList:
    """The project's jobs, newest first. `status` and `framework` match any of their values, `tag` needs all of
    them."""
    rows, total = s.jobs.list(project=access_of(request).project, status=status, framework=framework, tag=tag,
                              limit=limit, offset=offset, study_id=study_id, id_prefix=id_prefix)
    return JobList(items=[JobPublic.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


def visible_job(s: Services, job_id: UUID, request: Request) -> dict:
    """The job in the request's project; JobNotFoundError (404) for a missing one and another project's alike."""
    row = s.jobs.get(job_id, project=access_of(request).project)
    if row is None:
        raise JobNotFoundError(str(job_id))
    return row


@router.get("/{job_id}", dependencies=[allow("job.read")], response_model=JobPublic, responses=problems(404, 422))
def get_job(job_id: UUID, request: Request, s: ServicesDep) -> JobPublic:
    return JobPublic.model_validate(visible_job(s, job_id, request))


@router.get("/{job_id}/artifacts/{name:path}", dependencies=[allow("job.read")], response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "the artifact's bytes (its sha256 is listed on the job)"},
                       **problems(404, 422)})
def download_artifact(job_id: UUID, request: Request, s: ServicesDep,
                      name: Annotated[str, Path(min_length=1, max_length=200)]) -> FileResponse:
    """Download a file the job kept with `run.log_artifact` (listed in its `artifacts`), streamed."""
    job = visible_job(s, job_id, request)
    path, found = _stored_artifact(s, job, name)
    filename = PurePosixPath(name).name.replace('"', "_").replace("\\", "_") or "artifact"
    return FileResponse(path, media_type="application/octet-stream", filename=filename,
                        headers={"X-Content-Sha256": found["sha256"]})


def _stored_artifact(s: Services, job: dict, name: str) -> tuple[FilePath, dict]:
    """(path, listing) of the artifact `name` the job kept; Problem(404) if it kept none or it is gone."""
    found = next((a for a in job.get("artifacts") or () if a.get("name") == name), None)
    if found is None:
        raise Problem(404, "Not found", f"name: job {job['job_id']} kept no artifact named {name[:200]!r}", "name")
    from runners.artifacts import LocalArtifactStore

    try:
        path = LocalArtifactStore(s.settings.artifacts).path_of(found["uri"])
    except ValueError:
        path = None
    if path is None or not path.is_file():
        raise Problem(404, "Not found", f"name: artifact {name[:200]!r} of job {job['job_id']} is no longer stored",
                      "name")
    return path, found


def stored_evaluation(s: Services, job: dict) -> dict | None:
    """The evaluation report `job` (a read-model row) kept; None if it kept none (Problem(404) if it is gone)."""
    if not any(a.get("name") == EVALUATION_ARTIFACT for a in job.get("artifacts") or ()):
        return None
    path, _ = _stored_artifact(s, job, EVALUATION_ARTIFACT)
    return json.loads(path.read_bytes())


@router.get("/{job_id}/evaluation", dependencies=[allow("job.read")], response_model=Evaluation,
            responses=problems(404, 422))
def get_evaluation(job_id: UUID, request: Request, s: ServicesDep) -> Evaluation:
    """The completed job's evaluation report (the `evaluation.json` it kept): per split the task's figures,
    confusion matrix, per-class figures, ROC/PR/calibration curves or residuals, the worst rows; k-fold's folds;
    feature importance. 404 while it has none (not completed, or a code job)."""
    job = visible_job(s, job_id, request)
    report = stored_evaluation(s, job)
    if report is None:
        raise Problem(404, "Not found", f"job {job_id} has no evaluation report ({job['status']}; only a completed "
                                        "job of a built-in framework has one)", "job_id")
    return Evaluation.model_validate({**report, "job_id": job_id, "name": job["name"], "status": job["status"],
                                      "validation": job.get("validation"), "final_metrics": job["final_metrics"]})


@router.delete("/{job_id}", dependencies=[allow("job.cancel")], status_code=202, response_model=JobPublic, responses=problems(404, 409, 422))
def cancel_job(job_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep) -> JobPublic:
    """Cancel: a queued job ends at once; a running one is stopped by its runner within seconds."""
    job, position = s.app.request_cancel(job_id, project=access_of(request).project, ctx=ctx)
    if job.status == "running":
        s.leases.flag_cancel(job_id)  # the runner's next heartbeat hears it (the reconciler repairs a lost flag)
    _catch_up(s, position)
    return JobPublic.model_validate(visible_job(s, job_id, request))


_NAME = r"[^\x00-\x1f\x7f-\x9f,]{1,200}"
MetricNamesQuery = Annotated[str | None, Query(
    pattern=f"^{_NAME}(?:,{_NAME}){{0,{MAX_SERIES_NAMES - 1}}}$",
    description=f"comma-separated, 1 to {MAX_SERIES_NAMES} metric names of 1 to 200 characters ({NO_CONTROL}): "
                "their series too (a name with a comma: GET …/metrics/{name})")]


@router.get("/{job_id}/metrics", dependencies=[allow("job.read")], response_model=MetricNames,
            response_model_exclude_none=True, responses=problems(404, 422))
def metric_names(job_id: UUID, request: Request, s: ServicesDep, names: MetricNamesQuery = None,
                 max_points: Annotated[int, Query(ge=4, le=100_000, description="per series")] = 1000,
                 attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None) -> MetricNames:
    """The job's metric names and latest values; with `names`, those metrics' series as well (one ClickHouse query
    plans them all)."""
    asked = list(dict.fromkeys(names.split(","))) if names is not None else None  # in order, without repeats
    visible_job(s, job_id, request)  # visible first: another project's metrics are as missing as its job
    latest = {n: {"step": st, "value": v} for n, (st, v) in s.metrics.last_values(str(job_id)).items()}
    out = MetricNames(job_id=job_id, names=s.metrics.names(str(job_id)), latest=latest)
    if asked is not None:
        found = s.metrics.series_of(str(job_id), asked, max_points=max_points, attempt=attempt)
        out.series = [MetricSeries(name=n, attempt=a, points=[{"step": st, "value": v, "ts": ts}
                                                               for st, v, ts in points])
                      for n, (a, points) in found.items()]
        out.missing = [n for n in asked if n not in found]
    return out


@router.get("/{job_id}/metrics/{name}", dependencies=[allow("job.read")], response_model=MetricSeries, responses=problems(404, 422))
def metric_series(job_id: UUID, name: Annotated[SafeText, Path(min_length=1, max_length=256)], request: Request,
                  s: ServicesDep,
                  max_points: Annotated[int, Query(ge=4, le=100_000)] = 1000,
                  attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None) -> MetricSeries:
    """One metric's series: without `attempt`, the job's merged series (each step from the latest run that logged
    it after resuming: a run resumed from step k continues its predecessor's series at k + 1, no step twice), and
    `attempt` the latest run in it; with `attempt`, that run's own series."""
    visible_job(s, job_id, request)
    found = s.metrics.series_of(str(job_id), [name], max_points=max_points, attempt=attempt)
    if name not in found and attempt is None:
        raise Problem(404, "Not found", f"job {job_id} has no metric {name!r} (yet)", "name")
    at, points = found.get(name, (attempt, []))  # an asked run without points: an empty series
    return MetricSeries(name=name, attempt=at, points=[{"step": st, "value": v, "ts": ts} for st, v, ts in points])
