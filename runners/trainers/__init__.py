"""Trainers: the plug-in interface a runner trains through, and the vocabulary it shares.

A runner builds a `TrainSpec` from a job, picks `trainer_for(spec.framework)` and calls
`fit(spec, reporter)` on a worker thread. The trainer loads the dataset, trains, calls
`reporter.step` once per boosting round or epoch, and returns a `TrainResult`; it raises
`TrainingCancelled` promptly once `reporter.should_stop()` is true, `ParamsError` /
`runners.datasets.DatasetError` for bad input, and lets anything else propagate as a failure.

Importing this package is cheap (no torch, no lightgbm): the API calls `validate_params` at submit time.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from domain.training_job import TASKS

__all__ = [
    "MODEL_SUFFIX", "ParamsError", "Reporter", "TrainResult", "TrainSpec", "Trainer",
    "TrainingCancelled", "resolve_params", "step_metrics", "trainer_for", "validate_params",
    "validation_metrics",
]

# File suffix to store each model format under (ArtifactStore.put's `suffix`).
MODEL_SUFFIX = {"lightgbm-text": "txt", "torch-state-dict": "pt"}


class Reporter(Protocol):
    """What a trainer tells the world. Called from the training thread."""

    def step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        """Once per boosting round / epoch, `step` counting from 1 up to `total_steps`.

        `metrics` holds "train_loss", "valid_loss" and the task metric on the validation split:
        "valid_auc" (binary), "valid_accuracy" (multiclass) or "valid_rmse" (regression). Losses are
        log loss for classification and mean squared error (target units) for regression."""

    def should_stop(self) -> bool:
        """True once cancel was requested; the trainer then raises TrainingCancelled promptly."""


class TrainingCancelled(Exception):
    """Training stopped because the reporter asked it to; nothing was produced."""


@dataclass(frozen=True)
class TrainSpec:
    framework: str  # "lightgbm" | "pytorch"
    task: str  # "binary_classification" | "multiclass_classification" | "regression"
    dataset_uri: str
    target: str | None
    params: dict
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    final_metrics: dict[str, float]  # on the validation split, see validation_metrics
    model_bytes: bytes
    model_format: str  # "lightgbm-text" | "torch-state-dict" (keys of MODEL_SUFFIX)


class Trainer(Protocol):
    def fit(self, spec: TrainSpec, report: Reporter) -> TrainResult:
        """Train deterministically given `spec` (same spec, same final metrics and model)."""


def trainer_for(framework: str) -> Trainer:
    """The trainer of `framework`; ValueError for an unknown one. Imports the framework lazily."""
    if framework == "lightgbm":
        from runners.trainers.lightgbm_trainer import LightGBMTrainer

        return LightGBMTrainer()
    if framework == "pytorch":
        from runners.trainers.pytorch_trainer import PyTorchMLPTrainer

        return PyTorchMLPTrainer()
    raise ValueError(f"unknown framework {framework!r}; expected 'lightgbm' or 'pytorch'")


# ---- params ---------------------------------------------------------------------------------
class ParamsError(ValueError):
    """A training parameter that cannot be used: `field` ("params.<name>", "framework", "task")."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


Check = Callable[[Any], "str | None"]  # returns why a value is wrong, or None


def _integer(low: int, high: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {type(v).__name__}"
        return None if low <= v <= high else f"must be between {low} and {high}, got {v}"
    return check


def _number(low: float, high: float = float("inf"), low_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return f"must be a number, got {type(v).__name__}"
        ok = (low < v if low_open else low <= v) and v <= high
        return None if ok else f"must be {'>' if low_open else '>='} {low} and <= {high}, got {v}"
    return check


def _sizes(v: Any) -> str | None:
    if not isinstance(v, list) or len(v) > 16:
        return "must be a list of at most 16 layer widths"
    bad = [w for w in v if _integer(1, 4096)(w)]
    return f"layer widths must be integers between 1 and 4096, got {bad[0]!r}" if bad else None


_FRACTION = _number(0.0, 1.0, low_open=True)
# name -> (default, check). A None default leaves LightGBM's own; aliases are checked alike and passed on.
LIGHTGBM_PARAMS: dict[str, tuple[Any, Check]] = {
    "n_estimators": (100, _integer(1, 100_000)),
    "learning_rate": (None, _number(0.0, low_open=True)),
    "num_leaves": (None, _integer(2, 131_072)),
    "max_depth": (None, _integer(-1, 1_000)),
    "min_child_samples": (None, _integer(0, 10**9)), "min_data_in_leaf": (None, _integer(0, 10**9)),
    "feature_fraction": (None, _FRACTION), "colsample_bytree": (None, _FRACTION),
    "bagging_fraction": (None, _FRACTION), "subsample": (None, _FRACTION),
    "bagging_freq": (None, _integer(0, 10**6)), "subsample_freq": (None, _integer(0, 10**6)),
    "lambda_l1": (None, _number(0.0)), "reg_alpha": (None, _number(0.0)),
    "lambda_l2": (None, _number(0.0)), "reg_lambda": (None, _number(0.0)),
    "min_split_gain": (None, _number(0.0)),
    "num_threads": (1, _integer(1, 64)),
}
# Set by Trainyard from the job (task, n_estimators, seed): a user value would contradict it.
LIGHTGBM_RESERVED = {
    **dict.fromkeys(["objective", "objective_type", "app", "application", "loss", "num_class",
                     "metric", "metrics", "metric_types"], "set from the job's task"),
    **dict.fromkeys(["num_iterations", "num_iteration", "n_iter", "num_tree", "num_trees", "num_round",
                     "num_rounds", "nrounds", "num_boost_round", "max_iter"], "use n_estimators"),
    **dict.fromkeys(["seed", "random_seed", "random_state"], "set from the job's seed"),
    **dict.fromkeys(["num_thread", "nthread", "nthreads", "n_jobs"], "use num_threads"),
}
PYTORCH_PARAMS: dict[str, tuple[Any, Check]] = {
    "epochs": (20, _integer(1, 100_000)),
    "hidden_sizes": ([64, 64], _sizes),
    "lr": (1e-3, _number(0.0, 10.0, low_open=True)),
    "batch_size": (64, _integer(1, 1_000_000)),
    "weight_decay": (0.0, _number(0.0)),
    "num_threads": (1, _integer(1, 64)),
}


def resolve_params(framework: str, task: str, params: dict) -> dict:
    """`params` checked and completed with defaults (keys with a None default are only passed on when
    given). Raises ParamsError. LightGBM passes unknown names through to LightGBM; PyTorch rejects them."""
    if framework not in ("lightgbm", "pytorch"):
        raise ParamsError("framework", f"unknown framework {framework!r}; expected 'lightgbm' or 'pytorch'")
    if task not in TASKS:
        raise ParamsError("task", f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if not isinstance(params, dict):
        raise ParamsError("params", "must be an object of name: value")
    known = LIGHTGBM_PARAMS if framework == "lightgbm" else PYTORCH_PARAMS
    for name, value in params.items():
        if framework == "lightgbm" and name in LIGHTGBM_RESERVED:
            raise ParamsError(f"params.{name}", f"cannot be set: {LIGHTGBM_RESERVED[name]}")
        if name not in known:
            if framework == "pytorch":
                raise ParamsError(f"params.{name}", f"unknown parameter; known: {', '.join(known)}")
            continue
        reason = known[name][1](value)
        if reason:
            raise ParamsError(f"params.{name}", reason)
    defaults = {k: d for k, (d, _) in known.items() if d is not None}
    return {**defaults, **params}


def validate_params(framework: str, task: str, params: dict) -> None:
    """Raise ParamsError naming the field if `params` cannot train `framework` on `task`."""
    resolve_params(framework, task, params)


# ---- metrics --------------------------------------------------------------------------------
def validation_metrics(task: str, y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Final metrics of `predicted` against `y_true`.

    `predicted` is P(class 1) for binary, an (n, K) probability matrix for multiclass and values for
    regression. Binary: auc, accuracy, logloss; multiclass: accuracy, logloss, f1_macro; regression:
    rmse, mae, r2. A metric undefined on this split (auc with one class present) is left out.
    """
    from sklearn import metrics as m

    if task == "regression":
        mse = float(m.mean_squared_error(y_true, predicted))
        return {"rmse": mse**0.5, "mae": float(m.mean_absolute_error(y_true, predicted)),
                "r2": float(m.r2_score(y_true, predicted))}
    if task == "binary_classification":
        out = {"accuracy": float(m.accuracy_score(y_true, predicted >= 0.5)),
               "logloss": float(m.log_loss(y_true, predicted, labels=[0, 1]))}
        if len(np.unique(y_true)) == 2:
            out = {"auc": float(m.roc_auc_score(y_true, predicted)), **out}
        return out
    labels = list(range(predicted.shape[1]))
    chosen = predicted.argmax(axis=1)
    return {"accuracy": float(m.accuracy_score(y_true, chosen)),
            "logloss": float(m.log_loss(y_true, predicted, labels=labels)),
            "f1_macro": float(m.f1_score(y_true, chosen, average="macro", labels=labels, zero_division=0))}


def step_metrics(task: str, train_loss: float, scores: dict[str, float]) -> dict[str, float]:
    """Per-step metrics (see Reporter.step) from a train loss and `validation_metrics` output."""
    if task == "regression":
        return {"train_loss": train_loss, "valid_loss": scores["rmse"] ** 2, "valid_rmse": scores["rmse"]}
    metrics = {"train_loss": train_loss, "valid_loss": scores["logloss"]}
    key = "auc" if task == "binary_classification" else "accuracy"
    if key in scores:
        metrics[f"valid_{key}"] = scores[key]
    return metrics
