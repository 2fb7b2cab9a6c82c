"""Validation strategies (domain/validation.py, infra/datasets.py): what rows a job trains, validates and tests on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from domain.validation import Validation, ValidationError, split_rows, stored
from infra.datasets import DatasetError, _load_builtin, load_dataset


@settings(max_examples=200, deadline=None)
@given(n=st.integers(20, 3000), valid=st.floats(0.05, 0.3), test=st.sampled_from([0.0, 0.1, 0.2]),
       gap=st.integers(0, 5), seed=st.integers(0, 2**31))
def test_a_time_series_split_never_puts_a_validation_or_test_row_before_a_training_row(
        n: int, valid: float, test: float, gap: int, seed: int) -> None:
    times = np.random.default_rng(seed).permutation(n)  # row i happened at times[i]
    order = np.argsort(times, kind="stable")
    v = Validation.parse({"strategy": "time_series", "valid_fraction": valid, "test_fraction": test, "gap": gap})
    n_held = int(np.ceil(n * valid)) + (int(np.ceil(n * test)) if test else 0) + gap * (2 if test else 1)
    if n_held >= n:  # nothing left to train on: refused, naming the field
        with pytest.raises(ValidationError) as e:
            split_rows(v, n, None, seed, order)
        assert e.value.field in ("validation.gap", "validation.valid_fraction")
        return
    rows = split_rows(v, n, None, seed, order)
    assert len(rows.train) and len(rows.valid) and len(rows.test) == (int(np.ceil(n * test)) if test else 0)
    assert times[rows.train].max() < times[rows.valid].min()
    if len(rows.test):
        assert times[rows.valid].max() < times[rows.test].min()
        assert times[rows.test].min() - times[rows.valid].max() == gap + 1
    assert times[rows.valid].min() - times[rows.train].max() == gap + 1  # exactly `gap` rows left out between
    assert len(set(rows.train) | set(rows.valid) | set(rows.test)) == len(rows.train) + len(rows.valid) + len(rows.test)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(10, 2000), k=st.integers(2, 10), classes=st.sampled_from([None, 2, 3, 7]),
       seed=st.integers(0, 2**31))
def test_kfold_folds_partition_the_rows(n: int, k: int, classes: int | None, seed: int) -> None:
    if n < 2 * k:
        with pytest.raises(ValidationError) as e:
            split_rows(Validation(strategy="kfold", k=k), n, None, seed)
        assert e.value.field == "validation.k"
        return
    labels = None if classes is None else np.random.default_rng(seed).integers(0, classes, n)
    rows = split_rows(Validation(strategy="kfold", k=k), n, labels, seed)
    assert len(rows.folds) == k and np.array_equal(rows.train, np.arange(n))
    validated = np.concatenate([valid for _, valid in rows.folds])
    assert np.array_equal(np.sort(validated), np.arange(n))  # every row validates exactly once
    for train, valid in rows.folds:
        assert not set(train) & set(valid) and len(train) + len(valid) == n


@pytest.mark.parametrize("name,task", [("breast_cancer", "binary_classification"),
                                       ("wine", "multiclass_classification"), ("diabetes", "regression")])
def test_the_default_is_still_the_stratified_80_20_split_jobs_always_had(name: str, task: str) -> None:
    X, y, _, labels = _load_builtin(name)
    X_train, X_valid, y_train, y_valid = train_test_split(X, y, test_size=0.2, random_state=11,
                                                          stratify=y if labels else None)
    split = load_dataset(f"builtin://{name}", None, task, seed=11)
    assert np.array_equal(split.X_train, X_train) and np.array_equal(split.y_valid, y_valid)
    assert split.y_test is None and not split.folds
    assert stored(None) is None and stored({"strategy": "holdout", "valid_fraction": 0.2}) is None


def test_a_holdout_test_split_is_apart_from_training_and_validation_and_named_by_row() -> None:
    split = load_dataset("builtin://breast_cancer", None, "binary_classification", seed=3,
                         validation=Validation.parse({"test_fraction": 0.25, "valid_fraction": 0.15}))
    n = 569
    assert len(split.y_test) == int(np.ceil(n * 0.25)) and len(split.y_valid) == int(np.ceil((n - len(split.y_test)) * 0.2))
    rows = [set(r.tolist()) for r in (split.train_rows, split.valid_rows, split.test_rows)]
    assert sum(map(len, rows)) == n and len(set().union(*rows)) == n
    X, _, _, _ = _load_builtin("breast_cancer")
    assert np.array_equal(split.X_test, X[split.test_rows])


def test_a_time_column_orders_the_rows_and_is_no_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    days = pd.date_range("2024-01-01", periods=200, freq="D")
    frame = pd.DataFrame({"when": days.strftime("%Y-%m-%d"), "x": rng.normal(size=200),
                          "y": np.arange(200, dtype=float)})
    path = tmp_path / "series.csv"
    frame.sample(frac=1.0, random_state=1).to_csv(path, index=False)  # the file is not in time order
    split = load_dataset(path.as_uri(), "y", "regression", roots=[tmp_path],
                         validation=Validation.parse({"strategy": "time_series", "time_column": "when",
                                                      "test_fraction": 0.1, "gap": 2}))
    assert split.feature_names == ["x"]  # the time column orders, it does not predict
    assert split.y_train.max() < split.y_valid.min() and split.y_valid.max() < split.y_test.min()
    assert split.y_valid.min() - split.y_train.max() == 3 and len(split.y_test) == 20
    with pytest.raises(DatasetError) as e:
        load_dataset(path.as_uri(), "y", "regression", roots=[tmp_path],
                     validation=Validation.parse({"strategy": "time_series", "time_column": "x2"}))
    assert e.value.field == "validation.time_column"


@pytest.mark.parametrize("raw,field", [
    ({"strategy": "bootstrap"}, "validation.strategy"),
    ({"strategy": "kfold", "test_fraction": 0.2}, "validation.test_fraction"),
    ({"strategy": "holdout", "k": 3}, "validation.k"),
    ({"strategy": "kfold", "k": 1}, "validation.k"),
    ({"valid_fraction": 0.0}, "validation.valid_fraction"),
    ({"valid_fraction": float("nan")}, "validation.valid_fraction"),
    ({"valid_fraction": 0.5, "test_fraction": 0.5}, "validation.test_fraction"),
    ({"strategy": "time_series", "gap": -1}, "validation.gap"),
    ({"strategy": "time_series", "time_column": "a\x00b"}, "validation.time_column"),
    ({"folds": 3}, "validation.folds"),
])
def test_a_validation_that_cannot_split_is_refused_naming_its_field(raw: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        Validation.parse(raw)
    assert e.value.field == field


@given(st.sampled_from(["holdout", "kfold", "time_series"]), st.integers(2, 20), st.floats(0.01, 0.3))
def test_a_kept_validation_reads_back_as_itself(strategy: str, k: int, fraction: float) -> None:
    raw = {"strategy": strategy, **({"k": k} if strategy == "kfold" else {"valid_fraction": fraction})}
    kept = stored(raw)
    assert kept is None or stored(kept) == kept
    assert Validation.parse(kept) == Validation.parse(raw)
