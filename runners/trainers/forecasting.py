"""The `forecasting` task: LightGBM on lag, rolling-window, calendar and covariate features (infra/forecasting.py),
trained on each series' past, checked by recursive multi-step forecasts of the validation and test windows against
a seasonal-naive baseline computed alongside.

Per-step metrics are one step ahead on the validation window (teacher-forced), as for any LightGBM job, with its
checkpoints, resume and `early_stopping_rounds`. The final metrics are the recursive forecasts' (rmse, mae, r2,
mape, smape), `skill_vs_seasonal_naive` = 1 - MAE(model) / MAE(seasonal naive) (above 0: the model beats the
baseline), and the test window's as `test_<metric>`. The model takes the feature vector (`feature_recipe`: the
feature names as number columns), so its ONNX export predicts one step from features the caller builds; the
forecast settings (time and series columns, horizon, lags, windows, season) stay in the job's dataset, which is
the model's lineage.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from domain.frameworks import LIGHTGBM
from infra.forecasting import ForecastData, forecast_split, recursive, seasonal_naive
from runners.trainers import (Reporter, TrainingCancelled, TrainResult, TrainSpec, check_budget, resolve_params,
                              validation_metrics)
from runners.trainers.evaluation import evaluation_report, gain_importance, summary
from runners.trainers.lightgbm_trainer import fixed_params, holdout, safe_names, task_params


class ForecastTrainer:
    """Trainer for framework "lightgbm" on task "forecasting" (`trainer_for`). Stateless."""

    def fit(self, spec: TrainSpec, report: Reporter) -> TrainResult:
        return fit_forecast(spec, report)


def fit_forecast(spec: TrainSpec, report: Reporter) -> TrainResult:
    params = resolve_params("lightgbm", spec.task, spec.params)
    data = forecast_split(spec.dataset or {"uri": spec.dataset_uri, "target": spec.target}, spec.dataset_roots)
    split = data.split
    check_budget("lightgbm", params, len(split.feature_names), 1)
    rounds, patience = params.pop("n_estimators"), params.pop("early_stopping_rounds", None)
    if report.should_stop():
        raise TrainingCancelled()
    full = {**params, **task_params(spec.task, split), **fixed_params(spec.seed)}
    booster = holdout(spec, full, split, safe_names(split), rounds, patience, report)
    best = booster.best_iteration or booster.current_iteration()

    def predict(X: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(X, num_iteration=best, num_threads=params["num_threads"]))

    forecasts = {"validation": data.windows.valid, "test": data.windows.test}
    evaluated, baseline = {}, {}
    for name, window in forecasts.items():
        actual, rows = data.series.y[window], data.series.row_ids[window]
        evaluated[name] = (actual, recursive(data.series, data.forecast, window, predict), rows)
        baseline[name] = validation_metrics("regression", actual, seasonal_naive(data.series, data.forecast, window))
    report_json = evaluation_report("regression", evaluated, None, importance=gain_importance(
        split.feature_names, booster.feature_importance("gain", iteration=best)), importance_kind="gain",
        best_step=best)
    report_json["task"] = spec.task
    report_json["baseline"] = _baseline(report_json, baseline, data)
    metrics = {k: v for k, v in report_json["splits"]["validation"]["metrics"].items() if v is not None}
    skill = report_json["baseline"]["skill"]
    final = {**metrics, **summary(report_json)}
    if skill["validation"] is not None:
        final["skill_vs_seasonal_naive"] = skill["validation"]
    if skill["test"] is not None:
        final["test_skill_vs_seasonal_naive"] = skill["test"]
    return TrainResult(final_metrics=final, model_bytes=booster.model_to_string(num_iteration=best).encode(),
                       model_format=LIGHTGBM.model_format, feature_names=tuple(split.feature_names),
                       feature_recipe=split.recipe.to_json(), evaluation=report_json, best_step=best)


def _baseline(report: dict[str, Any], baseline: dict[str, dict[str, float]], data: ForecastData) -> dict[str, Any]:
    """The seasonal-naive baseline's figures per window and the model's skill against it (1 - MAE ratio)."""
    skill = {}
    for name, figures in baseline.items():
        mine = report["splits"][name]["metrics"]["mae"]
        skill[name] = 1.0 - mine / figures["mae"] if figures["mae"] > 0 else None
    f = data.forecast
    return {"kind": "seasonal_naive", "season": f.season, "horizon": f.horizon, "metrics": baseline, "skill": skill,
            "series": len(data.series.series_names)}
