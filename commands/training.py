"""Training commands: one method per command, each load → decide (aggregate) → save.

Runner reports arrive at least once and possibly concurrently; `_change` retries on an optimistic
concurrency conflict, and the aggregate makes repeats harmless.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import RecordConflictError

from domain.training_job import TrainingJob

_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/idempotency/training-job")


class JobNotFoundError(LookupError):
    """No job has this id; maps to HTTP 404."""


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used before for a different request; maps to HTTP 409."""


@dataclass(frozen=True)
class SubmitJob:
    name: str
    framework: str
    task: str
    dataset: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    priority: str = "medium"
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Submitted:
    job_id: UUID
    status: str
    created_at: datetime
    created: bool  # False when an Idempotency-Key replay returned the existing job
    position: int | None = None  # notification id of the Submitted event, for read-your-writes


def job_id_for(idempotency_key: str | None) -> UUID:
    return uuid5(_IDEMPOTENCY_NAMESPACE, idempotency_key) if idempotency_key else uuid4()


class TrainingApplication(Application[UUID]):
    name = "trainyard"

    def submit_job(self, cmd: SubmitJob, idempotency_key: str | None = None) -> Submitted:
        job_id = job_id_for(idempotency_key)
        if idempotency_key:
            existing = self._existing(job_id)
            if existing is not None:
                return self._replayed(existing, cmd)
        job = TrainingJob(id=job_id, **asdict(cmd))
        try:
            recordings = self.save(job)
        except RecordConflictError:  # the same key submitted concurrently: theirs won
            return self._replayed(self.repository.get(job_id), cmd)
        return Submitted(job.id, job.status, job.created_on, created=True, position=_last_position(recordings))

    def _existing(self, job_id: UUID) -> TrainingJob | None:
        try:
            return self.repository.get(job_id)
        except AggregateNotFoundError:
            return None

    @staticmethod
    def _replayed(job: TrainingJob, cmd: SubmitJob) -> Submitted:
        if (job.name, job.framework, job.task, job.dataset, job.params, job.priority, job.tags) != (
            cmd.name, cmd.framework, cmd.task, cmd.dataset, cmd.params, cmd.priority, cmd.tags
        ):
            raise IdempotencyConflictError("this Idempotency-Key was used for a different job")
        return Submitted(job.id, job.status, job.created_on, created=False)

    def get_job(self, job_id: UUID) -> TrainingJob:
        """For command paths and audit only: queries read the projections."""
        job = self._existing(job_id)
        if job is None:
            raise JobNotFoundError(str(job_id))
        return job

    def request_cancel(self, job_id: UUID) -> tuple[TrainingJob, int | None]:
        """Returns the job and the notification id of what was recorded (None if nothing was)."""
        return self._change_at(job_id, lambda job: job.request_cancel())

    # ---- runner reports -----------------------------------------------------------------------
    def start_attempt(self, job_id: UUID, attempt: int, runner_id: str) -> TrainingJob:
        return self._change(job_id, lambda job: job.start(attempt, runner_id))

    def report_progress(self, job_id: UUID, attempt: int, current_step: int, total_steps: int) -> TrainingJob:
        return self._change(job_id, lambda job: job.report_progress(attempt, current_step, total_steps))

    def complete(self, job_id: UUID, attempt: int, final_metrics: dict[str, float], artifact: dict[str, Any]) -> TrainingJob:
        return self._change(job_id, lambda job: job.complete(attempt, final_metrics, artifact))

    def fail(self, job_id: UUID, attempt: int, error: str) -> TrainingJob:
        return self._change(job_id, lambda job: job.fail(attempt, error))

    def give_up(self, job_id: UUID, reason: str) -> TrainingJob:
        return self._change(job_id, lambda job: job.give_up(reason))

    def confirm_cancelled(self, job_id: UUID, attempt: int) -> TrainingJob:
        return self._change(job_id, lambda job: job.confirm_cancelled(attempt))

    def _change(self, job_id: UUID, decide: Callable[[TrainingJob], None]) -> TrainingJob:
        return self._change_at(job_id, decide)[0]

    def _change_at(self, job_id: UUID, decide: Callable[[TrainingJob], None], tries: int = 5) -> tuple[TrainingJob, int | None]:
        for n in range(tries):
            job = self.get_job(job_id)
            decide(job)
            try:
                return job, _last_position(self.save(job))
            except RecordConflictError:
                if n == tries - 1:
                    raise
        raise AssertionError("unreachable")


def _last_position(recordings: list[Any]) -> int | None:
    return recordings[-1].notification.id if recordings else None
