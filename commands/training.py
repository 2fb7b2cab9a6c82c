"""Training commands: one method per command, each load → decide (aggregate) → save with who and why.

Runner reports arrive at least once and possibly concurrently; `_change` retries on an optimistic
concurrency conflict, and the aggregate makes repeats harmless. Every saved event carries the command's
`CommandContext` as `metadata` (commands/context.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError, Application, LRUCache
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import RecordConflictError

from commands.context import CommandContext
from domain.training_job import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, TrainingJob

log = logging.getLogger("trainyard.commands")
_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/idempotency/training-job")
ANONYMOUS = CommandContext()


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
    timeout_s: int = DEFAULT_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    study_id: UUID | None = None  # set for a study's trials (commands/studies.py)
    trial_number: int | None = None
    report_metric: str | None = None

    def fields(self) -> dict[str, Any]:
        """The fields, with their own copies of the containers (dataclasses.asdict deep-copies everything, which
        cost a tenth of a submit's CPU)."""
        out = dict(vars(self))
        out.update(dataset=dict(self.dataset), params=dict(self.params), tags=list(self.tags))
        return out


@dataclass(frozen=True)
class Submitted:
    job_id: UUID
    status: str
    created_at: datetime
    created: bool  # False when an Idempotency-Key replay returned the existing job
    position: int | None = None  # notification id of the Submitted event, for read-your-writes


def job_id_for(idempotency_key: str | None) -> UUID:
    return uuid5(_IDEMPOTENCY_NAMESPACE, idempotency_key) if idempotency_key else uuid4()


ORIGINS_KEPT = 10_000  # first-event metadata remembered per process (`TrainyardApplication.origin`)


class TrainyardApplication(Application[UUID]):
    """Saves with metadata; the base of every Trainyard application (one event store, one notification log)."""

    name = "trainyard"
    on_saved: Callable[[list[Any]], None] | None = None  # told each committed save's recordings (serve: EagerWork)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._origins: LRUCache[UUID, dict[str, Any]] = LRUCache(maxsize=ORIGINS_KEPT)

    def load(self, aggregate_id: UUID, not_found: type[LookupError], copy: bool = True) -> Any:
        """The aggregate, from the cache (fast-forwarded) or the store. `copy=False` skips the cache's deep copy
        (a study's with its trials was a quarter of serve's CPU in a study): only for readers that never change
        the object they get."""
        try:
            return self.repository.get(aggregate_id, deepcopy_from_cache=copy)
        except AggregateNotFoundError:
            raise not_found(str(aggregate_id)) from None

    def change(self, aggregate_id: UUID, decide: Callable[[Any], None], ctx: CommandContext,
               not_found: type[LookupError], tries: int = 5,
               also: Callable[[Any], list[Aggregate]] | None = None) -> tuple[Any, int | None]:
        """Load → decide → save, retried on an optimistic-concurrency conflict. Returns the aggregate and the
        notification id of the last event recorded (None if the decision recorded nothing). `also(aggregate)`
        (after the decision) returns other aggregates it changed in consequence: all are saved in one transaction."""
        for n in range(tries):
            aggregate = self.load(aggregate_id, not_found)
            decide(aggregate)
            companions = also(aggregate) if also else []
            try:
                return aggregate, _last_position(self.save_with(ctx, aggregate, *companions))
            except RecordConflictError:
                if n == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def save_with(self, ctx: CommandContext, *aggregates: Aggregate) -> list[Any]:
        meta = ctx.as_metadata()
        created = []
        for aggregate in aggregates:
            for e in aggregate.pending_events:
                object.__setattr__(e, "metadata", meta)
                if e.originator_version == 1:
                    created.append(aggregate.id)
        recordings = self.save(*aggregates)
        for aggregate_id in created:
            self._origins.put(aggregate_id, meta)
        if self.on_saved is not None:
            try:
                self.on_saved(recordings)
            except Exception:  # a shortcut only (projections/relay.EagerWork): never fails a command that committed
                log.exception("on_saved hook failed")
        return recordings

    def origin(self, aggregate_id: UUID) -> dict[str, Any]:
        """The metadata of the aggregate's first event (the creating command's actor, correlation and trace ids).
        It never changes: remembered for the aggregates this process created or looked up (a claim's answer carries
        it; reading the first event was a query on every claim)."""
        try:
            return self._origins.get(aggregate_id)
        except KeyError:
            first = next(iter(self.events.get(aggregate_id, lte=1)), None)
        meta = dict(getattr(first, "metadata", None) or {})
        if first is not None:
            self._origins.put(aggregate_id, meta)
        return meta

    def head(self) -> int:
        """The notification id of the newest event (0 for an empty store)."""
        return self.recorder.max_notification_id() or 0


class TrainingApplication(TrainyardApplication):
    def submit_job(self, cmd: SubmitJob, idempotency_key: str | None = None, ctx: CommandContext = ANONYMOUS) -> Submitted:
        job_id = job_id_for(idempotency_key)
        if idempotency_key:
            existing = self._existing(job_id)
            if existing is not None:
                return self._replayed(existing, cmd)
        job = TrainingJob(id=job_id, **cmd.fields())
        try:
            recordings = self.save_with(ctx, job)
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
        if (job.name, job.framework, job.task, job.dataset, job.params, job.priority, job.tags, job.timeout_s,
                job.study_id, job.trial_number) != (
            cmd.name, cmd.framework, cmd.task, cmd.dataset, cmd.params, cmd.priority, cmd.tags, cmd.timeout_s,
            cmd.study_id, cmd.trial_number
        ):
            raise IdempotencyConflictError("this Idempotency-Key was used for a different job")
        return Submitted(job.id, job.status, job.created_on, created=False)

    def get_job(self, job_id: UUID, copy: bool = True) -> TrainingJob:
        """For command paths and audit only: queries read the projections. `copy=False`: see `load`."""
        return self.load(job_id, JobNotFoundError, copy)

    def request_cancel(self, job_id: UUID, ctx: CommandContext = ANONYMOUS) -> tuple[TrainingJob, int | None]:
        """Returns the job and the notification id of what was recorded (None if nothing was)."""
        return self._change_at(job_id, lambda job: job.request_cancel(), ctx)

    # ---- leases and runner reports ---------------------------------------------------------------
    def claim(self, job_id: UUID, lease_id: str, runner_id: str, ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.claim(lease_id, runner_id), ctx)

    def record_progress(self, job_id: UUID, lease_id: str, current_step: int, total_steps: int,
                        ctx: CommandContext) -> TrainingJob:
        return self._change(job_id, lambda job: job.record_progress(lease_id, current_step, total_steps), ctx)

    def complete(self, job_id: UUID, lease_id: str, final_metrics: dict[str, float], artifact: dict[str, Any],
                 ctx: CommandContext, total_steps: int | None = None) -> TrainingJob:
        """Ends the attempt; a model export's completion also attaches its ONNX artifact to the model version, in
        the same transaction (commands/models.py)."""
        from commands.models import completion_effects

        return self.change(job_id, lambda job: job.complete(lease_id, final_metrics, artifact, total_steps), ctx,
                           JobNotFoundError, also=lambda work: completion_effects(self, work))[0]

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
                   ctx: CommandContext) -> tuple[TrainingJob, int | None]:
        return self.change(job_id, decide, ctx, JobNotFoundError)


def _last_position(recordings: list[Any]) -> int | None:
    return recordings[-1].notification.id if recordings else None
