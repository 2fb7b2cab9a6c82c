"""The Schedule aggregate: a job or study template run at the times of a cron expression in a timezone.

    active ──pause──► paused ──resume──► active          (either) ──delete──► deleted (final)
    active: each scheduled time after `cursor` is handled once, in order: Fired (a run was submitted),
            Skipped (the overlap policy said no, with the reason) or Missed (downtime beyond the grace, by the
            catch-up policy, a range of times in one event). Handling a time moves `cursor` past it.

`cursor` is the one thing that makes a time fire once: a fire or a skip of a time at or before it is refused, and
the store's optimistic concurrency refuses the second of two schedulers that decided the same time at once (they
save the schedule and the run together). Resuming moves the cursor to the resume time: a pause is not downtime.
A manual trigger fires at once and leaves the cursor where it is. No I/O: the caller passes the clock's time.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.contract import FieldError
from domain.identity import check_name
from domain.schedule_times import CronSpecError, check_cron, check_timezone, times_between

MAX_DUE_PER_PLAN = 1000  # times one plan looks at; a longer backlog is handled over several plans


class RunKind(StrEnum):
    JOB = "job"
    STUDY = "study"
    RETRAIN = "retrain"  # a deployment's retrain (domain/retrain.py): its run id is the retrain's job's


class Overlap(StrEnum):
    """What a scheduled time does while the previous run is still queued or running."""
    SKIP = "skip"
    QUEUE = "queue"
    CANCEL_PREVIOUS = "cancel_previous"


class CatchUp(StrEnum):
    """What the times missed while no scheduler ran (older than the grace) do."""
    NONE = "none"
    LATEST = "latest"
    ALL = "all"


class ScheduleStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    DELETED = "deleted"


class Trigger(StrEnum):
    CRON = "cron"
    CATCH_UP = "catch_up"
    MANUAL = "manual"


class ScheduleError(Exception):
    """A command the schedule's state does not allow; maps to HTTP 409."""


class ScheduleSpecError(FieldError):
    """A schedule field that cannot be used; `field` names it (HTTP 422)."""


@dataclass(frozen=True)
class Plan:
    """What to do with the times due now: `missed` (dropped by the catch-up policy, oldest first) and `fire`
    (each with its trigger), both strictly after the cursor; `more`: the backlog goes on past what this plan saw."""
    missed: list[datetime]
    fire: list[tuple[datetime, Trigger]]
    more: bool = False


def utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("a schedule's times are timezone-aware")
    return t.astimezone(timezone.utc)


def check_spec(cron: str, tz: str, kind: str, overlap: str, catch_up: str) -> tuple[str, str]:
    """(cron, timezone) normalised; ScheduleSpecError naming the field otherwise."""
    for field, value, allowed in (("kind", kind, RunKind), ("overlap", overlap, Overlap),
                                  ("catch_up", catch_up, CatchUp)):
        if value not in tuple(allowed):
            raise ScheduleSpecError(field, f"one of {', '.join(allowed)}, not {value!r}")
    try:
        return check_cron(cron), check_timezone(tz)
    except CronSpecError as e:
        raise ScheduleSpecError(e.field, e.reason) from None


class Schedule(Aggregate):
    class Created(Aggregate.Created):
        name: str
        project: str
        cron: str
        timezone: str
        kind: str
        template: dict[str, Any]
        overlap: str
        catch_up: str
        enabled: bool
        cursor: datetime

    @classmethod
    def create(cls, id: UUID, *, project: str, name: str, cron: str, timezone: str, kind: str,
               template: dict[str, Any], overlap: str = Overlap.SKIP, catch_up: str = CatchUp.LATEST,
               enabled: bool = True, now: datetime) -> Schedule:
        """A new schedule whose first time is the first after `now`."""
        cron, timezone = check_spec(cron, timezone, kind, overlap, catch_up)
        if not template:
            raise ScheduleSpecError(kind, "a template is required")
        return cls(id=id, name=check_name(name), project=check_name(project, "project"), cron=cron, timezone=timezone,
                   kind=kind, template=template, overlap=overlap, catch_up=catch_up, enabled=enabled, cursor=utc(now))

    @event(Created)
    def __init__(self, id: UUID, name: str, project: str, cron: str, timezone: str, kind: str,
                 template: dict[str, Any], overlap: str, catch_up: str, enabled: bool, cursor: datetime) -> None:
        self.name, self.project, self.cron, self.timezone = name, project, cron, timezone
        self.kind, self.template, self.overlap, self.catch_up = kind, template, overlap, catch_up
        self.status = ScheduleStatus.ACTIVE if enabled else ScheduleStatus.PAUSED
        self.cursor = cursor
        self.last_run: dict[str, Any] | None = None  # run_id, kind, scheduled_for of the latest fire
        self.fired = self.skipped = self.missed = 0

    # ---- when ---------------------------------------------------------------------------------------
    def next_time(self) -> datetime | None:
        """The next time after the cursor (None unless active)."""
        if self.status != ScheduleStatus.ACTIVE:
            return None
        return times_between(self.cron, self.timezone, self.cursor, datetime.max.replace(tzinfo=timezone.utc), 1)[0]

    def plan(self, now: datetime, grace_s: float) -> Plan:
        """The times in (cursor, now], by the catch-up policy: a time within `grace_s` of `now` is on time and
        fires; older ones were missed while no scheduler ran: `none` drops them, `latest` fires the newest of
        them when nothing is on time, `all` fires each."""
        if self.status != ScheduleStatus.ACTIVE:
            return Plan([], [])
        now = utc(now)
        due = times_between(self.cron, self.timezone, self.cursor, now, MAX_DUE_PER_PLAN)
        more = len(due) == MAX_DUE_PER_PLAN and due[-1] < now
        late = [t for t in due if (now - t) > timedelta(seconds=grace_s) or more]
        on_time = [(t, Trigger.CRON) for t in due[len(late):]]
        if self.catch_up == CatchUp.ALL:
            return Plan([], [(t, Trigger.CATCH_UP) for t in late] + on_time, more)
        if self.catch_up == CatchUp.LATEST and late and not on_time and not more:
            return Plan(late[:-1], [(late[-1], Trigger.CATCH_UP)])
        return Plan(late, on_time, more)

    # ---- handling a time ------------------------------------------------------------------------------
    def _check_next(self, scheduled_for: datetime, trigger: str) -> None:
        if self.status == ScheduleStatus.DELETED:
            raise ScheduleError(f"schedule {self.id} is deleted")
        if trigger != Trigger.MANUAL:
            if self.status != ScheduleStatus.ACTIVE:
                raise ScheduleError(f"schedule {self.id} is {self.status}")
            if utc(scheduled_for) <= self.cursor:
                raise ScheduleError(f"schedule {self.id} already handled {scheduled_for.isoformat()}")

    def fire(self, scheduled_for: datetime, trigger: str, run_id: UUID, reason: str,
             cancelled: UUID | None = None) -> None:
        """A run was submitted for `scheduled_for` (`cancelled`: the previous run it stopped)."""
        self._check_next(scheduled_for, trigger)
        self._fired(scheduled_for=utc(scheduled_for), trigger=str(trigger), run_id=run_id, run_kind=self.kind,
                    reason=reason, cancelled=cancelled)

    @event("Fired")
    def _fired(self, scheduled_for: datetime, trigger: str, run_id: UUID, run_kind: str, reason: str,
               cancelled: UUID | None) -> None:
        if trigger != Trigger.MANUAL:
            self.cursor = scheduled_for
        self.last_run = {"run_id": run_id, "kind": run_kind, "scheduled_for": scheduled_for}
        self.fired += 1

    def skip(self, scheduled_for: datetime, trigger: str, reason: str) -> None:
        """No run for `scheduled_for`, for `reason` (the overlap policy)."""
        self._check_next(scheduled_for, trigger)
        self._skipped(scheduled_for=utc(scheduled_for), trigger=str(trigger), reason=reason)

    @event("Skipped")
    def _skipped(self, scheduled_for: datetime, trigger: str, reason: str) -> None:
        if trigger != Trigger.MANUAL:
            self.cursor = scheduled_for
        self.skipped += 1

    def miss(self, times: list[datetime], reason: str) -> None:
        """`times` (in order, after the cursor) passed with no scheduler running and the catch-up policy drops
        them: one event for the range."""
        if not times:
            return
        self._check_next(times[0], Trigger.CATCH_UP)
        self._missed(first=utc(times[0]), last=utc(times[-1]), count=len(times), reason=reason)

    @event("Missed")
    def _missed(self, first: datetime, last: datetime, count: int, reason: str) -> None:
        self.cursor = last
        self.missed += count

    # ---- the schedule itself --------------------------------------------------------------------------
    def change(self, now: datetime, **changes: Any) -> None:
        """New values for any of name, cron, timezone, template, overlap, catch_up (the kind stays). A new cron or
        timezone counts from `now`: times the old one would have had are not caught up."""
        self._check_alive()
        changes = {k: v for k, v in changes.items() if v is not None and getattr(self, k) != v}
        if not changes:
            return
        unknown = set(changes) - {"name", "cron", "timezone", "template", "overlap", "catch_up"}
        if unknown:
            raise ScheduleSpecError(sorted(unknown)[0], "cannot be changed")
        cron, tz = check_spec(changes.get("cron", self.cron), changes.get("timezone", self.timezone), self.kind,
                              changes.get("overlap", self.overlap), changes.get("catch_up", self.catch_up))
        if "name" in changes:
            check_name(changes["name"])
        if "cron" in changes or "timezone" in changes:
            changes.update(cron=cron, timezone=tz, cursor=max(self.cursor, utc(now)))
        self._changed(changes=changes)

    @event("Changed")
    def _changed(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            setattr(self, key, value)

    def pause(self, reason: str | None = None) -> None:
        self._check_alive()
        if self.status == ScheduleStatus.ACTIVE:
            self._paused(reason=reason or "paused by request")

    @event("Paused")
    def _paused(self, reason: str) -> None:
        self.status = ScheduleStatus.PAUSED

    def resume(self, now: datetime) -> None:
        """Active again; its next time is the first after `now` (what a pause skipped is not caught up)."""
        self._check_alive()
        if self.status == ScheduleStatus.PAUSED:
            self._resumed(cursor=max(self.cursor, utc(now)))

    @event("Resumed")
    def _resumed(self, cursor: datetime) -> None:
        self.status = ScheduleStatus.ACTIVE
        self.cursor = cursor

    def delete(self, reason: str | None = None) -> None:
        if self.status != ScheduleStatus.DELETED:
            self._deleted(reason=reason or "deleted by request")

    @event("Deleted")
    def _deleted(self, reason: str) -> None:
        self.status = ScheduleStatus.DELETED

    def _check_alive(self) -> None:
        if self.status == ScheduleStatus.DELETED:
            raise ScheduleError(f"schedule {self.id} is deleted")
