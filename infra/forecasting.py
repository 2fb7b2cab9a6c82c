"""Forecasting datasets: a table of one or more time series becomes lag, rolling-window, calendar and covariate
features, split by time, and is forecast recursively step by step.

A forecasting job's `dataset` carries a `forecast` block: `time_column` (numbers, or dates and times as text),
`series_column` (optional: one series per distinct value; none: one series), `horizon` (steps forecast ahead),
`lags` (y[t-k] for each k), `rolling` (the mean of the w values before t for each w) and `season` (the seasonal-naive
baseline's period). Every other numeric column is a covariate, known ahead (its value at t is a feature of t).

Split: per series the last `horizon` rows are the test window and the `horizon` rows before them the validation
window; the rows before train. Training rows' features use the actual past (teacher forcing); a window is forecast
recursively: step h's lags and windows use the forecasts of steps < h, never the actuals of the window. The
seasonal-naive baseline forecasts y[t] as the last actual value one `season` earlier (repeated through the window).

`forecast_split` gives the trainer and the ONNX export the same `Split` (teacher-forced features) with the series,
the windows and the forecast settings beside it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domain.features import NUMBER, FeatureRecipe, InputColumn
from infra.builtin_series import BUILTIN_FORECAST, demand_frame
from infra.dataset_files import DatasetError, read_columns, read_table, resolve_file_uri
from infra.datasets import Split

MAX_SERIES = 10_000
CALENDAR = ("dayofweek", "dayofmonth", "month", "dayofyear")


@dataclass(frozen=True)
class Forecast:
    time_column: str
    series_column: str | None = None
    horizon: int = 7
    lags: tuple[int, ...] = (1, 2, 3, 7, 14, 28)
    rolling: tuple[int, ...] = (7, 28)
    season: int = 7

    @classmethod
    def of(cls, dataset: dict[str, Any]) -> Forecast:
        """The forecast block of a job's `dataset` (a builtin's columns filled in); DatasetError if it has none."""
        block = dict(dataset.get("forecast") or {})
        name = str(dataset.get("uri", "")).removeprefix("builtin://")
        if name in BUILTIN_FORECAST:
            builtin = BUILTIN_FORECAST[name]
            block.setdefault("time_column", builtin["time_column"])
            block.setdefault("series_column", builtin["series_column"])
            block.setdefault("season", builtin["season"])
        if not block.get("time_column"):
            raise DatasetError("dataset.forecast.time_column", "a forecasting job needs the column that orders time")
        for key in ("lags", "rolling"):
            if key in block:
                block[key] = tuple(sorted(set(block[key])))
        return cls(**block)

    @property
    def history(self) -> int:
        """Rows of a series before its first usable training row (its longest lag or window)."""
        return max((*self.lags, *self.rolling, self.season))

    def feature_names(self, covariates: Sequence[str], calendar: bool) -> list[str]:
        return ([f"lag_{k}" for k in self.lags] + [f"rolling_mean_{w}" for w in self.rolling]
                + (list(CALENDAR) if calendar else []) + ["series"] + [f"cov_{c}" for c in covariates])


@dataclass(frozen=True)
class Series:
    """A forecasting table in time order per series: `y` (float64), `times` (datetime64 or numbers), `series` codes
    0..S-1 (`series_names`), `covariates` (n, C), `row_ids` (the rows' numbers in the file)."""
    y: np.ndarray
    times: np.ndarray
    series: np.ndarray
    series_names: list[str]
    covariates: np.ndarray
    covariate_names: list[str]
    row_ids: np.ndarray
    calendar: bool  # dates: calendar features; numbers: none

    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each series' rows."""
        edges = np.flatnonzero(np.diff(self.series)) + 1
        starts = np.concatenate([[0], edges])
        return list(zip(starts.tolist(), [*edges.tolist(), len(self.series)]))


def check_forecast_columns(dataset: dict[str, Any], roots: Sequence[Path] = ()) -> None:
    """Cheaply (a file's header only): the dataset's forecast block names columns it has. DatasetError otherwise."""
    forecast = Forecast.of(dataset)
    uri = str(dataset.get("uri", ""))
    if uri.startswith("builtin://"):
        if uri.removeprefix("builtin://") not in BUILTIN_FORECAST:
            raise DatasetError("dataset.uri", f"not a forecasting dataset; builtin ones: "
                                              f"{', '.join(f'builtin://{n}' for n in BUILTIN_FORECAST)}")
        return
    path = resolve_file_uri(uri, roots)
    columns = read_columns(path, path.name)
    for field, column in (("time_column", forecast.time_column), ("series_column", forecast.series_column)):
        if column is not None and column not in columns:
            raise DatasetError(f"dataset.forecast.{field}", f"column {column[:64]!r} not found")


def load_series(uri: str, target: str | None, forecast: Forecast, roots: Sequence[Path] = ()) -> Series:
    """The table `uri` names as series in time order; DatasetError naming the field at fault."""
    import pandas as pd

    if uri.startswith("builtin://"):
        name = uri.removeprefix("builtin://")
        if name not in BUILTIN_FORECAST:
            raise DatasetError("dataset.uri", f"builtin://{name} is no forecasting dataset; forecasting builtins: "
                                              f"{', '.join(BUILTIN_FORECAST)}")
        frame, target = demand_frame(), BUILTIN_FORECAST[name]["target"]
    else:
        path = resolve_file_uri(uri, roots)
        frame = read_table(path, path.name)
    if not target or target not in frame.columns:
        raise DatasetError("dataset.target", f"column {str(target)[:64]!r} not found")
    for field, column in (("time_column", forecast.time_column), ("series_column", forecast.series_column)):
        if column is not None and column not in frame.columns:
            raise DatasetError(f"dataset.forecast.{field}", f"column {column[:64]!r} not found")
    if not pd.api.types.is_numeric_dtype(frame[target]):
        raise DatasetError("dataset.target", "forecasting needs a numeric target")
    frame = frame[frame[target].notna()].copy()
    frame["__row"] = np.arange(len(frame)) if uri.startswith("builtin://") else frame.index.to_numpy()
    times = frame[forecast.time_column]
    calendar = not pd.api.types.is_numeric_dtype(times)
    if calendar:
        try:
            times = pd.to_datetime(times, utc=True, format="mixed")
        except (ValueError, TypeError, OverflowError):
            raise DatasetError("dataset.forecast.time_column", "holds neither numbers nor dates") from None
    if times.isna().any():
        raise DatasetError("dataset.forecast.time_column", "every row needs a time")
    frame["__time"] = times
    keys = frame[forecast.series_column].astype(str) if forecast.series_column else pd.Series("all", index=frame.index)
    names = sorted(keys.unique())
    if len(names) > MAX_SERIES:
        raise DatasetError("dataset.forecast.series_column", f"{len(names):,} series; at most {MAX_SERIES:,}")
    frame["__series"] = keys.map({n: i for i, n in enumerate(names)}).to_numpy()
    frame = frame.sort_values(["__series", "__time"], kind="stable")
    skip = {target, forecast.time_column, forecast.series_column, "__row", "__time", "__series"}
    covariates = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]
    out = Series(y=frame[target].to_numpy(np.float64), times=frame["__time"].to_numpy(),
                 series=frame["__series"].to_numpy(np.int64), series_names=names,
                 covariates=frame[covariates].to_numpy(np.float64) if covariates else np.zeros((len(frame), 0)),
                 covariate_names=[str(c) for c in covariates], row_ids=frame["__row"].to_numpy(np.int64),
                 calendar=calendar)
    short = min(end - start for start, end in out.bounds())
    if short < forecast.history + 2 * forecast.horizon + 10:
        raise DatasetError("dataset.forecast.horizon", f"a series has {short} rows; each needs at least its longest "
                           f"lag or window ({forecast.history}) + 2 x horizon ({forecast.horizon}) + 10")
    return out


def features(s: Series, forecast: Forecast, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The feature rows of `rows` (positions in `s`) computed from the values `y` (the actuals, or actuals with
    forecasts in place): float32 (len(rows), n_features). Lags and windows never reach into another series."""
    start_of = np.zeros(len(s.y), dtype=np.int64)
    for start, end in s.bounds():
        start_of[start:end] = start
    cumulative = np.concatenate([[0.0], np.cumsum(y)])
    columns = []
    for k in forecast.lags:
        source = rows - k
        columns.append(np.where(source >= start_of[rows], y[np.maximum(source, 0)], np.nan))
    for w in forecast.rolling:
        begin = rows - w
        mean = (cumulative[rows] - cumulative[np.maximum(begin, 0)]) / w
        columns.append(np.where(begin >= start_of[rows], mean, np.nan))
    if s.calendar:
        import pandas as pd

        when = pd.DatetimeIndex(s.times[rows])
        columns += [when.day_of_week.to_numpy(), when.day.to_numpy(), when.month.to_numpy(), when.day_of_year.to_numpy()]
    columns.append(s.series[rows])
    columns += [s.covariates[rows, j] for j in range(s.covariates.shape[1])]
    return np.column_stack(columns).astype(np.float32)


@dataclass(frozen=True)
class Windows:
    """Row positions: `train` (each series' rows after its first `history`, before its windows), `valid` and `test`
    (each series' last 2 x horizon rows, in time order per series)."""
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def windows(s: Series, forecast: Forecast) -> Windows:
    train, valid, test = [], [], []
    h = forecast.horizon
    for start, end in s.bounds():
        train.append(np.arange(start + forecast.history, end - 2 * h))
        valid.append(np.arange(end - 2 * h, end - h))
        test.append(np.arange(end - h, end))
    return Windows(*(np.concatenate(part) for part in (train, valid, test)))


def recursive(s: Series, forecast: Forecast, window: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]
              ) -> np.ndarray:
    """Forecasts of `window` (each series' consecutive rows, `horizon` of them), step by step: step h's features use
    the forecasts of the steps before it. In `window`'s order."""
    # A row's lags and windows reach back only: at step h they read this series' steps < h (forecasts by then) and
    # rows before the window, never a later step's actual, so the window's actuals can stay in place.
    y = s.y.copy()
    steps = window.reshape(-1, forecast.horizon)  # one row per series, its steps in time order
    out = np.empty(window.shape, dtype=np.float64).reshape(steps.shape)
    for h in range(forecast.horizon):
        rows = steps[:, h]
        out[:, h] = predict(features(s, forecast, y, rows))
        y[rows] = out[:, h]
    return out.reshape(-1)


def seasonal_naive(s: Series, forecast: Forecast, window: np.ndarray) -> np.ndarray:
    """Each window row's value one season earlier, repeated through the window from the last actual season."""
    steps = window.reshape(-1, forecast.horizon)
    first = steps[:, :1]
    offsets = np.arange(forecast.horizon) % forecast.season
    return s.y[first - forecast.season + offsets].reshape(-1)


def recipe(forecast: Forecast, s: Series) -> FeatureRecipe:
    """The model's inputs as plain number columns: what one-step prediction (ONNX, serving) is sent."""
    names = forecast.feature_names(s.covariate_names, s.calendar)
    return FeatureRecipe(tuple(InputColumn(n, NUMBER) for n in names), ())


@dataclass(frozen=True)
class ForecastData:
    split: Split  # training rows, and the validation and test windows with teacher-forced features
    series: Series
    windows: Windows
    forecast: Forecast


def forecast_split(dataset: dict[str, Any], roots: Sequence[Path] = ()) -> ForecastData:
    """A forecasting job's dataset, featurised and split by time; DatasetError naming the field at fault."""
    forecast = Forecast.of(dataset)
    s = load_series(dataset["uri"], dataset.get("target") or _builtin_target(dataset["uri"]), forecast, roots)
    w = windows(s, forecast)
    X = {name: features(s, forecast, s.y, rows) for name, rows in (("train", w.train), ("valid", w.valid),
                                                                    ("test", w.test))}
    features_recipe = recipe(forecast, s)
    split = Split(X["train"], s.y[w.train].astype(np.float32), X["valid"], s.y[w.valid].astype(np.float32),
                  list(features_recipe.feature_names), None, None, features_recipe, X_test=X["test"],
                  y_test=s.y[w.test].astype(np.float32), train_rows=s.row_ids[w.train],
                  valid_rows=s.row_ids[w.valid], test_rows=s.row_ids[w.test])
    return ForecastData(split, s, w, forecast)


def _builtin_target(uri: str) -> str | None:
    return BUILTIN_FORECAST.get(uri.removeprefix("builtin://"), {}).get("target")
