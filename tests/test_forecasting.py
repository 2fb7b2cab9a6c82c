"""Forecasting (infra/forecasting.py, runners/trainers/forecasting.py): features from each series' own past, windows
at each series' end, recursive forecasts that never see a window's actuals, and skill against seasonal naive."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infra.dataset_files import DatasetError
from infra.forecasting import Forecast, features, forecast_split, load_series, recursive, seasonal_naive, windows
from runners.onnx_converter import export_onnx
from runners.trainers import TrainSpec, trainer_for

DEMAND = {"uri": "builtin://demand", "forecast": {"horizon": 14}}


class Quiet:
    def step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def series_file(tmp_path: Path, n: int = 120) -> Path:
    """Two series of a weekly pattern, rows shuffled in the file."""
    days = pd.date_range("2024-01-01", periods=n, freq="D")
    rows = [{"day": d.strftime("%Y-%m-%d"), "shop": shop, "sales": 10 * (1 + shop) + d.day_of_week, "temp": i % 5}
            for shop in (0, 1) for i, d in enumerate(days)]
    path = tmp_path / "sales.csv"
    pd.DataFrame(rows).sample(frac=1.0, random_state=3).to_csv(path, index=False)
    return path


def test_lags_and_windows_read_only_their_own_series_past(tmp_path: Path) -> None:
    f = Forecast(time_column="day", series_column="shop", horizon=7, lags=(1, 7), rolling=(3,), season=7)
    s = load_series(series_file(tmp_path).as_uri(), "sales", f, [tmp_path])
    (start0, end0), (start1, _) = s.bounds()
    X = features(s, f, s.y, np.arange(len(s.y)))
    assert np.isnan(X[start1, 0]) and np.isnan(X[start1 + 6, 1])  # a series' first rows have no past
    assert X[start1 + 1, 0] == s.y[start1] and X[start1 + 7, 1] == s.y[start1]
    assert X[start0 + 5, 2] == pytest.approx(s.y[start0 + 2:start0 + 5].mean())
    assert list(s.times[start0:end0]) == sorted(s.times[start0:end0])  # time order, whatever the file's order
    names = f.feature_names(s.covariate_names, s.calendar)
    assert names[-2:] == ["series", "cov_temp"] and "dayofweek" in names


def test_windows_are_each_series_last_steps_and_forecasts_never_see_their_actuals(tmp_path: Path) -> None:
    f = Forecast(time_column="day", series_column="shop", horizon=7, lags=(1, 2, 7), rolling=(7,), season=7)
    s = load_series(series_file(tmp_path).as_uri(), "sales", f, [tmp_path])
    w = windows(s, f)
    for start, end in s.bounds():
        assert list(w.test[np.isin(w.test, np.arange(start, end))]) == list(range(end - 7, end))
        assert s.times[w.train[np.isin(w.train, np.arange(start, end))]].max() < s.times[end - 14]
    seen: list[np.ndarray] = []

    def model(X: np.ndarray) -> np.ndarray:
        seen.append(X.copy())
        return X[:, 0] + 1.0  # yesterday's value plus one

    first = recursive(s, f, w.test, model)
    spoiled = s.y.copy()
    spoiled[w.test] = 1e9  # whatever the window's actuals are, its forecasts do not change
    again = recursive(type(s)(**{**s.__dict__, "y": spoiled}), f, w.test, model)
    assert np.array_equal(first, again)
    steps = first.reshape(2, 7)
    assert np.allclose(np.diff(steps, axis=1), 1.0)  # step h's lag_1 is step h-1's forecast
    assert np.all(seen[1][:, 1] == s.y[w.test.reshape(2, 7)[:, 0] - 1])  # step 2's lag_2: the last actual
    assert np.allclose(seasonal_naive(s, f, w.test), s.y[w.test])  # a weekly pattern: seasonal naive is exact


def test_a_forecaster_beats_seasonal_naive_on_the_builtin_demand_and_exports_to_onnx() -> None:
    result = trainer_for("lightgbm", "forecasting").fit(
        TrainSpec("lightgbm", "forecasting", "builtin://demand", None, {"n_estimators": 200}, dataset=DEMAND),
        Quiet())
    assert result.final_metrics["skill_vs_seasonal_naive"] > 0.2 and result.final_metrics["test_skill_vs_seasonal_naive"] > 0.2
    baseline = result.evaluation["baseline"]
    assert baseline["metrics"]["test"]["mae"] > result.evaluation["splits"]["test"]["metrics"]["mae"]
    assert result.evaluation["splits"]["test"]["rows"] == 4 * 14 and result.evaluation["task"] == "forecasting"
    assert result.feature_recipe["columns"][0]["name"] == "lag_1"
    split = forecast_split(DEMAND).split
    exported = export_onnx("lightgbm", "forecasting", result.model_bytes, split)
    assert exported.parity["passed"] and exported.parity["n_rows"] == 4 * 14


def test_a_forecast_block_that_cannot_work_is_refused_naming_its_field(tmp_path: Path) -> None:
    path = series_file(tmp_path, n=40)
    with pytest.raises(DatasetError) as e:
        load_series(path.as_uri(), "sales", Forecast(time_column="when"), [tmp_path])
    assert e.value.field == "dataset.forecast.time_column"
    with pytest.raises(DatasetError) as e:  # 40 days cannot hold 28 days of lags and two 7-day windows
        load_series(path.as_uri(), "sales", Forecast(time_column="day", series_column="shop"), [tmp_path])
    assert e.value.field == "dataset.forecast.horizon"
    with pytest.raises(DatasetError) as e:
        Forecast.of({"uri": path.as_uri()})
    assert e.value.field == "dataset.forecast.time_column"
