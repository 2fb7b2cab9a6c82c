"""/api/v1/schedules: create, list, read, change, pause, resume, trigger, delete; the times each handled (runs).

A template is checked exactly as its submit is (api/jobs.py `check_job`, api/studies.py `check_study_in`) when it is
set, and stored as what that submit would pass on; the scheduler (commands/scheduler.py) submits it at each time.
"""
from __future__ import annotations

from dataclasses import fields as dataclass_fields
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from api.auth import Access, access_of, allow
from api.context import IDEMPOTENT, CommandContextDep, idempotency_key, repeated
from api.deps import READ_YOUR_WRITES_TIMEOUT_S, Services, ServicesDep
from api.jobs import check_job
from api.retrains import check_retrain
from api.problems import Problem
from api.schemas.common import IdPrefix, problems
from api.schemas.schedules import (ScheduleIn, ScheduleList, SchedulePatch, SchedulePublic, ScheduleRunList,
                                   ScheduleRunPublic, Triggered)
from api.schemas.jobs import JobIn
from api.schemas.retrains import ScheduledRetrainIn
from api.schemas.studies import StudyIn
from api.studies import check_study_in
from commands.deployments import DeploymentNotFoundError
from commands.schedules import CreateSchedule, ScheduleNotFoundError
from commands.studies import CreateStudy
from commands.training import SubmitJob
from domain.access import authorize
from domain.schedule import RunKind, ScheduleStatus

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])


def _catch_up(s: Services, position: int | None) -> None:
    if position is not None:
        s.applied.wait_for("schedules", s.app.name, position, READ_YOUR_WRITES_TIMEOUT_S)


def _schedule(s: Services, schedule_id: UUID, request: Request) -> SchedulePublic:
    """404 for a missing, deleted or another project's schedule alike."""
    row = s.schedules.get(schedule_id, project=access_of(request).project)
    if row is None:
        raise ScheduleNotFoundError(str(schedule_id))
    return SchedulePublic.model_validate(row)


def _template(job: JobIn | None, study: StudyIn | None, s: Services, access: Access,
              retrain: ScheduledRetrainIn | None = None) -> tuple[str, dict[str, Any]]:
    """(kind, template): the body checked as its submit, kept as the fields that submit passes on. A problem found in
    the template names its field within the schedule's body (`job.code`, not `code`)."""
    kind = "retrain" if retrain is not None else "job" if job is not None else "study"
    try:
        return _checked_template(job, study, s, access, retrain)
    except Problem as e:
        if e.field and not e.field.startswith(f"{kind}."):
            e.field = f"{kind}.{e.field}"
            e.detail = f"{kind}.{e.detail}"
        raise


def _checked_template(job: JobIn | None, study: StudyIn | None, s: Services, access: Access,
                      retrain: ScheduledRetrainIn | None) -> tuple[str, dict[str, Any]]:
    if retrain is not None:
        try:
            plan = check_retrain(retrain.deployment, retrain, s, access)
        except DeploymentNotFoundError:
            raise Problem(422, "Invalid request", f"retrain.deployment: no deployment {retrain.deployment!r}",
                          "retrain.deployment") from None
        template = retrain.model_dump(mode="json", exclude_none=True)
        if plan.job.validation is not None and retrain.validation is not None:
            template["validation"] = plan.job.validation
        return RunKind.RETRAIN, template
    if job is not None:
        authorize(access.principal, access.project, "job.submit")
        code, resources = check_job(job, s, access)
        body = job.model_dump(mode="json")
        template = {f.name: body[f.name] for f in dataclass_fields(SubmitJob) if f.name in body}
        template.update(dataset=job.dataset.model_dump(exclude_none=True) if job.dataset else {}, code=code,
                        resources=resources)
        return RunKind.JOB, template
    assert study is not None
    authorize(access.principal, access.project, "study.create")
    objective, code, resources = check_study_in(study, s, access)
    body = study.model_dump(mode="json")
    template = {f.name: body[f.name] for f in dataclass_fields(CreateStudy) if f.name in body}
    template.update(dataset=study.dataset.model_dump(exclude_none=True), objective=objective, code=code,
                    resources=resources)
    return RunKind.STUDY, template


@router.post("", dependencies=[allow("schedule.write")], status_code=201, response_model=SchedulePublic,
             responses={**problems(400, 403, 409, 413, 422), **repeated(SchedulePublic)}, openapi_extra=IDEMPOTENT)
def create_schedule(body: ScheduleIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> JSONResponse:
    """Create a schedule (201; 200 when the Idempotency-Key was seen before). Its template is checked as its
    submit would be, with its submit's permission (`job.submit` or `study.create`)."""
    access = access_of(request)
    kind, template = _template(body.job, body.study, s, access, body.retrain)
    cmd = CreateSchedule(project=access.project, name=body.name, cron=body.cron, timezone=body.timezone, kind=kind,
                         template=template, overlap=body.overlap, catch_up=body.catch_up, enabled=body.enabled)
    saved = s.schedule_commands.create(cmd, idempotency_key(request), ctx)
    _catch_up(s, saved.position)
    out = _schedule(s, saved.aggregate.id, request)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if saved.position is not None else 200,
                        headers={"Location": f"{router.prefix}/{out.id}"})


@router.get("", dependencies=[allow("schedule.read")], response_model=ScheduleList, responses=problems(422))
def list_schedules(request: Request, s: ServicesDep,
                   status: Annotated[list[ScheduleStatus] | None, Query(max_length=2, description="any of")] = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                   id_prefix: IdPrefix = None) -> ScheduleList:
    """The project's schedules, newest first (deleted ones are gone)."""
    rows, total = s.schedules.list(project=access_of(request).project, status=status, limit=limit, offset=offset,
                                   id_prefix=id_prefix)
    return ScheduleList(items=[SchedulePublic.model_validate(r) for r in rows], total=total, limit=limit,
                        offset=offset)


@router.get("/{schedule_id}", dependencies=[allow("schedule.read")], response_model=SchedulePublic,
            responses=problems(404, 422))
def get_schedule(schedule_id: UUID, request: Request, s: ServicesDep) -> SchedulePublic:
    return _schedule(s, schedule_id, request)


@router.patch("/{schedule_id}", dependencies=[allow("schedule.write")], response_model=SchedulePublic,
              responses=problems(400, 403, 404, 409, 413, 422))
def change_schedule(schedule_id: UUID, body: SchedulePatch, request: Request, s: ServicesDep,
                    ctx: CommandContextDep) -> SchedulePublic:
    """Change the fields given. A new cron or timezone counts from now; the template keeps its kind."""
    access = access_of(request)
    current = _schedule(s, schedule_id, request)
    template = None
    if body.job is not None or body.study is not None or body.retrain is not None:
        if sum(t is not None for t in (body.job, body.study, body.retrain)) > 1:
            raise Problem(422, "Invalid request", "at most one of `job`, `study` and `retrain`", "job")
        kind, template = _template(body.job, body.study, s, access, body.retrain)
        if kind != current.kind:
            raise Problem(422, "Invalid request", f"this schedule runs a {current.kind}, not a {kind}", kind)
    saved = s.schedule_commands.change(schedule_id, project=access.project, ctx=ctx, name=body.name, cron=body.cron,
                                       timezone=body.timezone, template=template, overlap=body.overlap,
                                       catch_up=body.catch_up)
    _catch_up(s, saved.position)
    return _schedule(s, schedule_id, request)


@router.post("/{schedule_id}/pause", dependencies=[allow("schedule.write")], response_model=SchedulePublic,
             responses=problems(404, 409, 422))
def pause_schedule(schedule_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep) -> SchedulePublic:
    """No time fires while paused (a repeat is a no-op)."""
    saved = s.schedule_commands.pause(schedule_id, project=access_of(request).project, ctx=ctx)
    _catch_up(s, saved.position)
    return _schedule(s, schedule_id, request)


@router.post("/{schedule_id}/resume", dependencies=[allow("schedule.write")], response_model=SchedulePublic,
             responses=problems(404, 409, 422))
def resume_schedule(schedule_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep) -> SchedulePublic:
    """Active again from now: the times the pause passed are not caught up."""
    saved = s.schedule_commands.resume(schedule_id, project=access_of(request).project, ctx=ctx)
    _catch_up(s, saved.position)
    return _schedule(s, schedule_id, request)


@router.post("/{schedule_id}/trigger", dependencies=[allow("schedule.write")], status_code=202,
             response_model=Triggered, responses=problems(404, 409, 422), openapi_extra=IDEMPOTENT)
def trigger_schedule(schedule_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep) -> Triggered:
    """Run the template now, under the schedule's overlap policy (a skip says why); its times stay as they were.
    The same Idempotency-Key again: the same run."""
    access = access_of(request)
    _schedule(s, schedule_id, request)
    handled = s.schedule_commands.trigger(schedule_id, project=access.project, idempotency_key=idempotency_key(request),
                                          ctx=ctx)
    _catch_up(s, handled.position)
    return Triggered(outcome=handled.outcome, run_id=handled.run_id, scheduled_for=handled.scheduled_for,
                     reason=handled.reason)


@router.delete("/{schedule_id}", dependencies=[allow("schedule.write")], status_code=204,
               responses=problems(404, 422))
def delete_schedule(schedule_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep) -> Response:
    """No more runs; runs already submitted go on. The schedule is gone from the API (its events stay)."""
    _schedule(s, schedule_id, request)
    saved = s.schedule_commands.delete(schedule_id, project=access_of(request).project, ctx=ctx)
    _catch_up(s, saved.position)
    return Response(status_code=204)


@router.get("/{schedule_id}/runs", dependencies=[allow("schedule.read")], response_model=ScheduleRunList,
            responses=problems(404, 422))
def list_runs(schedule_id: UUID, request: Request, s: ServicesDep,
              outcome: Annotated[list[Literal["fired", "skipped", "missed"]] | None,
                                 Query(max_length=3, description="any of fired, skipped, missed")] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> ScheduleRunList:
    """Every time the schedule handled, newest first: fired (with its run), skipped or missed, each with why."""
    _schedule(s, schedule_id, request)
    rows, total = s.schedules.runs(schedule_id, outcome=outcome, limit=limit, offset=offset)
    return ScheduleRunList(items=[ScheduleRunPublic.model_validate(r) for r in rows], total=total, limit=limit,
                           offset=offset)
