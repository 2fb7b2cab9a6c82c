"""How a job's rows are split to validate (and test) its model: the `validation` of a job or study, and the splits.

    {"strategy": "holdout" | "kfold" | "time_series", "valid_fraction"?, "test_fraction"?, "k"?, "time_column"?,
     "gap"?, "seed"?}

* holdout (the default, and what a job without `validation` gets): a shuffled split, stratified by class where
  every class has rows enough; `valid_fraction` (default 0.2) of the rows validate, `test_fraction` (default 0) are
  held out as a test split that only the final model sees.
* kfold: `k` folds (default 5; stratified for classification where possible) validate in turn; each fold's figures
  and their mean ± sd are reported, and the final model trains on every row. No test split.
* time_series: rows in time order (`time_column`, or the file's row order without one); the oldest train, then
  `gap` rows are left out, then the validation rows, then `gap` rows, then the test rows: no validation or test row
  is older than a training row.
`seed` (default: the job's) shuffles holdout and kfold. The split functions return row indices; they are pure (numpy
only) so that property tests can check them: folds partition the rows, time-series splits never leak the future.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from domain.contract import FieldError

STRATEGIES = ("holdout", "kfold", "time_series")
MAX_K = 20
MAX_GAP = 1_000_000
DEFAULT_VALID_FRACTION = 0.2
APPLIES = {"holdout": frozenset({"valid_fraction", "test_fraction", "seed"}), "kfold": frozenset({"k", "seed"}),
           "time_series": frozenset({"valid_fraction", "test_fraction", "time_column", "gap"})}


class ValidationError(FieldError):
    """A `validation` that cannot split a job's rows: `field` is "validation.<name>" (or "validation")."""


@dataclass(frozen=True)
class Validation:
    strategy: str = "holdout"
    valid_fraction: float = DEFAULT_VALID_FRACTION
    test_fraction: float = 0.0
    k: int = 5
    time_column: str | None = None
    gap: int = 0
    seed: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Validation:
        """The validation `raw` asks for (None: the default holdout); ValidationError naming the field otherwise.
        Fields that another strategy uses are refused rather than ignored."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValidationError("validation", "must be an object")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValidationError(f"validation.{sorted(unknown)[0][:40]}", f"unknown; known: "
                                  f"{', '.join(cls.__dataclass_fields__)}")
        strategy = raw.get("strategy", "holdout")
        if strategy not in STRATEGIES:
            raise ValidationError("validation.strategy", f"one of {', '.join(STRATEGIES)}")
        allowed = APPLIES[strategy]
        for name in raw:
            if name != "strategy" and name not in allowed:
                raise ValidationError(f"validation.{name}", f"does not apply to strategy {strategy!r} (it takes "
                                      f"{', '.join(sorted(allowed))})")
        valid = _fraction(raw, "valid_fraction", DEFAULT_VALID_FRACTION, low=0.0, high=0.5)
        test = _fraction(raw, "test_fraction", 0.0, low=None, high=0.5)
        if valid + test > 0.6:
            raise ValidationError("validation.test_fraction", f"valid_fraction + test_fraction = {valid + test:g}; "
                                  "at most 0.6, so that most rows train")
        k = _integer(raw, "k", 5, 2, MAX_K)
        gap = _integer(raw, "gap", 0, 0, MAX_GAP)
        seed = raw.get("seed")
        if seed is not None:
            seed = _integer(raw, "seed", 0, 0, 2**32 - 1)
        column = raw.get("time_column")
        if column is not None and (not isinstance(column, str) or not 0 < len(column) <= 200
                                   or not column.isprintable()):
            raise ValidationError("validation.time_column", "a column name: 1 to 200 printable characters")
        return cls(strategy, valid, test, k, column, gap, seed)

    def to_json(self) -> dict[str, Any]:
        """The strategy and every field it uses (defaults filled in), as `parse` takes them back."""
        return {k: v for k, v in asdict(self).items()
                if (k == "strategy" or k in APPLIES[self.strategy]) and v is not None}

    @property
    def is_default(self) -> bool:
        return self == Validation()


def stored(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """`raw` as a job or study keeps it: checked (ValidationError), in full, None for the default holdout."""
    checked = Validation.parse(raw)
    return None if checked.is_default else checked.to_json()


@dataclass(frozen=True)
class RowSplit:
    """Row indices: `train`, `valid` and `test` (empty without a test split); kfold: `folds`, each a (train, valid)
    pair, while `train` holds every row (the final model's) and `valid` is empty."""
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def split_rows(validation: Validation, n: int, labels: np.ndarray | None, seed: int,
               order: np.ndarray | None = None) -> RowSplit:
    """The split of `n` rows; `labels` (class indices) stratify holdout and kfold; `order` (time_series) lists the
    rows oldest first (None: 0..n-1). ValidationError when a part would be empty."""
    seed = (validation.seed if validation.seed is not None else seed) % 2**32
    if validation.strategy == "time_series":
        return _time_series(validation, n, np.arange(n) if order is None else np.asarray(order))
    if validation.strategy == "kfold":
        return _kfold(validation.k, n, labels, seed)
    rows = np.arange(n)
    test = np.empty(0, dtype=np.int64)
    if validation.test_fraction > 0:
        rows, test = _holdout(rows, labels, validation.test_fraction, seed)
    train, valid = _holdout(rows, labels, validation.valid_fraction / (1 - validation.test_fraction), seed)
    return RowSplit(train, valid, test)


def _holdout(rows: np.ndarray, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    stratify = None
    if labels is not None:
        y = labels[rows]
        counts = np.bincount(y)
        counts = counts[counts > 0]
        n_valid = int(np.ceil(len(rows) * fraction))
        # Stratifying needs 2+ rows per class and room for every class on both sides; otherwise a plain shuffle.
        if counts.min() >= 2 and min(n_valid, len(rows) - n_valid) >= len(counts):
            stratify = y
    train, valid = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
    return np.asarray(train), np.asarray(valid)


def _kfold(k: int, n: int, labels: np.ndarray | None, seed: int) -> RowSplit:
    from sklearn.model_selection import KFold, StratifiedKFold

    if n < 2 * k:
        raise ValidationError("validation.k", f"{k} folds need at least {2 * k} rows; the dataset has {n}")
    rows = np.arange(n)
    splitter: Any = KFold(k, shuffle=True, random_state=seed)
    if labels is not None and np.bincount(labels)[np.bincount(labels) > 0].min() >= k:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    folds = tuple((np.asarray(a), np.asarray(b)) for a, b in splitter.split(rows, labels))
    return RowSplit(rows, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), folds)


def _time_series(v: Validation, n: int, order: np.ndarray) -> RowSplit:
    n_test = int(np.ceil(n * v.test_fraction)) if v.test_fraction > 0 else 0
    n_valid = int(np.ceil(n * v.valid_fraction))
    gaps = v.gap * (2 if n_test else 1)
    n_train = n - n_valid - n_test - gaps
    if n_train < 1 or n_valid < 1:
        raise ValidationError("validation.gap" if v.gap else "validation.valid_fraction",
                              f"{n} rows leave no training or validation rows with gap {v.gap}")
    train = order[:n_train]
    valid = order[n_train + v.gap:n_train + v.gap + n_valid]
    test = order[n - n_test:] if n_test else np.empty(0, dtype=np.int64)
    return RowSplit(train, valid, test)


def _fraction(raw: dict[str, Any], name: str, default: float, low: float | None, high: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError(f"validation.{name}", "must be a number")
    if (low is not None and value <= low) or value < 0 or value > high:
        raise ValidationError(f"validation.{name}", f"must be {'over' if low is not None else 'at least'} 0 and "
                                                    f"at most {high:g}")
    return float(value)


def _integer(raw: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"validation.{name}", f"an integer from {low} to {high:,}")
    return value
