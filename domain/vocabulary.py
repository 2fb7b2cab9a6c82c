"""Trainyard's vocabulary, declared once: frameworks, tasks, priorities, the states of everything with a
lifecycle, and the metrics with their direction and the tasks that have them.

Every other place takes its values from here: the aggregates' guards, the pydantic schemas (an `StrEnum` is a
valid field type and documents its values), the CLI's choices, the AsyncAPI payloads and the projections.
Members are `str`, so they compare equal to the strings stored in events and read models. No I/O.
"""
from __future__ import annotations

from enum import StrEnum


class Framework(StrEnum):
    LIGHTGBM = "lightgbm"
    PYTORCH = "pytorch"
    PYTHON = "python"  # the user's own script (a code job): its params are free-form, its model an ONNX file


class Task(StrEnum):
    BINARY_CLASSIFICATION = "binary_classification"
    MULTICLASS_CLASSIFICATION = "multiclass_classification"
    REGRESSION = "regression"
    IMAGE_CLASSIFICATION = "image_classification"  # a CNN on images (infra/image_folders.py), K classes
    FORECASTING = "forecasting"  # a regression on a series' own past (lags, windows, calendar), forecast recursively

    @property
    def is_classification(self) -> bool:
        return self.model_task is not Task.REGRESSION

    @property
    def model_task(self) -> Task:
        """What the trained model itself does: a forecaster is a regression model of its features (ONNX, serving)."""
        return Task.REGRESSION if self is Task.FORECASTING else self


class Priority(StrEnum):
    """Declared from the most urgent down: the order runners take work in."""
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


PRIORITY_ORDER: tuple[Priority, ...] = tuple(Priority)  # most urgent first


class WorkKind(StrEnum):
    """What a runner is asked to do with a work item (domain/registry.py maps aggregates to them)."""
    TRAINING = "training"
    EXPORT = "export"
    CODE = "code"  # a training job that runs the user's own code: only runners that accept code take it


BUILTIN_WORK: tuple[WorkKind, ...] = (WorkKind.TRAINING, WorkKind.EXPORT)  # what every runner accepts


class JobStatus(StrEnum):
    """A training job's or a model export's status (both are leased work: domain/work.py)."""
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ExportStatus = JobStatus  # an export is leased work with the same lifecycle


class StudyStatus(StrEnum):
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


STUDY_ENDED: frozenset[StudyStatus] = frozenset({StudyStatus.COMPLETED, StudyStatus.CANCELLED, StudyStatus.FAILED})


class TrialState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"


TRIAL_UNFINISHED: frozenset[TrialState] = frozenset({TrialState.QUEUED, TrialState.RUNNING})


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class PolicyAction(StrEnum):
    """What the A/B policy may do to a challenger."""
    STEP = "step"
    PROMOTE = "promote"
    HALT = "halt"


class RevisionChange(StrEnum):
    """What made a deployment's revision: the `change` of its history entries and public revision events."""
    CREATED = "created"
    TRAFFIC = "traffic"
    PROMOTE = "promote"
    UPDATE = "update"
    ROLLBACK = "rollback"
    DEACTIVATE = "deactivate"
    POLICY_STEP = "policy_step"
    POLICY_PROMOTE = "policy_promote"
    POLICY_HALT = "policy_halt"


class AbMetric(StrEnum):
    """Online metrics: each is the mean of a per-prediction value, so the A/B statistics apply to it."""
    ACCURACY = "accuracy"
    LOGLOSS = "logloss"
    RMSE = "rmse"
    MAE = "mae"


# Every metric Trainyard names, with whether a higher value is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "auc": True, "accuracy": True, "f1_macro": True, "r2": True,
    "logloss": False, "rmse": False, "mae": False, "mape": False, "smape": False, "skill_vs_seasonal_naive": True,
}

# The final metrics a job of each task reports, which are also the objectives a study may optimise.
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    Task.BINARY_CLASSIFICATION: ("auc", "accuracy", "logloss"),
    Task.MULTICLASS_CLASSIFICATION: ("accuracy", "logloss", "f1_macro"),
    Task.REGRESSION: ("rmse", "mae", "r2", "mape", "smape"),
    Task.FORECASTING: ("rmse", "mae", "r2", "mape", "smape", "skill_vs_seasonal_naive"),
    Task.IMAGE_CLASSIFICATION: ("accuracy", "logloss", "f1_macro"),
}

# The online metrics that make sense for a deployment of each task (classification: needs a label; regression: a value).
TASK_AB_METRICS: dict[Task, tuple[AbMetric, ...]] = {
    Task.BINARY_CLASSIFICATION: (AbMetric.ACCURACY, AbMetric.LOGLOSS),
    Task.MULTICLASS_CLASSIFICATION: (AbMetric.ACCURACY, AbMetric.LOGLOSS),
    Task.REGRESSION: (AbMetric.RMSE, AbMetric.MAE),
    Task.FORECASTING: (AbMetric.RMSE, AbMetric.MAE),
    Task.IMAGE_CLASSIFICATION: (AbMetric.ACCURACY, AbMetric.LOGLOSS),
}


def direction_of(metric: str) -> Direction:
    """maximize for auc, accuracy, f1_macro and r2; minimize for the losses and errors."""
    return Direction.MAXIMIZE if HIGHER_IS_BETTER.get(metric, False) else Direction.MINIMIZE


def choices(enum: type[StrEnum]) -> str:
    """`a | b | c`: how help texts and errors list an enum's values."""
    return " | ".join(m.value for m in enum)
