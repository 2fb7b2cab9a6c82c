"""The TrainingJob aggregate: a job's lifecycle, guarded.

    queued ──start──► running ──complete──► completed
      │                 │  ├──fail──────► failed
      │                 │  └─request_cancel─► (cancel requested) ──confirm_cancelled──► cancelled
      └─request_cancel──┴──────────────────────────────────────────────────────────────► cancelled

A runner that is lost mid-job is replaced by a new attempt: `start` with a higher attempt number
while running begins that attempt, and reports of older attempts are refused from then on.
Runner reports are delivered at least once, so every command is idempotent where a repeat is
harmless (a second `complete` of the same attempt is a no-op) and refused where it is not.
No I/O here.
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

FRAMEWORKS = ("lightgbm", "pytorch")
TASKS = ("binary_classification", "multiclass_classification", "regression")
PRIORITIES = ("low", "medium", "high", "critical")
FINISHED = ("completed", "failed", "cancelled")


class JobError(Exception):
    """A command the job's state does not allow; maps to HTTP 409."""


class JobFinishedError(JobError):
    """The job already ended (completed, failed or cancelled)."""


class StaleAttemptError(JobError):
    """A report from an attempt that is no longer the job's current one."""


class JobNotRunningError(JobError):
    """A report that needs a running job arrived while it was queued."""


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
    ) -> None:
        self.name = name
        self.framework = framework
        self.task = task
        self.dataset = dataset
        self.params = params
        self.priority = priority
        self.tags = tags
        self.status = "queued"
        self.attempt = 0
        self.runner_id: str | None = None
        self.current_step = 0
        self.total_steps: int | None = None
        self.cancel_requested = False
        self.final_metrics: dict[str, float] = {}
        self.artifact: dict[str, Any] | None = None
        self.error: str | None = None

    # ---- guards ---------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def check_not_finished(self) -> None:
        if self.is_finished:
            raise JobFinishedError(f"job {self.id} is already {self.status}")

    def check_current_attempt(self, attempt: int) -> None:
        self.check_not_finished()
        if self.status != "running":
            raise JobNotRunningError(f"job {self.id} is {self.status}, not running")
        if attempt != self.attempt:
            raise StaleAttemptError(f"attempt {attempt} is not the current attempt {self.attempt}")

    # ---- commands ---------------------------------------------------------------------------
    def start(self, attempt: int, runner_id: str) -> None:
        """Begin `attempt` on `runner_id`. Repeating the current start is a no-op; a higher attempt
        while running means the previous runner was lost."""
        self.check_not_finished()
        if self.status == "running" and attempt == self.attempt and runner_id == self.runner_id:
            return
        if attempt <= self.attempt:
            raise StaleAttemptError(f"attempt {attempt} is not newer than attempt {self.attempt}")
        self._started(attempt=attempt, runner_id=runner_id, previous_runner_id=self.runner_id)

    @event("Started")
    def _started(self, attempt: int, runner_id: str, previous_runner_id: str | None) -> None:
        self.status = "running"
        self.attempt = attempt
        self.runner_id = runner_id
        self.current_step = 0

    def report_progress(self, attempt: int, current_step: int, total_steps: int) -> None:
        self.check_current_attempt(attempt)
        if current_step < 0 or total_steps < 1 or current_step > total_steps:
            raise ValueError(f"progress {current_step}/{total_steps} is out of range")
        if current_step <= self.current_step and total_steps == self.total_steps:
            return  # a repeated or reordered report adds nothing
        self._progress_reported(attempt=attempt, current_step=current_step, total_steps=total_steps)

    @event("ProgressReported")
    def _progress_reported(self, attempt: int, current_step: int, total_steps: int) -> None:
        self.current_step = current_step
        self.total_steps = total_steps

    def complete(self, attempt: int, final_metrics: dict[str, float], artifact: dict[str, Any]) -> None:
        if self.status == "completed" and attempt == self.attempt:
            return
        self.check_current_attempt(attempt)
        self._completed(attempt=attempt, final_metrics=final_metrics, artifact=artifact)

    @event("Completed")
    def _completed(self, attempt: int, final_metrics: dict[str, float], artifact: dict[str, Any]) -> None:
        self.status = "completed"
        self.final_metrics = final_metrics
        self.artifact = artifact
        if self.total_steps is not None:
            self.current_step = self.total_steps

    def fail(self, attempt: int, error: str) -> None:
        if self.status == "failed" and attempt == self.attempt:
            return
        self.check_current_attempt(attempt)
        self._failed(attempt=attempt, error=error)

    @event("Failed")
    def _failed(self, attempt: int, error: str) -> None:
        self.status = "failed"
        self.error = error

    def give_up(self, reason: str) -> None:
        """Fail the job whatever attempt holds it: its work item ran out of deliveries (runners kept dying)."""
        if self.is_finished:
            return
        self._failed(attempt=self.attempt, error=reason)

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

    def confirm_cancelled(self, attempt: int) -> None:
        if self.status == "cancelled":
            return
        self.check_current_attempt(attempt)
        self._cancelled(attempt=attempt, reason="stopped by its runner")

    @event("Cancelled")
    def _cancelled(self, attempt: int, reason: str) -> None:
        self.status = "cancelled"
        self.cancel_requested = True
