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
from domain.validation import Validation
from infra.datasets import Split, load_dataset
from runners.trainers.evaluation import evaluation_report, gain_importance, summary
from runners.trainers import (
    CheckpointClock, CheckpointMismatch, Reporter, TrainingCancelled, TrainResult, TrainSpec, check_budget,
    resolve_params, validation_metrics,
)

# Per task: LightGBM's loss metric, its task metric, and the step metric that one becomes.
_METRICS = {
    "binary_classification": ("binary_logloss", "auc", "valid_auc"),
    "multiclass_classification": ("multi_logloss", "multi_error", "valid_accuracy"),
    "regression": ("l2", "rmse", "valid_rmse"),
    "forecasting": ("l2", "rmse", "valid_rmse"),  # one step ahead on the validation window, teacher-forced
}


class LightGBMTrainer:
    """Trainer for framework "lightgbm". Stateless: one instance may serve many fits and threads."""

    def fit(self, spec: TrainSpec, report: Reporter) -> TrainResult:
        params = resolve_params("lightgbm", spec.task, spec.params)
        split = load_dataset(spec.dataset_uri, spec.target, spec.task, seed=spec.seed, roots=spec.dataset_roots,
                             validation=Validation.parse(spec.validation))
        check_budget("lightgbm", params, len(split.feature_names), split.n_classes or 1)
        rounds, patience = params.pop("n_estimators"), params.pop("early_stopping_rounds", None)
        if report.should_stop():
            raise TrainingCancelled()
        names = safe_names(split)
        full = {**params, **task_params(spec.task, split), **fixed_params(spec.seed)}
        if split.folds:
            booster, folds, oof = _cross_validate(spec, full, split, names, rounds, patience, report)
            evaluated = {"validation": (split.y_train, oof, split.train_rows)}
        else:
            booster, folds = holdout(spec, full, split, names, rounds, patience, report), None
            evaluated = {"validation": (split.y_valid, _predict(booster, split.X_valid, params), split.valid_rows)}
        if split.has_test:
            evaluated["test"] = (split.y_test, _predict(booster, split.X_test, params), split.test_rows)
        best = booster.best_iteration or booster.current_iteration()
        report_json = evaluation_report(spec.task, evaluated, split.class_labels, importance=gain_importance(
            split.feature_names, booster.feature_importance("gain", iteration=best)), importance_kind="gain",
            folds=folds, best_step=best)
        metrics = (report_json["folds"]["mean"] if folds else report_json["splits"]["validation"]["metrics"])
        return TrainResult(
            final_metrics={**{k: v for k, v in metrics.items() if v is not None}, **summary(report_json)},
            model_bytes=booster.model_to_string(num_iteration=best).encode(),
            model_format=LIGHTGBM.model_format,
            feature_names=tuple(split.feature_names),
            class_labels=tuple(split.class_labels) if split.class_labels is not None else None,
            feature_recipe=split.recipe.to_json() if split.recipe else None,
            evaluation=report_json, best_step=best,
        )


def holdout(spec: TrainSpec, params: dict[str, Any], split: Split, names: list[str], rounds: int,
             patience: int | None, report: Reporter) -> lgb.Booster:
    """Boost on the training rows, each round evaluated on the validation rows (resuming from a checkpoint)."""
    train = lgb.Dataset(split.X_train, split.y_train, feature_name=names, free_raw_data=False)
    valid = lgb.Dataset(split.X_valid, split.y_valid, reference=train, free_raw_data=False)
    start = _resume(spec, names) if spec.resume_from is not None else None
    done = start.current_iteration() if start is not None else 0
    if start is not None and done >= rounds:  # resumed at or past its last round: nothing left to boost
        return start
    callbacks = [_report_each_round(spec.task, rounds, report, CheckpointClock(spec, done))]
    if patience:
        callbacks.append(lgb.early_stopping(patience, first_metric_only=True, verbose=False))
    return lgb.train(params, train, num_boost_round=rounds - done, init_model=start, valid_sets=[train, valid],
                     valid_names=["train", "valid"], callbacks=callbacks)


def _cross_validate(spec: TrainSpec, params: dict[str, Any], split: Split, names: list[str], rounds: int,
                    patience: int | None, report: Reporter) -> tuple[lgb.Booster, list[dict[str, float]], np.ndarray]:
    """The k fold boosters in lockstep (LightGBM's cv: each round reports the folds' mean), then the final booster on
    every row for the folds' best number of rounds. (final booster, each fold's metrics, out-of-fold predictions)."""
    data = lgb.Dataset(split.X_train, split.y_train, feature_name=names, free_raw_data=False)
    callbacks = [_report_each_round(spec.task, rounds, report, None)]
    if patience:
        callbacks.append(lgb.early_stopping(patience, first_metric_only=True, verbose=False))
    result = lgb.cv(params, data, num_boost_round=rounds, folds=list(split.folds), callbacks=callbacks,
                    eval_train_metric=True, return_cvbooster=True, stratified=False, shuffle=False)
    cv = result["cvbooster"]
    best = cv.best_iteration if patience and cv.best_iteration > 0 else rounds
    oof_shape = (len(split.y_train), split.n_classes) if spec.task == "multiclass_classification" else len(
        split.y_train)
    oof, folds = np.zeros(oof_shape), []
    for booster, (_, valid_rows) in zip(cv.boosters, split.folds):
        predicted = np.asarray(booster.predict(split.X_train[valid_rows], num_iteration=best))
        oof[valid_rows] = predicted
        folds.append(validation_metrics(spec.task, split.y_train[valid_rows], predicted))

    def cancel(env: lgb.callback.CallbackEnv) -> None:
        if report.should_stop():
            raise TrainingCancelled()

    final = lgb.train(params, data, num_boost_round=best, callbacks=[cancel])
    return final, folds, oof


def _predict(booster: lgb.Booster, X: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    return np.asarray(booster.predict(X, num_threads=params["num_threads"]))


def task_params(task: str, split: Split) -> dict[str, Any]:
    loss, metric, _ = _METRICS[task]
    objective = {"binary_classification": "binary", "multiclass_classification": "multiclass",
                 "regression": "regression", "forecasting": "regression"}[task]
    params: dict[str, Any] = {"objective": objective, "metric": [loss, metric]}
    if task == "multiclass_classification":
        params["num_class"] = split.n_classes
    return params


def fixed_params(seed: int) -> dict[str, Any]:
    # verbosity 1: LightGBM's info and warnings (bins, data sizes, "no further splits") are the job's training logs
    # (the runner captures its output: runners/log_capture.py).
    return {"seed": seed % 2**31, "deterministic": True, "force_row_wise": True, "verbosity": 1}


def safe_names(split: Split) -> list[str]:
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


def _report_each_round(task: str, rounds: int, report: Reporter, clock: CheckpointClock | None):
    """A callback reporting each round's losses and task metric (lgb.cv's entries are the folds' means, named
    "train <metric>" / "valid <metric>")."""
    loss, metric, step_name = _METRICS[task]

    def callback(env: lgb.callback.CallbackEnv) -> None:
        if report.should_stop():
            raise TrainingCancelled()
        values = {}
        for data, name, value, *_ in env.evaluation_result_list:
            if data == "cv_agg":
                data, name = name.split(" ", 1)
            values[(data, name)] = value
        task_value = values[("valid", metric)]
        report.step(env.iteration + 1, rounds, {
            "train_loss": float(values[("train", loss)]),
            "valid_loss": float(values[("valid", loss)]),
            step_name: float(1.0 - task_value if metric == "multi_error" else task_value),
        })
        if clock is not None:
            clock.after(env.iteration + 1, rounds, lambda: env.model.model_to_string().encode())

    return callback
