"""The TrainingJob aggregate: a job's lifecycle, its leases and its attempt budget, guarded.

    queued ──claim──► running ──complete──► completed
      ▲                 │  ├──fail──────► failed
      │                 │  └─request_cancel─► (cancel requested) ──confirm_cancelled──► cancelled
      └─ hand_back / ───┤
         expire_lease   └─ expire_lease with the budget spent ─► failed ("lost its runner N times")
    queued ──request_cancel──► cancelled

Work is leased by the domain: a runner claims the job with a lease (the digest of a token only it knows);
every later report must name the current lease, and reports of any other lease are refused. Each claim starts
a new attempt (its metric series are kept apart). A graceful hand-back spends nothing; only a lost lease
(runner died, lease expired) spends one of `max_attempts`. Runner reports arrive at least once, so a repeat
of what was already recorded is a no-op. Progress is recorded as milestones only (decided by the caller),
so a job has a bounded number of events however long it trains. No I/O here.
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

FRAMEWORKS = ("lightgbm", "pytorch")
TASKS = ("binary_classification", "multiclass_classification", "regression")
PRIORITIES = ("low", "medium", "high", "critical")
FINISHED = ("completed", "failed", "cancelled")
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT_S = 3600


class JobError(Exception):
    """A command the job's state does not allow; maps to HTTP 409."""


class JobFinishedError(JobError):
    """The job already ended (completed, failed or cancelled)."""


class StaleLeaseError(JobError):
    """A report from a lease that is not the job's current one (or a job nobody holds)."""


class LeaseHeldError(JobError):
    """A claim while another runner holds a live lease."""


class CancelNotRequestedError(JobError):
    """A runner confirmed a cancel nobody asked for."""


class TrainingJob(Aggregate):
    @event("Submitted")
    def __init__(
        self,
        id: UUID,
        name: str,
        framework: str,
        task: str,
        dataset: dict[str, Any],
        params: dict[str, Any],
        priority: str,
        tags: list[str],
        timeout_s: int = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        study_id: UUID | None = None,
        trial_number: int | None = None,
        report_metric: str | None = None,
    ) -> None:
        self.name = name
        self.framework = framework
        self.task = task
        self.dataset = dataset
        self.params = params
        self.priority = priority
        self.tags = tags
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.study_id = study_id  # a study's trial: its study and number (None for a plain job)
        self.trial_number = trial_number
        self.report_metric = report_metric  # a per-step metric the runner reports as it goes (for pruning)
        self.status = "queued"
        self.attempt = 0
        self.lost_leases = 0
        self.lease_id: str | None = None
        self.runner_id: str | None = None
        self.current_step = 0
        self.total_steps: int | None = None
        self.cancel_requested = False
        self.final_metrics: dict[str, float] = {}
        self.artifact: dict[str, Any] | None = None
        self.error: str | None = None

    # ---- guards -----------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def check_not_finished(self) -> None:
        if self.is_finished:
            raise JobFinishedError(f"job {self.id} is already {self.status}")

    def check_lease(self, lease_id: str) -> None:
        """The report comes from the runner that holds the job now."""
        self.check_not_finished()
        if self.status != "running" or lease_id != self.lease_id:
            raise StaleLeaseError(f"lease {lease_id[:8]} does not hold job {self.id} ({self.status})")

    def spec(self) -> dict[str, Any]:
        """What a runner needs to train this job."""
        return {"framework": self.framework, "task": self.task, "dataset": self.dataset, "params": self.params,
                "timeout_s": self.timeout_s, "report_metric": getattr(self, "report_metric", None)}

    # ---- leases -----------------------------------------------------------------------------
    def claim(self, lease_id: str, runner_id: str) -> None:
        """Start a new attempt under `lease_id`. Repeating the claim of the current lease is a no-op."""
        self.check_not_finished()
        if self.status == "running":
            if lease_id == self.lease_id:
                return
            raise LeaseHeldError(f"job {self.id} is held by runner {self.runner_id}")
        self._started(attempt=self.attempt + 1, runner_id=runner_id, previous_runner_id=self.runner_id,
                      lease_id=lease_id)

    @event("Started")
    def _started(self, attempt: int, runner_id: str, previous_runner_id: str | None, lease_id: str | None = None) -> None:
        self.status = "running"
        self.attempt = attempt
        self.runner_id = runner_id
        self.lease_id = lease_id
        self.current_step = 0
        self.total_steps = None

    def hand_back(self, lease_id: str, reason: str) -> None:
        """A runner stops gracefully: back to the queue, no attempt spent (or cancelled, if that was asked)."""
        if self.is_finished or (self.status == "queued" and lease_id != self.lease_id):
            return  # already handed back or ended: a repeat
        self.check_lease(lease_id)
        if self.cancel_requested:
            self._cancelled(attempt=self.attempt, reason="its runner stopped after a cancel request")
        else:
            self._requeued(attempt=self.attempt, reason=reason, lost=False, lost_leases=self.lost_leases,
                           priority=self.priority)

    def expire_lease(self, lease_id: str, reason: str) -> None:
        """The lease's runner is gone: spend an attempt; requeue, or fail once `max_attempts` are spent.
        A lease that is no longer current is a no-op (the reconciler may ask twice)."""
        if self.is_finished or self.status != "running" or lease_id != self.lease_id:
            return
        lost = self.lost_leases + 1
        if self.cancel_requested:
            self._cancelled(attempt=self.attempt, reason="its runner was lost after a cancel request")
        elif lost >= self.max_attempts:
            self._lease_lost(attempt=self.attempt, reason=reason, lost_leases=lost)
            self._failed(attempt=self.attempt, error=f"lost its runner {lost} times (last: {reason})")
        else:
            self._requeued(attempt=self.attempt, reason=reason, lost=True, lost_leases=lost, priority=self.priority)

    @event("LeaseLost")
    def _lease_lost(self, attempt: int, reason: str, lost_leases: int) -> None:
        self.lost_leases = lost_leases
        self.lease_id = None

    def requeue(self, reason: str) -> None:
        """Put a queued job's work item on the queue again (the reconciler found none)."""
        self.check_not_finished()
        if self.status != "queued":
            raise JobError(f"job {self.id} is {self.status}, not queued")
        self._requeued(attempt=self.attempt, reason=reason, lost=False, lost_leases=self.lost_leases,
                       priority=self.priority)

    @event("Requeued")
    def _requeued(self, attempt: int, reason: str, lost: bool, lost_leases: int, priority: str) -> None:
        self.status = "queued"
        self.lease_id = None
        self.lost_leases = lost_leases

    # ---- reports under the lease --------------------------------------------------------------
    def record_progress(self, lease_id: str, current_step: int, total_steps: int) -> None:
        """A progress milestone (the caller decides which steps are milestones)."""
        self.check_lease(lease_id)
        if current_step < 0 or total_steps < 1 or current_step > total_steps:
            raise ValueError(f"progress {current_step}/{total_steps} is out of range")
        if current_step <= self.current_step and total_steps == self.total_steps:
            return  # a repeated or reordered report adds nothing
        self._progress_reported(attempt=self.attempt, current_step=current_step, total_steps=total_steps)

    @event("ProgressReported")
    def _progress_reported(self, attempt: int, current_step: int, total_steps: int) -> None:
        self.current_step = current_step
        self.total_steps = total_steps

    def complete(self, lease_id: str, final_metrics: dict[str, float], artifact: dict[str, Any],
                 total_steps: int | None = None) -> None:
        """The attempt finished; `total_steps` (what the runner counted) completes the progress."""
        if self.status == "completed" and lease_id == self.lease_id:
            return
        self.check_lease(lease_id)
        self._completed(attempt=self.attempt, final_metrics=final_metrics, artifact=artifact, total_steps=total_steps)

    @event("Completed")
    def _completed(self, attempt: int, final_metrics: dict[str, float], artifact: dict[str, Any],
                   total_steps: int | None = None) -> None:
        self.status = "completed"
        self.final_metrics = final_metrics
        self.artifact = artifact
        self.total_steps = total_steps or self.total_steps
        if self.total_steps is not None:
            self.current_step = self.total_steps

    def fail(self, lease_id: str, error: str) -> None:
        if self.status == "failed" and lease_id == self.lease_id:
            return
        self.check_lease(lease_id)
        self._failed(attempt=self.attempt, error=error)

    @event("Failed")
    def _failed(self, attempt: int, error: str) -> None:
        self.status = "failed"
        self.error = error

    def request_cancel(self) -> None:
        """Cancel: at once when queued; while running, ask the runner (it confirms)."""
        self.check_not_finished()
        if self.status == "queued":
            self._cancelled(attempt=self.attempt, reason="cancelled before it started")
        elif not self.cancel_requested:
            self._cancel_requested(attempt=self.attempt, runner_id=self.runner_id)

    @event("CancelRequested")
    def _cancel_requested(self, attempt: int, runner_id: str | None) -> None:
        self.cancel_requested = True

    def confirm_cancelled(self, lease_id: str) -> None:
        if self.status == "cancelled" and lease_id == self.lease_id:
            return
        self.check_lease(lease_id)
        if not self.cancel_requested:
            raise CancelNotRequestedError(f"nobody asked to cancel job {self.id}")
        self._cancelled(attempt=self.attempt, reason="stopped by its runner")

    @event("Cancelled")
    def _cancelled(self, attempt: int, reason: str) -> None:
        self.status = "cancelled"
        self.cancel_requested = True
