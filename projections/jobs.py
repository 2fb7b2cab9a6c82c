"""The `jobs` read model: one row per training job, written with its tracking position (projections/tracking.py).

Every update is guarded by the aggregate version, so processing an event twice is a no-op and a replay from zero
rebuilds the same table. Progress here is the aggregate's milestones; live step-level progress of a running job
comes from its lease (infra/leases.py), which the queries join. A retry's row names its original (`retry_of`, from
its Submitted event); the original's retries are read from those rows (projections/job_queries.py), so nothing
written to the original's row depends on the order two jobs' events arrive in.
"""
from __future__ import annotations

from datetime import datetime
from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from psycopg.types.json import Jsonb

from domain.training_job import TrainingJob
from projections.tracking import TrackedProjection, TrackedView, topics_of

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
    timeout_s int NOT NULL DEFAULT 3600,
    max_attempts int NOT NULL DEFAULT 3,
    status text NOT NULL,
    attempt int NOT NULL DEFAULT 0,
    lost_leases int NOT NULL DEFAULT 0,
    hand_backs int NOT NULL DEFAULT 0,
    requeue_reason text,
    lease_id text,
    runner_id text,
    current_step bigint NOT NULL DEFAULT 0,
    total_steps bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    final_metrics jsonb NOT NULL DEFAULT '{}',
    artifact jsonb,
    artifacts jsonb NOT NULL DEFAULT '[]',
    error text,
    created_by text,
    correlation_id text,
    study_id uuid,
    trial_number int,
    retry_of uuid,
    from_checkpoint boolean NOT NULL DEFAULT false,
    code jsonb,
    resources jsonb,
    resumed_from_step bigint,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    started_at timestamptz,
    progress_at timestamptz,
    finished_at timestamptz,
    version int NOT NULL
);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS timeout_s int NOT NULL DEFAULT 3600,
    ADD COLUMN IF NOT EXISTS max_attempts int NOT NULL DEFAULT 3, ADD COLUMN IF NOT EXISTS lost_leases int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS lease_id text, ADD COLUMN IF NOT EXISTS created_by text,
    ADD COLUMN IF NOT EXISTS correlation_id text, ALTER COLUMN current_step TYPE bigint, ALTER COLUMN total_steps TYPE bigint,
    ADD COLUMN IF NOT EXISTS study_id uuid, ADD COLUMN IF NOT EXISTS trial_number int,
    ADD COLUMN IF NOT EXISTS hand_backs int NOT NULL DEFAULT 0, ADD COLUMN IF NOT EXISTS requeue_reason text,
    ADD COLUMN IF NOT EXISTS project text NOT NULL DEFAULT 'default', ADD COLUMN IF NOT EXISTS retry_of uuid,
    ADD COLUMN IF NOT EXISTS from_checkpoint boolean NOT NULL DEFAULT false, ADD COLUMN IF NOT EXISTS code jsonb,
    ADD COLUMN IF NOT EXISTS resources jsonb, ADD COLUMN IF NOT EXISTS resumed_from_step bigint,
    ADD COLUMN IF NOT EXISTS artifacts jsonb NOT NULL DEFAULT '[]', ADD COLUMN IF NOT EXISTS validation jsonb,
    ADD COLUMN IF NOT EXISTS first_started_at timestamptz;
CREATE INDEX IF NOT EXISTS jobs_retry_of ON jobs (retry_of, created_at) WHERE retry_of IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_project_created ON jobs (project, created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_id, trial_number) WHERE study_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_tags ON jobs USING gin (tags);
"""


class JobsView(TrackedView):
    """The jobs table. Every mutating method takes the tracking record of the event it applies."""

    DDL = JOBS_DDL

    def insert_job(self, row: dict[str, Any], tracking: Tracking) -> None:
        self.insert_row("jobs", row, tracking)

    def update_job(self, job_id: UUID, version: int, changes: dict[str, Any], tracking: Tracking) -> None:
        self.update_row("jobs", job_id, version, changes, tracking)


def _finished(status: str, at: datetime) -> dict[str, Any]:
    return {"status": status, "updated_at": at, "finished_at": at, "lease_id": None}


class JobsProjection(TrackedProjection[JobsView]):
    name = "jobs"
    topics = topics_of(TrainingJob.Submitted, TrainingJob.Started, TrainingJob.ProgressReported,
                       TrainingJob.Completed, TrainingJob.Failed, TrainingJob.CancelRequested, TrainingJob.Cancelled,
                       TrainingJob.Requeued, TrainingJob.LeaseLost)

    @singledispatchmethod
    def apply(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)  # an event this read model does not show

    @apply.register
    def _(self, e: TrainingJob.Submitted, tracking: Tracking) -> None:
        meta = getattr(e, "metadata", None) or {}
        row = {
            "id": e.originator_id, "project": e.project, "name": e.name, "framework": e.framework, "task": e.task,
            "dataset": e.dataset, "params": e.params, "priority": e.priority, "tags": list(e.tags),
            "timeout_s": e.timeout_s, "max_attempts": e.max_attempts,
            "status": "queued", "created_by": meta.get("actor") or "anonymous",
            "correlation_id": meta.get("correlation_id"), "study_id": e.study_id,
            "trial_number": e.trial_number, "retry_of": e.retry_of, "from_checkpoint": e.from_checkpoint,
            "code": e.code, "resources": e.resources, "validation": e.validation,
            "created_at": e.timestamp, "updated_at": e.timestamp,
            "version": e.originator_version,
        }
        self.view.insert_job(row, tracking)

    @apply.register
    def _(self, e: TrainingJob.Started, tracking: Tracking) -> None:
        self._update(e, tracking, status="running", attempt=e.attempt, runner_id=e.runner_id,
                     lease_id=e.lease_id, current_step=e.resumed_from_step or 0, total_steps=None,
                     resumed_from_step=e.resumed_from_step,
                     started_at=e.timestamp, progress_at=e.timestamp,
                     # started_at is the latest attempt's; the queue wait (projections/stats.py) needs the first
                     **({"first_started_at": e.timestamp} if e.attempt == 1 else {}))

    @apply.register
    def _(self, e: TrainingJob.ProgressReported, tracking: Tracking) -> None:
        self._update(e, tracking, current_step=e.current_step, total_steps=e.total_steps, progress_at=e.timestamp)

    @apply.register
    def _(self, e: TrainingJob.Requeued, tracking: Tracking) -> None:
        self._update(e, tracking, status="queued", lease_id=None, lost_leases=e.lost_leases, current_step=0,
                     total_steps=None, hand_backs=e.hand_backs, requeue_reason=e.reason)

    @apply.register
    def _(self, e: TrainingJob.LeaseLost, tracking: Tracking) -> None:
        self._update(e, tracking, lease_id=None, lost_leases=e.lost_leases)

    @apply.register
    def _(self, e: TrainingJob.Completed, tracking: Tracking) -> None:
        steps = e.total_steps
        progress = {"current_step": steps, "total_steps": steps} if steps else {}
        self._update(e, tracking, final_metrics=e.final_metrics, artifact=e.artifact,
                     artifacts=Jsonb(list(e.artifacts or ())), **progress, **_finished("completed", e.timestamp))

    @apply.register
    def _(self, e: TrainingJob.Failed, tracking: Tracking) -> None:
        self._update(e, tracking, error=e.error, **_finished("failed", e.timestamp))

    @apply.register
    def _(self, e: TrainingJob.CancelRequested, tracking: Tracking) -> None:
        self._update(e, tracking, cancel_requested=True)

    @apply.register
    def _(self, e: TrainingJob.Cancelled, tracking: Tracking) -> None:
        self._update(e, tracking, cancel_requested=True, **_finished("cancelled", e.timestamp))

    def _update(self, e: Any, tracking: Tracking, **changes: Any) -> None:
        changes.setdefault("updated_at", e.timestamp)
        self.view.update_job(e.originator_id, e.originator_version, changes, tracking)
