"""LightGBM gradient-boosted trees behind the Trainer protocol.

One step is one boosting round (total_steps = n_estimators). Per-step metrics come from LightGBM's
own evaluation of both splits after each round; the final metrics from `validation_metrics` on the
finished model's validation predictions. The model is LightGBM's text format ("lightgbm-text"):
`lightgbm.Booster(model_str=model_bytes.decode())` loads it.

Deterministic given the spec: `deterministic=True`, row-wise histograms, a fixed thread count
(`num_threads`, default 1, since runners share the machine) and every seed derived from `spec.seed`.
Cancellation is checked after every round, so it takes effect within one round.

Checkpoints (see runners/trainers/__init__.py for when) are the booster's text model after a round. A fit resumed
from one boosts the remaining rounds on top of it (`init_model`) and reports steps from its round + 1 on; the trees
it adds are those of an uninterrupted fit with deterministic settings (a test checks what holds).

LightGBM's parameters are built as {**user params, **task params, **fixed params}: the user's (allowlisted by
domain/frameworks.py) can never override the objective, metrics, seed, determinism or verbosity.
"""
from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np

from domain.frameworks import LIGHTGBM
from infra.datasets import Split, load_dataset
from runners.trainers import (
    CheckpointClock, CheckpointMismatch, Reporter, TrainingCancelled, TrainResult, TrainSpec, check_budget,
    resolve_params, validation_metrics,
)

# Per task: LightGBM's loss metric, its task metric, and the step metric that one becomes.
_METRICS = {
    "binary_classification": ("binary_logloss", "auc", "valid_auc"),
    "multiclass_classification": ("multi_logloss", "multi_error", "valid_accuracy"),
    "regression": ("l2", "rmse", "valid_rmse"),
}


class LightGBMTrainer:
    """Trainer for framework "lightgbm". Stateless: one instance may serve many fits and threads."""

    def fit(self, spec: TrainSpec, report: Reporter) -> TrainResult:
        params = resolve_params("lightgbm", spec.task, spec.params)
        split = load_dataset(spec.dataset_uri, spec.target, spec.task, seed=spec.seed, roots=spec.dataset_roots)
        check_budget("lightgbm", params, len(split.feature_names), split.n_classes or 1)
        rounds = params.pop("n_estimators")
        if report.should_stop():
            raise TrainingCancelled()
        names = _safe_names(split)
        train = lgb.Dataset(split.X_train, split.y_train, feature_name=names, free_raw_data=False)
        valid = lgb.Dataset(split.X_valid, split.y_valid, reference=train, free_raw_data=False)
        start = _resume(spec, names) if spec.resume_from is not None else None
        done = start.current_iteration() if start is not None else 0
        if start is not None and done >= rounds:  # resumed at or past its last round: nothing left to boost
            booster = start
        else:
            booster = lgb.train(
                {**params, **_task_params(spec.task, split), **_fixed_params(spec.seed)},
                train,
                num_boost_round=rounds - done,
                init_model=start,
                valid_sets=[train, valid],
                valid_names=["train", "valid"],
                callbacks=[_report_each_round(spec.task, rounds, report, CheckpointClock(spec, done))],
            )
        predicted = np.asarray(booster.predict(split.X_valid, num_threads=params["num_threads"]))
        return TrainResult(
            final_metrics=validation_metrics(spec.task, split.y_valid, predicted),
            model_bytes=booster.model_to_string().encode(),
            model_format=LIGHTGBM.model_format,
            feature_names=tuple(split.feature_names),
            class_labels=tuple(split.class_labels) if split.class_labels is not None else None,
            feature_recipe=split.recipe.to_json() if split.recipe else None,
        )


def _task_params(task: str, split: Split) -> dict[str, Any]:
    loss, metric, _ = _METRICS[task]
    objective = {"binary_classification": "binary", "multiclass_classification": "multiclass",
                 "regression": "regression"}[task]
    params: dict[str, Any] = {"objective": objective, "metric": [loss, metric]}
    if task == "multiclass_classification":
        params["num_class"] = split.n_classes
    return params


def _fixed_params(seed: int) -> dict[str, Any]:
    # verbosity 1: LightGBM's info and warnings (bins, data sizes, "no further splits") are the job's training logs
    # (the runner captures its output: runners/log_capture.py).
    return {"seed": seed % 2**31, "deterministic": True, "force_row_wise": True, "verbosity": 1}


def _safe_names(split: Split) -> list[str]:
    # LightGBM refuses some JSON special characters in feature names; keep the rest readable.
    table = str.maketrans({c: "_" for c in '[]{}",:'})
    names = [name.translate(table) for name in split.feature_names]
    return names if len(set(names)) == len(names) else [f"{n}__{i}" for i, n in enumerate(names)]


def _resume(spec: TrainSpec, names: list[str]) -> lgb.Booster:
    """The booster saved at `spec.resume_from`; CheckpointMismatch unless it was made on these features."""
    try:
        booster = lgb.Booster(model_str=spec.resume_from.read_text())
    except lgb.basic.LightGBMError as e:
        raise CheckpointMismatch(f"{spec.resume_from.name} is not a LightGBM model: {e}") from None
    if booster.num_feature() != len(names):
        raise CheckpointMismatch(f"the checkpoint was trained on {booster.num_feature()} features, this job's dataset "
                                 f"has {len(names)} (retry without from_checkpoint)")
    return booster


def _report_each_round(task: str, rounds: int, report: Reporter, clock: CheckpointClock):
    loss, metric, step_name = _METRICS[task]

    def callback(env: lgb.callback.CallbackEnv) -> None:
        if report.should_stop():
            raise TrainingCancelled()
        values = {(data, name): value for data, name, value, *_ in env.evaluation_result_list}
        task_value = values[("valid", metric)]
        report.step(env.iteration + 1, rounds, {
            "train_loss": float(values[("train", loss)]),
            "valid_loss": float(values[("valid", loss)]),
            step_name: float(1.0 - task_value if metric == "multi_error" else task_value),
        })
        clock.after(env.iteration + 1, rounds, lambda: env.model.model_to_string().encode())

    return callback
