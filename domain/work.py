"""Leased work: the lifecycle every aggregate a runner works on shares (training jobs, model exports).

    queued ──claim──► running ──complete──► completed
      ▲                 │  ├──fail──────► failed
      │                 │  └─request_cancel─► (cancel requested) ──confirm_cancelled──► cancelled
      └─ hand_back / ───┤
         expire_lease   └─ expire_lease with the budget spent ─► failed ("lost its runner N times")
    queued ──request_cancel──► cancelled

Work is leased by the domain: a runner claims the aggregate with a lease (the digest of a token only it knows);
every later report must name the current lease, and reports of any other lease are refused. Each claim starts
a new attempt (`attempt` counts runs: it keys a run's metric series and artifact). A graceful hand-back spends
nothing and is counted apart (`hand_backs`); only a lost lease (runner died, lease expired) spends one of
`max_attempts` (`lost_leases`), so `lost_leases + 1` is the attempt the budget means. Runner reports arrive at least once, so a repeat of what was already recorded is a no-op.
Progress is recorded as milestones only (decided by the caller), so the aggregate has a bounded number of events
however long it runs. No I/O here.

A subclass supplies its created event (which sets `priority`, `timeout_s`, `max_attempts` and calls
`_init_work()`), `work_kind` (the runner's dispatch key) and `spec()` (what the runner needs). The event classes
below are declared once here; eventsourcing gives each subclass its own copy (`TrainingJob.Started`,
`ModelExport.Started`), so their topics and public subjects name the subclass. Every event replaces the attributes it
sets (never changes a dict or list in place), and subclasses keep to that: so a copy of a piece of work (the
repository's cache copies it for every command) shares its attributes' values (`__deepcopy__`).
"""
from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate

from domain.copies import copy_sharing_values
from domain.vocabulary import FINISHED, JobStatus

__all__ = ["DEFAULT_MAX_ATTEMPTS", "DEFAULT_TIMEOUT_S", "FINISHED", "CancelNotRequestedError", "JobError",
           "JobFinishedError", "LeaseHeldError", "LeasedWork", "StaleLeaseError"]
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT_S = 3600


class JobError(Exception):
    """A command the work's state does not allow; maps to HTTP 409."""


class JobFinishedError(JobError):
    """The work already ended (completed, failed or cancelled)."""


class StaleLeaseError(JobError):
    """A report from a lease that is not the current one (or work nobody holds)."""


class LeaseHeldError(JobError):
    """A claim while another runner holds a live lease."""


class CancelNotRequestedError(JobError):
    """A runner confirmed a cancel nobody asked for."""


class LeasedWork(Aggregate):
    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy_sharing_values(self, memo)  # every event replaces what it sets

    work_kind = ""  # the runner's dispatch key and the completion effects' key
    noun = "work"  # how errors name it

    @property
    def queue_kind(self) -> str:
        """The work kind its items are queued under (domain/registry.py routes them by it): `work_kind`, unless a
        subclass routes some of its work apart (a code job goes to the runners that accept code)."""
        return self.work_kind

    @property
    def gpus_needed(self) -> int:
        """The GPUs this work needs: > 0 routes its items to GPU runners (domain/registry.py `needs_gpu`)."""
        return 0

    def _init_work(self) -> None:
        self.status = JobStatus.QUEUED
        self.attempt = 0
        self.lost_leases = 0
        self.hand_backs = 0
        self.lease_id: str | None = None
        self.runner_id: str | None = None
        self.resumed_from_step: int | None = None  # the current attempt's starting checkpoint (None: from scratch)
        self.current_step = 0
        self.total_steps: int | None = None
        self.cancel_requested = False
        self.final_metrics: dict[str, float] = {}
        self.artifact: dict[str, Any] | None = None
        self.artifacts: list[dict[str, Any]] = []  # a code job's kept files (run.log_artifact)
        self.error: str | None = None

    def spec(self) -> dict[str, Any]:
        """What a runner needs to do this work (the claim's answer)."""
        raise NotImplementedError

    # ---- events -------------------------------------------------------------------------------
    class Started(Aggregate.Event):
        """v2 added `lease_id` (leases owned by the domain); v3 `resumed_from_step`: the step of the checkpoint the
        attempt starts from (None: from the beginning, as every attempt before v3 did)."""

        class_version = 3
        attempt: int
        runner_id: str
        previous_runner_id: str | None
        lease_id: str | None = None
        resumed_from_step: int | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("lease_id", None)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state.setdefault("resumed_from_step", None)

        def apply(self, work: Any) -> None:
            work.status, work.attempt, work.runner_id = JobStatus.RUNNING, self.attempt, self.runner_id
            work.lease_id, work.resumed_from_step = self.lease_id, self.resumed_from_step
            work.current_step, work.total_steps = self.resumed_from_step or 0, None

    class LeaseLost(Aggregate.Event):
        attempt: int
        reason: str
        lost_leases: int

        def apply(self, work: Any) -> None:
            work.lost_leases, work.lease_id = self.lost_leases, None

    class Requeued(Aggregate.Event):
        """v2 added `hand_backs`: graceful hand-backs so far, this one included (v1 events did not count them: 0);
        v3 `work_kind`, the queue it goes back to (None, as before v3: its aggregate type's own work kind); v4
        `gpus`, the GPUs the work needs (a GPU runner's queue when > 0; 0 before v4, when nothing was routed by it)."""

        class_version = 4
        attempt: int
        reason: str
        lost: bool
        lost_leases: int
        priority: str
        hand_backs: int = 0
        work_kind: str | None = None
        gpus: int = 0

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("hand_backs", 0)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state.setdefault("work_kind", None)

        @staticmethod
        def upcast_v3_v4(state: dict[str, Any]) -> None:
            state.setdefault("gpus", 0)

        def apply(self, work: Any) -> None:
            work.status, work.lease_id, work.lost_leases = JobStatus.QUEUED, None, self.lost_leases
            work.hand_backs = self.hand_backs

    class ProgressReported(Aggregate.Event):
        attempt: int
        current_step: int
        total_steps: int

        def apply(self, work: Any) -> None:
            work.current_step, work.total_steps = self.current_step, self.total_steps

    class Completed(Aggregate.Event):
        """v2 added `total_steps` (the steps the runner counted); v3 `artifacts`, the files a code job kept
        (`run.log_artifact`: name, uri, sha256, size_bytes each; none before)."""

        class_version = 3
        attempt: int
        final_metrics: dict
        artifact: dict
        total_steps: int | None = None
        artifacts: list | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("total_steps", None)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state.setdefault("artifacts", None)

        def apply(self, work: Any) -> None:
            work.status, work.final_metrics, work.artifact = JobStatus.COMPLETED, self.final_metrics, self.artifact
            work.artifacts = list(self.artifacts or [])
            work.total_steps = self.total_steps or work.total_steps
            if work.total_steps is not None:
                work.current_step = work.total_steps

    class Failed(Aggregate.Event):
        attempt: int
        error: str

        def apply(self, work: Any) -> None:
            work.status, work.error = JobStatus.FAILED, self.error

    class CancelRequested(Aggregate.Event):
        attempt: int
        runner_id: str | None

        def apply(self, work: Any) -> None:
            work.cancel_requested = True

    class Cancelled(Aggregate.Event):
        attempt: int
        reason: str

        def apply(self, work: Any) -> None:
            work.status, work.cancel_requested = JobStatus.CANCELLED, True

    def _record(self, event_class: type, **fields: Any) -> None:
        self.trigger_event(getattr(type(self), event_class.__name__), **fields)

    # ---- guards -----------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def check_not_finished(self) -> None:
        if self.is_finished:
            raise JobFinishedError(f"{self.noun} {self.id} is already {self.status}")

    def check_lease(self, lease_id: str) -> None:
        """The report comes from the runner that holds the work now."""
        self.check_not_finished()
        if self.status != JobStatus.RUNNING or lease_id != self.lease_id:
            raise StaleLeaseError(f"lease {lease_id[:8]} does not hold {self.noun} {self.id} ({self.status})")

    # ---- leases -----------------------------------------------------------------------------
    def claim(self, lease_id: str, runner_id: str, resumed_from_step: int | None = None) -> None:
        """Start a new attempt under `lease_id`, from the checkpoint at `resumed_from_step` when the runner has one
        (None: from the beginning). Repeating the claim of the current lease is a no-op."""
        self.check_not_finished()
        if self.status == JobStatus.RUNNING:
            if lease_id == self.lease_id:
                return
            raise LeaseHeldError(f"{self.noun} {self.id} is held by runner {self.runner_id}")
        if resumed_from_step is not None and resumed_from_step < 0:
            raise ValueError(f"resumed_from_step must be 0 or more, got {resumed_from_step}")
        self._record(LeasedWork.Started, attempt=self.attempt + 1, runner_id=runner_id,
                     previous_runner_id=self.runner_id, lease_id=lease_id, resumed_from_step=resumed_from_step)

    def hand_back(self, lease_id: str, reason: str) -> None:
        """A runner stops gracefully: back to the queue, no attempt spent (or cancelled, if that was asked)."""
        if self.is_finished or (self.status == JobStatus.QUEUED and lease_id != self.lease_id):
            return  # already handed back or ended: a repeat
        self.check_lease(lease_id)
        if self.cancel_requested:
            self._record(LeasedWork.Cancelled, attempt=self.attempt, reason="its runner stopped after a cancel request")
        else:
            self._requeue(reason, lost=False, lost_leases=self.lost_leases, hand_backs=self.hand_backs + 1)

    def expire_lease(self, lease_id: str, reason: str) -> None:
        """The lease's runner is gone: spend an attempt; requeue, or fail once `max_attempts` are spent.
        A lease that is no longer current is a no-op (the reconciler may ask twice)."""
        if self.is_finished or self.status != JobStatus.RUNNING or lease_id != self.lease_id:
            return
        lost = self.lost_leases + 1
        if self.cancel_requested:
            self._record(LeasedWork.Cancelled, attempt=self.attempt, reason="its runner was lost after a cancel request")
        elif lost >= self.max_attempts:
            self._record(LeasedWork.LeaseLost, attempt=self.attempt, reason=reason, lost_leases=lost)
            self._record(LeasedWork.Failed, attempt=self.attempt, error=f"lost its runner {lost} times (last: {reason})")
        else:
            self._requeue(reason, lost=True, lost_leases=lost)

    def requeue(self, reason: str) -> None:
        """Put queued work on the queue again (the reconciler found no work item)."""
        self.check_not_finished()
        if self.status != JobStatus.QUEUED:
            raise JobError(f"{self.noun} {self.id} is {self.status}, not queued")
        self._requeue(reason, lost=False, lost_leases=self.lost_leases)

    def _requeue(self, reason: str, lost: bool, lost_leases: int, hand_backs: int | None = None) -> None:
        self._record(LeasedWork.Requeued, attempt=self.attempt, reason=reason, lost=lost, lost_leases=lost_leases,
                     priority=self.priority, hand_backs=self.hand_backs if hand_backs is None else hand_backs,
                     work_kind=self.queue_kind, gpus=self.gpus_needed)

    # ---- reports under the lease --------------------------------------------------------------
    def record_progress(self, lease_id: str, current_step: int, total_steps: int) -> None:
        """A progress milestone (the caller decides which steps are milestones)."""
        self.check_lease(lease_id)
        if current_step < 0 or total_steps < 1 or current_step > total_steps:
            raise ValueError(f"progress {current_step}/{total_steps} is out of range")
        if current_step <= self.current_step and total_steps == self.total_steps:
            return  # a repeated or reordered report adds nothing
        self._record(LeasedWork.ProgressReported, attempt=self.attempt, current_step=current_step,
                     total_steps=total_steps)

    def complete(self, lease_id: str, final_metrics: dict[str, float], artifact: dict[str, Any],
                 total_steps: int | None = None, artifacts: list[dict[str, Any]] | None = None) -> None:
        """The attempt finished; `total_steps` (what the runner counted) completes the progress; `artifacts`: the
        files it kept besides its model."""
        if self.status == JobStatus.COMPLETED and lease_id == self.lease_id:
            return
        self.check_lease(lease_id)
        self._record(LeasedWork.Completed, attempt=self.attempt, final_metrics=final_metrics, artifact=artifact,
                     total_steps=total_steps, artifacts=artifacts or None)

    def fail(self, lease_id: str, error: str) -> None:
        if self.status == JobStatus.FAILED and lease_id == self.lease_id:
            return
        self.check_lease(lease_id)
        self._record(LeasedWork.Failed, attempt=self.attempt, error=error)

    def request_cancel(self) -> None:
        """Cancel: at once when queued; while running, ask the runner (it confirms)."""
        self.check_not_finished()
        if self.status == JobStatus.QUEUED:
            self._record(LeasedWork.Cancelled, attempt=self.attempt, reason="cancelled before it started")
        elif not self.cancel_requested:
            self._record(LeasedWork.CancelRequested, attempt=self.attempt, runner_id=self.runner_id)

    def confirm_cancelled(self, lease_id: str) -> None:
        if self.status == JobStatus.CANCELLED and lease_id == self.lease_id:
            return
        self.check_lease(lease_id)
        if not self.cancel_requested:
            raise CancelNotRequestedError(f"nobody asked to cancel {self.noun} {self.id}")
        self._record(LeasedWork.Cancelled, attempt=self.attempt, reason="stopped by its runner")
