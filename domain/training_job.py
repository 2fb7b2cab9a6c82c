"""The TrainingJob aggregate: a training job's spec on top of the shared leased-work lifecycle (domain/work.py:
claim, heartbeats, attempts, hand-back, lease expiry, cancel). Each claim starts a new attempt (its metric series
are kept apart). A failed or cancelled job can be retried: a new job with its spec (and overrides) whose Submitted
event names it in `retry_of`. A code job (framework "python") also carries its `code` (the bundle's code_id and
sha256, the entrypoint, the script's args) and `resources`, and is queued as work of kind "code" (only runners
that accept code take it). No I/O here.
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.contract import DEFAULT_PROJECT
from domain.identity import check_name
from domain.resources import gpus_of
from domain.validation import stored
from domain.vocabulary import JobStatus, WorkKind
from domain.work import (DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, FINISHED, CancelNotRequestedError, JobError,
                         JobFinishedError, LeasedWork, LeaseHeldError, StaleLeaseError)

__all__ = ["DEFAULT_MAX_ATTEMPTS", "DEFAULT_TIMEOUT_S", "FINISHED", "RETRYABLE", "CancelNotRequestedError", "JobError",
           "JobFinishedError", "LeaseHeldError", "NotRetryableError", "StaleLeaseError", "TrainingJob"]
RETRYABLE: frozenset[JobStatus] = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class NotRetryableError(JobError):
    """A retry of a job that neither failed nor was cancelled; maps to HTTP 409."""


class TrainingJob(LeasedWork):
    work_kind = WorkKind.TRAINING
    noun = "job"

    class Submitted(Aggregate.Created):
        """v2 added `timeout_s` and `max_attempts` (leases owned by the domain); v3 added a study trial's
        `study_id`, `trial_number` and `report_metric`; v4 the job's `project`; v5 a retry's `retry_of` (the job it
        retries) and `from_checkpoint`; v6 a code job's `code` and `resources`. Each upcaster gives an older stored
        form the defaults (a job submitted before projects belongs to the default project; one submitted before
        retries retries nothing; one submitted before code jobs runs a built-in trainer). v7 added `validation`; v8 a
        retrain's `champion` (the deployed ONNX artifact it also scores on its test split: domain/retrain.py)."""

        class_version = 8
        name: str
        framework: str
        task: str
        dataset: dict[str, Any]
        params: dict[str, Any]
        priority: str
        tags: list[str]
        timeout_s: int = DEFAULT_TIMEOUT_S
        max_attempts: int = DEFAULT_MAX_ATTEMPTS
        study_id: UUID | None = None
        trial_number: int | None = None
        report_metric: str | None = None
        project: str = DEFAULT_PROJECT
        retry_of: UUID | None = None
        from_checkpoint: bool = False
        code: dict[str, Any] | None = None
        resources: dict[str, Any] | None = None
        validation: dict[str, Any] | None = None
        champion: dict[str, Any] | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("timeout_s", DEFAULT_TIMEOUT_S)
            state.setdefault("max_attempts", DEFAULT_MAX_ATTEMPTS)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state.setdefault("study_id", None)
            state.setdefault("trial_number", None)
            state.setdefault("report_metric", None)

        @staticmethod
        def upcast_v3_v4(state: dict[str, Any]) -> None:
            state.setdefault("project", DEFAULT_PROJECT)

        @staticmethod
        def upcast_v4_v5(state: dict[str, Any]) -> None:
            state.setdefault("retry_of", None)
            state.setdefault("from_checkpoint", False)

        @staticmethod
        def upcast_v5_v6(state: dict[str, Any]) -> None:
            state.setdefault("code", None)
            state.setdefault("resources", None)

        @staticmethod
        def upcast_v6_v7(state: dict[str, Any]) -> None:
            state.setdefault("validation", None)

        @staticmethod
        def upcast_v7_v8(state: dict[str, Any]) -> None:
            state.setdefault("champion", None)

    @classmethod
    def create(cls, id: UUID, *, project: str, validation: dict[str, Any] | None = None,
               **fields: Any) -> TrainingJob:
        """A new job in `project` (a valid project name; the fields as `__init__` takes them). `validation` is checked
        (ValidationError naming the field) and kept in its full form; the default holdout is kept as None."""
        return cls(id=id, project=check_name(project, "project"), validation=stored(validation), **fields)

    @event(Submitted)
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
        project: str = DEFAULT_PROJECT,
        retry_of: UUID | None = None,
        from_checkpoint: bool = False,
        code: dict[str, Any] | None = None,
        resources: dict[str, Any] | None = None,
        validation: dict[str, Any] | None = None,
        champion: dict[str, Any] | None = None,
    ) -> None:
        self.project = project  # every read and command sees it only from within this project
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
        self.retry_of = retry_of  # the failed or cancelled job this one retries (None: a first submit)
        self.from_checkpoint = from_checkpoint  # a retry that starts from its original's latest checkpoint
        self.code = code  # a code job's bundle (code_id, sha256), entrypoint and args; None: a built-in trainer
        self.resources = resources  # a code job's cpus, memory_mb, gpus
        self.validation = validation  # how its rows are split (domain/validation.py); None: the default holdout
        self.champion = champion  # a retrain's deployed model, scored on the same test split; None: not a retrain
        self._init_work()

    @property
    def queue_kind(self) -> str:
        return WorkKind.CODE if self.code is not None else WorkKind.TRAINING

    @property
    def gpus_needed(self) -> int:
        return gpus_of(self.resources)

    def spec(self) -> dict[str, Any]:
        """What a runner needs to train this job (a code job: its project, to find its bundle, and the rest)."""
        spec = {"framework": self.framework, "task": self.task, "dataset": self.dataset, "params": self.params,
                "timeout_s": self.timeout_s, "report_metric": self.report_metric}
        if self.code is not None:
            spec.update(project=self.project, code=self.code, resources=self.resources)
        elif self.resources is not None:  # a built-in trainer that asked for a GPU
            spec["resources"] = self.resources
        if self.validation is not None:
            spec["validation"] = self.validation
        if self.champion is not None:
            spec["champion"] = self.champion
        return spec

    def retry_fields(self, params: dict[str, Any], priority: str | None, from_checkpoint: bool) -> dict[str, Any]:
        """The fields of a new job that retries this one (as `create` takes them, less the project, which is this
        job's): this spec with `params` merged over its params and `priority` (None: this job's) in place of its
        own. A study's trial is retried as a plain job: its study has counted it already. NotRetryableError unless
        this job failed or was cancelled."""
        if self.status not in RETRYABLE:
            raise NotRetryableError(f"job {self.id} is {self.status}: only a failed or cancelled job can be retried")
        return {"name": self.name, "framework": self.framework, "task": self.task, "dataset": dict(self.dataset),
                "params": {**self.params, **params}, "priority": priority or self.priority, "tags": list(self.tags),
                "timeout_s": self.timeout_s, "max_attempts": self.max_attempts, "retry_of": self.id,
                "from_checkpoint": from_checkpoint, "code": self.code, "resources": self.resources,
                "validation": self.validation}
