"""Training commands: one method per command, each load → decide (aggregate) → save with who and why.

Runner reports arrive at least once and possibly concurrently; `_change` retries on an optimistic
concurrency conflict, and the aggregate makes repeats harmless. Every saved event carries the command's
`CommandContext` as `metadata` (commands/context.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import RecordConflictError

from commands.application import ANONYMOUS, Saved, TrainyardApplication, last_position
from commands.context import CommandContext
from domain.contract import scoped
from domain.training_job import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, TrainingJob
from domain.validation import stored

_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/idempotency/training-job")


class JobNotFoundError(LookupError):
    """No job has this id (in the caller's project: another project's job is just as missing); maps to HTTP 404."""


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used before for a different request; maps to HTTP 409."""


@dataclass(frozen=True)
class SubmitJob:
    project: str = field(kw_only=True)  # the project the job belongs to (the request's, or its study's)
    name: str
    framework: str
    task: str
    dataset: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    priority: str = "medium"
    tags: list[str] = field(default_factory=list)
    timeout_s: int = DEFAULT_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    study_id: UUID | None = None  # set for a study's trials (commands/studies.py)
    trial_number: int | None = None
    report_metric: str | None = None
    retry_of: UUID | None = None  # set for a retry (`RetryJob`): the failed or cancelled job it retries
    from_checkpoint: bool = False
    code: dict[str, Any] | None = None  # a code job's bundle (code_id, sha256), entrypoint, args
    resources: dict[str, Any] | None = None  # a code job's cpus, memory_mb, gpus
    validation: dict[str, Any] | None = None  # how its rows are split (domain/validation.py); None: holdout
    champion: dict[str, Any] | None = None  # a retrain's deployed model to score on the same test split

    def fields(self) -> dict[str, Any]:
        """The fields, with their own copies of the containers (dataclasses.asdict would deep-copy everything, on
        the submit path)."""
        out = dict(vars(self))
        out.update(dataset=dict(self.dataset), params=dict(self.params), tags=list(self.tags))
        return out


@dataclass(frozen=True)
class RetryJob:
    """Retry a failed or cancelled job: a new job with its spec, `params` merged over its params, and `priority`
    (None: the original's) in place of its own. It is submitted like any job (`SubmitJob`)."""
    job_id: UUID
    project: str = field(kw_only=True)  # the request's: another project's job is not found
    params: dict[str, Any] = field(default_factory=dict)
    priority: str | None = None
    from_checkpoint: bool = True


@dataclass(frozen=True)
class Submitted:
    job_id: UUID
    status: str
    created_at: datetime
    created: bool  # False when an Idempotency-Key replay returned the existing job
    position: int | None = None  # notification id of the Submitted event, for read-your-writes


def job_id_for(idempotency_key: str | None, project: str) -> UUID:
    """The id of the job submitted with `idempotency_key` in `project`: each project has its own keys (the same
    key in two projects names two jobs; in the default project, the id it had before projects)."""
    return uuid5(_IDEMPOTENCY_NAMESPACE, scoped(project, idempotency_key)) if idempotency_key else uuid4()


def check_project(job: TrainingJob, project: str) -> None:
    """JobNotFoundError, exactly as for a missing id, for a job of another project (no existence leak)."""
    if job.project != project:
        raise JobNotFoundError(str(job.id))


class TrainingApplication(TrainyardApplication):
    """The concrete application every process runs. Its class name names the event store's tables
    (`trainingapplication_events`) and the read models' tracking rows: keep it."""

    def submit_job(self, cmd: SubmitJob, idempotency_key: str | None = None, ctx: CommandContext = ANONYMOUS) -> Submitted:
        job_id = job_id_for(idempotency_key, cmd.project)
        if idempotency_key:
            existing = self._existing(job_id)
            if existing is not None:
                return self._replayed(existing, cmd)
        job = TrainingJob.create(id=job_id, **cmd.fields())
        try:
            recordings = self.save_with(ctx, job)
        except RecordConflictError:  # the same key submitted concurrently: theirs won
            return self._replayed(self.repository.get(job_id), cmd)
        return Submitted(job.id, job.status, job.created_on, created=True, position=last_position(recordings))

    def _existing(self, job_id: UUID) -> TrainingJob | None:
        try:
            return self.repository.get(job_id)
        except AggregateNotFoundError:
            return None

    @staticmethod
    def _replayed(job: TrainingJob, cmd: SubmitJob) -> Submitted:
        # The project too: a default-project key "alpha/k" is alpha's key "k" (`scoped`); a conflict, never a leak.
        if (job.project, job.name, job.framework, job.task, job.dataset, job.params, job.priority, job.tags,
                job.timeout_s, job.study_id, job.trial_number, job.retry_of, job.from_checkpoint, job.code,
                job.resources, job.validation) != (
            cmd.project, cmd.name, cmd.framework, cmd.task, cmd.dataset, cmd.params, cmd.priority, cmd.tags,
            cmd.timeout_s, cmd.study_id, cmd.trial_number, cmd.retry_of, cmd.from_checkpoint, cmd.code,
            cmd.resources, stored(cmd.validation)
        ):
            raise IdempotencyConflictError("this Idempotency-Key was used for a different job")
        return Submitted(job.id, job.status, job.created_on, created=False)

    def retry_submission(self, cmd: RetryJob) -> SubmitJob:
        """What retrying `cmd.job_id` submits: the caller checks it as any submit and passes it to `submit_job`.
        Nothing is saved here, and nothing can change in between: a failed or cancelled job stays so.
        JobNotFoundError for another project's job; NotRetryableError (409) for one that is not retryable."""
        job = self.get_job(cmd.job_id, copy=False)
        if not isinstance(job, TrainingJob):  # the id of another aggregate (a model export is leased work too)
            raise JobNotFoundError(str(cmd.job_id))
        check_project(job, cmd.project)
        return SubmitJob(project=job.project, **job.retry_fields(cmd.params, cmd.priority, cmd.from_checkpoint))

    def get_job(self, job_id: UUID, copy: bool = True) -> TrainingJob:
        """For command paths and audit only: queries read the projections. `copy=False`: see `load`."""
        return self.load(job_id, JobNotFoundError, copy)

    def request_cancel(self, job_id: UUID, *, project: str, ctx: CommandContext = ANONYMOUS) -> Saved:
        """Returns the job and the notification id of what was recorded (None if nothing was). A job of another
        project is not found."""
        def decide(job: TrainingJob) -> None:
            check_project(job, project)
            job.request_cancel()
        return self._change_at(job_id, decide, ctx)

    # ---- leases and runner reports ---------------------------------------------------------------
    def claim(self, job_id: UUID, lease_id: str, runner_id: str, ctx: CommandContext,
              resumed_from_step: int | None = None) -> TrainingJob:
        return self._change(job_id, lambda job: job.claim(lease_id, runner_id, resumed_from_step), ctx)

    def record_progress(self, job_id: UUID, lease_id: str, current_step: int, total_steps: int,
                        ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.record_progress(lease_id, current_step, total_steps), ctx)

    def complete(self, job_id: UUID, lease_id: str, final_metrics: dict[str, float], artifact: dict[str, Any],
                 ctx: CommandContext, total_steps: int | None = None,
                 artifacts: list[dict[str, Any]] | None = None) -> TrainingJob:
        """Ends the attempt, with the completion effects registered for its work kind saved in the same transaction
        (a model export's attaches its ONNX artifact to the model version: commands/models.py)."""
        return self.change(job_id, lambda job: job.complete(lease_id, final_metrics, artifact, total_steps, artifacts),
                           ctx, JobNotFoundError, also=self.completion_effects)[0]

    def fail(self, job_id: UUID, lease_id: str, error: str, ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.fail(lease_id, error), ctx)

    def confirm_cancelled(self, job_id: UUID, lease_id: str, ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.confirm_cancelled(lease_id), ctx)

    def hand_back(self, job_id: UUID, lease_id: str, reason: str, ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.hand_back(lease_id, reason), ctx)

    def expire_lease(self, job_id: UUID, lease_id: str, reason: str, ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.expire_lease(lease_id, reason), ctx)

    def requeue(self, job_id: UUID, reason: str, ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.requeue(reason), ctx)

    def _change(self, job_id: UUID, decide: Callable[[TrainingJob], None], ctx: CommandContext) -> TrainingJob:
        return self._change_at(job_id, decide, ctx)[0]

    def _change_at(self, job_id: UUID, decide: Callable[[TrainingJob], None],
                   ctx: CommandContext) -> Saved:
        return self.change(job_id, decide, ctx, JobNotFoundError)
