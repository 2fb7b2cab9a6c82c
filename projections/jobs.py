"""The `jobs` read model: one row per training job, written with its tracking position.

`JobsProjection` turns TrainingJob events into row changes on `JobsView`; every change and the
notification id it came from commit in one transaction, so a crash never half-applies an event and
a replay from zero rebuilds the same table. Processing an event a second time is a no-op: the
tracking insert refuses a position that is not newer, and every update is guarded by the
aggregate version.
"""
from __future__ import annotations

from datetime import datetime
from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection
from psycopg.sql import SQL
from psycopg.types.json import Jsonb

from domain.training_job import TrainingJob

JOBS_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    framework text NOT NULL,
    task text NOT NULL,
    dataset jsonb NOT NULL,
    params jsonb NOT NULL,
    priority text NOT NULL,
    tags text[] NOT NULL,
    status text NOT NULL,
    attempt int NOT NULL DEFAULT 0,
    runner_id text,
    current_step int NOT NULL DEFAULT 0,
    total_steps int,
    cancel_requested boolean NOT NULL DEFAULT false,
    final_metrics jsonb NOT NULL DEFAULT '{}',
    artifact jsonb,
    error text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    started_at timestamptz,
    progress_at timestamptz,
    finished_at timestamptz,
    version int NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_tags ON jobs USING gin (tags);
"""


class JobsView(PostgresTrackingRecorder):
    """The jobs table. Every mutating method takes the tracking record of the event it applies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(SQL(JOBS_DDL))  # type: ignore[arg-type]

    def insert_job(self, row: dict[str, Any], tracking: Tracking) -> None:
        cols = list(row)
        sql = (
            f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('%(' + c + ')s' for c in cols)}) "
            "ON CONFLICT (id) DO NOTHING"
        )
        self._write(sql, row, tracking)

    def update_job(self, job_id: UUID, version: int, changes: dict[str, Any], tracking: Tracking) -> None:
        sets = ", ".join(f"{c} = %({c})s" for c in changes)
        sql = f"UPDATE jobs SET {sets}, version = %(_version)s WHERE id = %(_id)s AND version < %(_version)s"
        self._write(sql, {**changes, "_id": job_id, "_version": version}, tracking)

    def _write(self, sql: str, params: dict[str, Any], tracking: Tracking) -> None:
        params = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in params.items()}
        try:
            with self.datastore.transaction(commit=True) as curs:
                self._insert_tracking(curs, tracking)  # refuses a position already applied
                curs.execute(sql, params)  # type: ignore[arg-type]
        except IntegrityError:
            if not self.has_tracking_id(tracking.application_name, tracking.notification_id):
                raise


def _finished(status: str, at: datetime) -> dict[str, Any]:
    return {"status": status, "updated_at": at, "finished_at": at}


class JobsProjection(Projection[JobsView]):
    name = "jobs"
    topics = tuple(
        f"domain.training_job:TrainingJob.{n}"
        for n in ("Submitted", "Started", "ProgressReported", "Completed", "Failed", "CancelRequested", "Cancelled")
    )

    @singledispatchmethod
    def process_event(self, domain_event: DomainEventProtocol[Any], tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)  # an event this read model does not show

    @process_event.register
    def _(self, e: TrainingJob.Submitted, tracking: Tracking) -> None:
        row = {
            "id": e.originator_id, "name": e.name, "framework": e.framework, "task": e.task,
            "dataset": e.dataset, "params": e.params, "priority": e.priority, "tags": list(e.tags),
            "status": "queued", "created_at": e.timestamp, "updated_at": e.timestamp,
            "version": e.originator_version,
        }
        self.view.insert_job(row, tracking)

    @process_event.register
    def _(self, e: TrainingJob.Started, tracking: Tracking) -> None:
        self._update(e, tracking, status="running", attempt=e.attempt, runner_id=e.runner_id,
                     current_step=0, started_at=e.timestamp, progress_at=e.timestamp)

    @process_event.register
    def _(self, e: TrainingJob.ProgressReported, tracking: Tracking) -> None:
        self._update(e, tracking, current_step=e.current_step, total_steps=e.total_steps, progress_at=e.timestamp)

    @process_event.register
    def _(self, e: TrainingJob.Completed, tracking: Tracking) -> None:
        self._update(e, tracking, final_metrics=e.final_metrics, artifact=e.artifact, **_finished("completed", e.timestamp))

    @process_event.register
    def _(self, e: TrainingJob.Failed, tracking: Tracking) -> None:
        self._update(e, tracking, error=e.error, **_finished("failed", e.timestamp))

    @process_event.register
    def _(self, e: TrainingJob.CancelRequested, tracking: Tracking) -> None:
        self._update(e, tracking, cancel_requested=True)

    @process_event.register
    def _(self, e: TrainingJob.Cancelled, tracking: Tracking) -> None:
        self._update(e, tracking, cancel_requested=True, **_finished("cancelled", e.timestamp))

    def _update(self, e: Any, tracking: Tracking, **changes: Any) -> None:
        changes.setdefault("updated_at", e.timestamp)
        self.view.update_job(e.originator_id, e.originator_version, changes, tracking)
