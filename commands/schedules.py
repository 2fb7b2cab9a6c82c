"""Schedule commands: create, change, pause, resume, delete, trigger, and `run_due`, what the scheduler calls.

A scheduled run is an ordinary training job or study whose id derives from the key `schedule:<id>:<time>`
(`job_id_for`, `study_id_for`), saved in one transaction with the schedule's `Fired` (and the previous run's cancel
request, under `cancel_previous`). Two schedulers deciding the same time save the same new ids on the same
schedule version: the store refuses the second, which reloads and finds the time handled. So a time fires once by
construction, across restarts and concurrent serve processes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import RecordConflictError

from commands.application import ANONYMOUS, Saved, last_position
from commands.context import CommandContext
from commands.studies import CreateStudy, new_study, study_id_for
from commands.training import SubmitJob, TrainingApplication, job_id_for
from domain.contract import scoped
from domain.schedule import CatchUp, Overlap, RunKind, Schedule, Trigger
from domain.training_job import TrainingJob

_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/idempotency/schedule")
DEFAULT_GRACE_S = 60.0


class ScheduleNotFoundError(LookupError):
    """No schedule has this id in the caller's project (another project's is just as missing); HTTP 404."""


class Clock(Protocol):
    """The scheduler's time (infra/clock.py): the system's, or a faster one for tests."""

    def now(self) -> datetime: ...


@dataclass(frozen=True)
class CreateSchedule:
    project: str = field(kw_only=True)
    name: str
    cron: str
    timezone: str
    kind: str  # "job" | "study"
    template: dict[str, Any]  # a SubmitJob's or a CreateStudy's fields, checked as a submit's (api/schedules.py)
    overlap: str = Overlap.SKIP
    catch_up: str = CatchUp.LATEST
    enabled: bool = True


@dataclass(frozen=True)
class Handled:
    """What happened to one scheduled time."""
    scheduled_for: datetime
    trigger: str
    outcome: str  # "fired" | "skipped" | "missed"
    run_id: UUID | None
    reason: str
    position: int | None = None


def run_key(schedule_id: UUID, scheduled_for: datetime) -> str:
    return f"schedule:{schedule_id}:{scheduled_for.isoformat()}"


class ScheduleCommands:
    def __init__(self, app: TrainingApplication, clock: Clock, grace_s: float = DEFAULT_GRACE_S,
                 retrains: Any = None) -> None:
        self.app, self.clock, self.grace_s = app, clock, grace_s
        self.retrains = retrains  # commands.retrains.RetrainCommands: a retrain schedule's runs

    def create(self, cmd: CreateSchedule, idempotency_key: str | None = None,
               ctx: CommandContext = ANONYMOUS) -> Saved:
        """The new schedule (a replayed key: the existing one, position None)."""
        schedule_id = uuid5(_IDEMPOTENCY_NAMESPACE, scoped(cmd.project, idempotency_key)) if idempotency_key else uuid4()
        if idempotency_key:
            try:
                return Saved(self.get(schedule_id, cmd.project), None)
            except ScheduleNotFoundError:
                pass
        schedule = Schedule.create(schedule_id, project=cmd.project, name=cmd.name, cron=cmd.cron,
                                   timezone=cmd.timezone, kind=cmd.kind, template=cmd.template, overlap=cmd.overlap,
                                   catch_up=cmd.catch_up, enabled=cmd.enabled, now=self.clock.now())
        try:
            return Saved(schedule, last_position(self.app.save_with(ctx, schedule)))
        except RecordConflictError:
            return Saved(self.get(schedule_id, cmd.project), None)

    def get(self, schedule_id: UUID, project: str) -> Schedule:
        """For command paths only: queries read the projection."""
        schedule = self.app.load(schedule_id, ScheduleNotFoundError)
        if not isinstance(schedule, Schedule) or schedule.project != project:
            raise ScheduleNotFoundError(str(schedule_id))
        return schedule

    def _change(self, schedule_id: UUID, project: str, decide: Any, ctx: CommandContext) -> Saved:
        def checked(schedule: Any) -> None:
            if not isinstance(schedule, Schedule) or schedule.project != project:
                raise ScheduleNotFoundError(str(schedule_id))
            decide(schedule)
        return self.app.change(schedule_id, checked, ctx, ScheduleNotFoundError)

    def change(self, schedule_id: UUID, *, project: str, ctx: CommandContext = ANONYMOUS, **changes: Any) -> Saved:
        return self._change(schedule_id, project, lambda s: s.change(self.clock.now(), **changes), ctx)

    def pause(self, schedule_id: UUID, *, project: str, ctx: CommandContext = ANONYMOUS) -> Saved:
        return self._change(schedule_id, project, lambda s: s.pause(), ctx)

    def resume(self, schedule_id: UUID, *, project: str, ctx: CommandContext = ANONYMOUS) -> Saved:
        return self._change(schedule_id, project, lambda s: s.resume(self.clock.now()), ctx)

    def delete(self, schedule_id: UUID, *, project: str, ctx: CommandContext = ANONYMOUS) -> Saved:
        return self._change(schedule_id, project, lambda s: s.delete(), ctx)

    def trigger(self, schedule_id: UUID, *, project: str, idempotency_key: str | None = None,
                ctx: CommandContext = ANONYMOUS) -> Handled:
        """Run the template now, under the overlap policy; the cursor stays. A replayed key: the same run."""
        key = f"schedule:{schedule_id}:manual:{idempotency_key or uuid4()}"
        for n in range(5):
            schedule = self.get(schedule_id, project)
            run_id = self._run_id(schedule, key)
            if idempotency_key and self._load(run_id) is not None:
                return Handled(self.clock.now(), Trigger.MANUAL, "fired", run_id, "triggered by request (replayed)")
            try:
                return self._handle(schedule, self.clock.now(), Trigger.MANUAL, key, ctx)
            except RecordConflictError:
                if n == 4:
                    raise
        raise AssertionError("unreachable")

    # ---- the scheduler's command ----------------------------------------------------------------------
    def run_due(self, schedule_id: UUID, now: datetime | None = None, ctx: CommandContext | None = None) -> list[Handled]:
        """Handle every time of the schedule due at `now` (the clock's by default), one transaction per time;
        a time another scheduler handled first is left to it."""
        now = now or self.clock.now()
        ctx = ctx or CommandContext(actor="scheduler", causation_id=f"schedule:{schedule_id}")
        out: list[Handled] = []
        conflicts = 0
        while True:
            schedule = self.app.load(schedule_id, ScheduleNotFoundError)
            plan = schedule.plan(now, self.grace_s)
            if not plan.missed and not plan.fire:
                return out
            try:
                if plan.missed:
                    reason = (f"missed while no scheduler ran (catch_up {schedule.catch_up}: "
                              f"{'only the latest runs' if schedule.catch_up == CatchUp.LATEST else 'not run'})")
                    schedule.miss(plan.missed, reason)
                    recorded = self.app.save_with(ctx, schedule)
                    out.append(Handled(plan.missed[-1], Trigger.CATCH_UP, "missed", None,
                                       f"{len(plan.missed)} times: {reason}", last_position(recorded)))
                    continue
                t, trigger = plan.fire[0]
                out.append(self._handle(schedule, t, trigger, run_key(schedule.id, t), ctx))
            except RecordConflictError:  # another scheduler handled it: reload and look again
                conflicts += 1
                if conflicts > 20:
                    raise

    def _handle(self, schedule: Schedule, t: datetime, trigger: str, key: str, ctx: CommandContext) -> Handled:
        previous = self._load(schedule.last_run["run_id"]) if schedule.last_run else None
        busy = previous is not None and not previous.is_finished
        if busy and schedule.overlap == Overlap.SKIP:
            reason = f"the previous run {previous.id} is still {previous.status} (overlap skip)"
            schedule.skip(t, trigger, reason)
            return Handled(t, trigger, "skipped", None, reason, last_position(self.app.save_with(ctx, schedule)))
        companions: list[Any] = []
        cancelled = None
        if busy and schedule.overlap == Overlap.CANCEL_PREVIOUS:
            previous.request_cancel()
            companions, cancelled = [previous], previous.id
        try:
            run, *with_run = self._new_run(schedule, key)
        except (ValueError, TypeError, LookupError) as e:  # a template a later rule refuses (or a deployment gone)
            reason = f"the template makes no valid {schedule.kind}: {type(e).__name__}: {e}"[:500]
            schedule.skip(t, trigger, reason)
            return Handled(t, trigger, "skipped", None, reason, last_position(self.app.save_with(ctx, schedule)))
        reason = {Trigger.CRON: "due", Trigger.MANUAL: "triggered by request",
                  Trigger.CATCH_UP: f"missed while no scheduler ran; caught up (catch_up {schedule.catch_up})"}[trigger]
        if busy:
            reason += f"; the previous run {previous.id} " + ("was cancelled" if cancelled else "is still "
                                                              f"{previous.status} (overlap queue)")
        schedule.fire(t, trigger, run.id, reason, cancelled)
        recorded = self.app.save_with(ctx, schedule, run, *with_run, *companions)
        return Handled(t, trigger, "fired", run.id, reason, last_position(recorded))

    def _run_id(self, schedule: Schedule, key: str) -> UUID:
        if schedule.kind == RunKind.STUDY:
            return study_id_for(key, schedule.project)
        return job_id_for(key, schedule.project)

    def _new_run(self, schedule: Schedule, key: str) -> list[Any]:
        """The run, then what is saved with it (a retrain's job, then the retrain)."""
        if schedule.kind == RunKind.STUDY:
            return [new_study(CreateStudy(project=schedule.project, **schedule.template),
                              study_id_for(key, schedule.project))]
        if schedule.kind == RunKind.RETRAIN:
            return list(self.retrains.scheduled(schedule.project, schedule.template, job_id_for(key, schedule.project)))
        return [TrainingJob.create(id=job_id_for(key, schedule.project),
                                   **SubmitJob(project=schedule.project, **schedule.template).fields())]

    def _load(self, run_id: UUID) -> Any:
        try:
            return self.app.repository.get(run_id)
        except AggregateNotFoundError:
            return None
