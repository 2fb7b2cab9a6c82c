"""The `schedules` and `schedule_runs` read models: one row per schedule, one per time it handled (fired, skipped or
missed, with the reason), written with their tracking position; and the queries the API and the scheduler read.

Updates are guarded by the schedule's version and a run row is keyed by (schedule, version), so processing an event
twice is a no-op and a replay from zero rebuilds the same tables. The next fire time is computed when read, from
the row's cron, timezone and cursor (the cron library's answer, never stored stale).
"""
from __future__ import annotations

from datetime import datetime
from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from domain.schedule import Schedule, ScheduleStatus
from domain.schedule_times import next_time
from projections.id_prefix import filtered_page
from projections.tracking import TrackedProjection, TrackedView, topics_of

SCHEDULES_DDL = """
CREATE TABLE IF NOT EXISTS schedules (
    id uuid PRIMARY KEY, project text NOT NULL, name text NOT NULL,
    cron text NOT NULL, timezone text NOT NULL, kind text NOT NULL, template jsonb NOT NULL,
    overlap text NOT NULL, catch_up text NOT NULL,
    status text NOT NULL,  -- active | paused | deleted
    cursor_at timestamptz NOT NULL,  -- the latest scheduled time handled (or when it was created, resumed, changed)
    last_run_id uuid, last_scheduled_for timestamptz,
    fired int NOT NULL DEFAULT 0, skipped int NOT NULL DEFAULT 0, missed int NOT NULL DEFAULT 0,
    created_by text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, version int NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_project_created ON schedules (project, created_at DESC);
CREATE INDEX IF NOT EXISTS schedules_active ON schedules (status) WHERE status = 'active';
CREATE TABLE IF NOT EXISTS schedule_runs (
    schedule_id uuid NOT NULL, version int NOT NULL, PRIMARY KEY (schedule_id, version),
    outcome text NOT NULL,  -- fired | skipped | missed
    trigger text NOT NULL,  -- cron | catch_up | manual
    scheduled_for timestamptz NOT NULL,  -- a missed range: its first time (`last_scheduled_for` its last)
    last_scheduled_for timestamptz NOT NULL, count int NOT NULL,
    run_id uuid, run_kind text, cancelled uuid, reason text NOT NULL, recorded_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS schedule_runs_run ON schedule_runs (run_id) WHERE run_id IS NOT NULL;
"""
# A run event moves its schedule's row too (the tail of a data-modifying WITH).
_TOUCH = ("UPDATE schedules SET updated_at = %(recorded_at)s, version = %(version)s, {sets} "
          "WHERE id = %(schedule_id)s AND version < %(version)s")


class SchedulesView(TrackedView):
    DDL = SCHEDULES_DDL

    def insert_schedule(self, row: dict[str, Any], tracking: Tracking) -> None:
        self.insert_row("schedules", row, tracking)

    def update_schedule(self, schedule_id: UUID, version: int, changes: dict[str, Any], tracking: Tracking) -> None:
        self.update_row("schedules", schedule_id, version, changes, tracking)

    def insert_run(self, row: dict[str, Any], sets: str, tracking: Tracking) -> None:
        """`row`: a schedule_runs row; `sets`: what it changes on its schedule (SQL over the row's parameters)."""
        cols = list(row)
        sql = (f"WITH r AS (INSERT INTO schedule_runs ({', '.join(cols)}) "
               f"VALUES ({', '.join('%(' + c + ')s' for c in cols)}) ON CONFLICT DO NOTHING) "
               + _TOUCH.format(sets=sets))
        self.write(sql, row, tracking)


class SchedulesProjection(TrackedProjection[SchedulesView]):
    name = "schedules"
    topics = topics_of(Schedule.Created, Schedule.Fired, Schedule.Skipped, Schedule.Missed, Schedule.Changed,
                       Schedule.Paused, Schedule.Resumed, Schedule.Deleted)

    @singledispatchmethod
    def apply(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @apply.register
    def _(self, e: Schedule.Created, tracking: Tracking) -> None:
        meta = getattr(e, "metadata", None) or {}
        self.view.insert_schedule({
            "id": e.originator_id, "project": e.project, "name": e.name, "cron": e.cron, "timezone": e.timezone,
            "kind": e.kind, "template": e.template, "overlap": e.overlap, "catch_up": e.catch_up,
            "status": ScheduleStatus.ACTIVE if e.enabled else ScheduleStatus.PAUSED, "cursor_at": e.cursor,
            "created_by": meta.get("actor") or "anonymous", "created_at": e.timestamp, "updated_at": e.timestamp,
            "version": e.originator_version}, tracking)

    def _run(self, e: Any, tracking: Tracking, sets: str, **row: Any) -> None:
        base = {"schedule_id": e.originator_id, "version": e.originator_version, "recorded_at": e.timestamp,
                "run_id": None, "run_kind": None, "cancelled": None, "count": 1}
        self.view.insert_run({**base, **row}, sets, tracking)

    @apply.register
    def _(self, e: Schedule.Fired, tracking: Tracking) -> None:
        sets = "fired = fired + 1, last_run_id = %(run_id)s, last_scheduled_for = %(scheduled_for)s"
        if e.trigger != "manual":
            sets += ", cursor_at = %(scheduled_for)s"
        self._run(e, tracking, sets, outcome="fired", trigger=e.trigger, scheduled_for=e.scheduled_for,
                  last_scheduled_for=e.scheduled_for, run_id=e.run_id, run_kind=e.run_kind, cancelled=e.cancelled,
                  reason=e.reason)

    @apply.register
    def _(self, e: Schedule.Skipped, tracking: Tracking) -> None:
        sets = "skipped = skipped + 1" + (", cursor_at = %(scheduled_for)s" if e.trigger != "manual" else "")
        self._run(e, tracking, sets, outcome="skipped", trigger=e.trigger, scheduled_for=e.scheduled_for,
                  last_scheduled_for=e.scheduled_for, reason=e.reason)

    @apply.register
    def _(self, e: Schedule.Missed, tracking: Tracking) -> None:
        self._run(e, tracking, "missed = missed + %(count)s, cursor_at = %(last_scheduled_for)s", outcome="missed",
                  trigger="catch_up", scheduled_for=e.first, last_scheduled_for=e.last, count=e.count,
                  reason=e.reason)

    @apply.register
    def _(self, e: Schedule.Changed, tracking: Tracking) -> None:
        changes = {("cursor_at" if k == "cursor" else k): v for k, v in e.changes.items()}
        self.view.update_schedule(e.originator_id, e.originator_version, {**changes, "updated_at": e.timestamp},
                                  tracking)

    @apply.register
    def _(self, e: Schedule.Paused, tracking: Tracking) -> None:
        self._status(e, tracking, ScheduleStatus.PAUSED)

    @apply.register
    def _(self, e: Schedule.Resumed, tracking: Tracking) -> None:
        self._status(e, tracking, ScheduleStatus.ACTIVE, cursor_at=e.cursor)

    @apply.register
    def _(self, e: Schedule.Deleted, tracking: Tracking) -> None:
        self._status(e, tracking, ScheduleStatus.DELETED)

    def _status(self, e: Any, tracking: Tracking, status: str, **more: Any) -> None:
        self.view.update_schedule(e.originator_id, e.originator_version,
                                  {"status": status, "updated_at": e.timestamp, **more}, tracking)


_COLUMNS = ("id, project, name, cron, timezone, kind, template, overlap, catch_up, status, cursor_at, last_run_id, "
            "last_scheduled_for, fired, skipped, missed, created_by, created_at, updated_at, version")


class ScheduleQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def get(self, schedule_id: UUID, *, project: str) -> dict[str, Any] | None:
        """The schedule in `project` (None for another project's, a missing or a deleted one)."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM schedules WHERE id = %s AND project = %s AND status <> 'deleted'",
                        (schedule_id, project))
            row = cur.fetchone()
        return _public(row) if row else None

    def list(self, *, project: str, status: list[str] | None = None, limit: int = 50, offset: int = 0,
             id_prefix: str | None = None) -> tuple[list[dict[str, Any]], int]:
        rows, total = filtered_page(self.pool, "schedules", _COLUMNS,
                                    ["project = %(project)s", "status <> 'deleted'"], {"project": project},
                                    status=status, id_prefix=id_prefix, limit=limit, offset=offset)
        return [_public(r) for r in rows], total

    def runs(self, schedule_id: UUID, *, outcome: list[str] | None = None, limit: int = 100,
             offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The times the schedule handled, newest first, and how many match."""
        where, params = ["schedule_id = %(id)s"], {"id": schedule_id, "limit": limit, "offset": offset}
        if outcome:
            where.append("outcome = ANY(%(outcome)s)")
            params["outcome"] = list(outcome)
        cond = " AND ".join(where)
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT count(*) AS n FROM schedule_runs WHERE {cond}", params)
            total = cur.fetchone()["n"]  # type: ignore[index]
            cur.execute("SELECT outcome, trigger, scheduled_for, last_scheduled_for, count, run_id, run_kind, cancelled, "
                        f"reason, recorded_at FROM schedule_runs WHERE {cond} ORDER BY version DESC "
                        "LIMIT %(limit)s OFFSET %(offset)s", params)
            return cur.fetchall(), total

    def active(self) -> list[tuple[UUID, str, str, datetime, int]]:
        """(id, cron, timezone, cursor, version) of every active schedule, every project: the scheduler's
        candidates (it decides on the aggregate)."""
        with self.pool.connection() as conn:
            return [tuple(r) for r in conn.execute(  # type: ignore[misc]
                "SELECT id, cron, timezone, cursor_at, version FROM schedules WHERE status = 'active'").fetchall()]


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["enabled"] = out["status"] == ScheduleStatus.ACTIVE
    out["next_fire_at"] = (next_time(out["cron"], out["timezone"], out["cursor_at"])
                           if out["status"] == ScheduleStatus.ACTIVE else None)
    return out
