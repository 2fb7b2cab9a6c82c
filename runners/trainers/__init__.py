"""Trainers: the plug-in interface a runner trains through, and the vocabulary it shares.

A runner builds a `TrainSpec` from a job, picks `trainer_for(spec.framework, spec.task)` and calls
`fit(spec, reporter)` on a worker thread. The trainer loads the dataset, trains, calls
`reporter.step` once per boosting round or epoch, and returns a `TrainResult`; it raises
`TrainingCancelled` promptly once `reporter.should_stop()` is true, `ParamsError` /
`infra.datasets.DatasetError` for bad input, and lets anything else propagate as a failure.

Validation (domain/validation.py): `spec.validation` says how the dataset's rows are split. Holdout and time-series
train on the training rows with per-step metrics on the validation rows; a test split is only predicted by the final
model. K-fold trains the k fold models in lockstep, reporting each step's mean over the folds, then the final model on
every row for as many steps as the folds' best (no checkpoints: a lost k-fold attempt starts over). Early stopping
(LightGBM `early_stopping_rounds`, PyTorch `patience`) watches the validation loss and keeps the best step's model.
Every trainer returns `evaluation` (runners/trainers/evaluation.py) and `best_step`.

Checkpoints: with `spec.checkpoint` set, the trainer hands it `(step, bytes)` at the end of a step whenever
`CheckpointClock` says one is due (every `checkpoint_every_steps` steps or `checkpoint_every_s` seconds, whichever
comes first; never at the last step, whose result is the model). With `spec.resume_from` (a file one of its own
checkpoints was saved to) it continues from there: its first reported step is the checkpoint's step + 1. A
checkpoint that does not fit the spec (another architecture, task or data) is a `CheckpointMismatch`.

The parameter rules live in domain/frameworks.py (re-exported here: `ParamsError`, `resolve_params`,
`validate_params`, `check_budget`, `MODEL_SUFFIX`). Importing this package is cheap (no torch, no lightgbm).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from domain.frameworks import MODEL_SUFFIX, ParamsError, check_budget, resolve_params, validate_params
from domain.vocabulary import Task

__all__ = [
    "MODEL_SUFFIX", "CheckpointClock", "CheckpointMismatch", "ParamsError", "Reporter", "TrainResult", "TrainSpec",
    "Trainer", "TrainingCancelled", "check_budget", "resolve_params", "step_metrics", "trainer_for", "validate_params",
    "validation_metrics",
]


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


class CheckpointMismatch(ValueError):
    """The checkpoint to resume from was made for another model (architecture, task, data): the job fails."""


@dataclass(frozen=True)
class TrainSpec:
    framework: str  # "lightgbm" | "pytorch"
    task: str  # "binary_classification" | "multiclass_classification" | "regression" | "image_classification" ...
    dataset_uri: str
    target: str | None
    params: dict
    seed: int = 0
    # Where file:// datasets may be read from (Settings.dataset_root_paths); empty: builtin datasets only.
    dataset_roots: tuple[Path, ...] = ()
    resume_from: Path | None = None  # a checkpoint of this trainer to continue from (runners/checkpoints.py)
    checkpoint: Callable[[int, bytes], None] | None = None  # save(step, data); None: no checkpoints
    checkpoint_every_steps: int = 25
    checkpoint_every_s: float = 60.0
    gpus: tuple[int, ...] = ()  # CUDA device indices the runner gave this job (none: train on CPU)
    validation: dict | None = None  # how rows are split (domain/validation.py); None: the default holdout
    dataset: dict | None = None  # the job's whole dataset block (a forecasting job's `forecast` settings are in it)


class CheckpointClock:
    """When a trainer saves a checkpoint: at the end of a step once `checkpoint_every_steps` steps or
    `checkpoint_every_s` seconds have passed since the last one (or since the start), never at the last step."""

    def __init__(self, spec: TrainSpec, start_step: int = 0) -> None:
        self.save = spec.checkpoint
        self.every_steps, self.every_s = spec.checkpoint_every_steps, spec.checkpoint_every_s
        self.last_step, self.last_at = start_step, time.monotonic()

    def after(self, step: int, total_steps: int, data: Callable[[], bytes]) -> None:
        """Save `data()` as the checkpoint of `step` if one is due."""
        if self.save is None or step >= total_steps:
            return
        if step - self.last_step >= self.every_steps or time.monotonic() - self.last_at >= self.every_s:
            self.save(step, data())
            self.last_step, self.last_at = step, time.monotonic()


@dataclass(frozen=True)
class TrainResult:
    # On the validation split (k-fold: the folds' mean), see validation_metrics; with the report's summary figures
    # (test_<name> on a test split, <name>_sd over folds).
    final_metrics: dict[str, float]
    model_bytes: bytes
    model_format: str  # FrameworkSpec.model_format: "lightgbm-text" | "torch-state-dict" (keys of MODEL_SUFFIX)
    feature_names: tuple[str, ...] = ()  # the model's input columns, in order
    class_labels: tuple[str, ...] | None = None  # classification: the original label of class index i
    feature_recipe: dict | None = None  # FeatureRecipe.to_json(): the raw columns and how they became the features
    evaluation: dict | None = None  # runners/trainers/evaluation.py: the report on the validation (and test) split
    best_step: int | None = None  # the step whose model this is (early stopping keeps the best, not the last)


class Trainer(Protocol):
    def fit(self, spec: TrainSpec, report: Reporter) -> TrainResult:
        """Train deterministically given `spec` (same spec, same final metrics and model)."""


def trainer_for(framework: str, task: str | None = None) -> Trainer:
    """The trainer of `framework` (for `task`: a forecasting job's LightGBM trains on its series' features); ValueError
    for an unknown one. Imports the framework lazily."""
    if framework == "lightgbm" and task == "forecasting":
        from runners.trainers.forecasting import ForecastTrainer

        return ForecastTrainer()
    if framework == "lightgbm":
        from runners.trainers.lightgbm_trainer import LightGBMTrainer

        return LightGBMTrainer()
    if framework == "pytorch" and task == "image_classification":
        from runners.trainers.cnn_trainer import CNNTrainer

        return CNNTrainer()
    if framework == "pytorch":
        from runners.trainers.pytorch_trainer import PyTorchMLPTrainer

        return PyTorchMLPTrainer()
    raise ValueError(f"unknown framework {framework!r}; expected 'lightgbm' or 'pytorch'")


# ---- metrics --------------------------------------------------------------------------------
def validation_metrics(task: str, y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Final metrics of `predicted` against `y_true`.

    `predicted` is P(class 1) for binary, an (n, K) probability matrix for multiclass and values for
    regression. Binary: auc, accuracy, logloss; multiclass: accuracy, logloss, f1_macro; regression:
    rmse, mae, r2, mape (over the rows whose target is not 0) and smape (a row whose target and prediction are both 0
    counts 0). A metric undefined on this split (auc with one class present, mape with every target 0) is left out.
    """
    from sklearn import metrics as m

    if Task(task).model_task is Task.REGRESSION:  # a forecaster's too (it adds its skill against a baseline)
        y, p = np.asarray(y_true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        mse = float(m.mean_squared_error(y, p))
        out = {"rmse": mse**0.5, "mae": float(m.mean_absolute_error(y, p)), "r2": float(m.r2_score(y, p))}
        nonzero = y != 0
        if nonzero.any():
            out["mape"] = float(np.mean(np.abs((p[nonzero] - y[nonzero]) / y[nonzero])))
        scale = np.abs(y) + np.abs(p)
        out["smape"] = float(np.mean(np.divide(2 * np.abs(p - y), scale, out=np.zeros_like(y), where=scale > 0)))
        return out
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
    if Task(task).model_task is Task.REGRESSION:
        return {"train_loss": train_loss, "valid_loss": scores["rmse"] ** 2, "valid_rmse": scores["rmse"]}
    metrics = {"train_loss": train_loss, "valid_loss": scores["logloss"]}
    key = "auc" if task == "binary_classification" else "accuracy"
    if key in scores:
        metrics[f"valid_{key}"] = scores[key]
    return metrics
