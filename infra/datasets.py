"""Datasets a job trains on: where they live (URIs), a cheap check at submit time, and loading.

URIs:
  * `builtin://breast_cancer` (binary), `builtin://wine` (multiclass, 3 classes),
    `builtin://diabetes` (regression): scikit-learn's bundled copies, no download. Their target is
    fixed; `target` may be omitted or given as "target". `builtin://demand` (forecasting, target "demand"):
    generated (infra/builtin_series.py) and loaded by infra/forecasting.py.
  * `file:///absolute/path.csv` or `.parquet`: a table with a header; `target` names the label column.
    Only files inside the dataset roots are read (`roots`, from Settings.dataset_root_paths; see
    infra/dataset_files.py); with no roots, file datasets are refused.
  * task image_classification: `builtin://digits` (scikit-learn's 8 x 8 digits) or `file:///….zip|.tar.gz`, an
    ImageFolder archive (one folder per class; infra/image_folders.py); rows are pixels, labels the class folders.

Errors are `DatasetError`s naming the request field at fault ("dataset.uri", "dataset.target",
"task") and a reason a user can act on; the API maps them to 422. Budget: at most MAX_FEATURE_COLUMNS
feature columns (after one-hot encoding too) and MAX_CELLS cells per table.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np

from domain.features import BOOLEAN, CATEGORY, NUMBER, FeatureRecipe, InputColumn
from domain.validation import RowSplit, Validation, split_rows
from domain.vocabulary import Task
from infra.builtin_series import BUILTIN_FORECAST, demand_frame
from infra.dataset_files import (
    FILE_SUFFIXES, IMAGE_ARCHIVE_SUFFIXES, MAX_CELLS, MAX_FEATURE_COLUMNS, DatasetError, read_columns, read_table,
    resolve_file_uri,
)

TASKS: tuple[Task, ...] = tuple(Task)  # the vocabulary's, as a sequence for checks and test strategies

__all__ = ["BUILTIN_TASK", "MAX_CELLS", "MAX_FEATURE_COLUMNS", "MIN_ROWS", "TASKS", "DatasetError", "Split",
           "check_time_column", "dataset_digest", "encode_frame", "learn_recipe", "load_dataset", "validate_dataset"]

BUILTIN_TASK = {
    "breast_cancer": "binary_classification",
    "wine": "multiclass_classification",
    "diabetes": "regression",
    "demand": "forecasting",  # infra/builtin_series.py; loaded by infra/forecasting.py
    "digits": "image_classification",  # 8 x 8 images, loaded by infra/image_folders.py
}
BUILTIN_FEATURES = {"breast_cancer": 30, "wine": 13, "diabetes": 10, "demand": 16, "digits": 64}
MAX_ONE_HOT_LEVELS = 32
MAX_CLASSES = 256
MIN_ROWS = 10


@dataclass(frozen=True)
class Split:
    """A train/validation(/test) split ready for training (domain/validation.py says how rows are split).

    Features are float32 (NaN where a value is missing). Labels are int64 class indices 0..K-1 for
    classification (`class_labels[i]` is the original label of class i) and float32 for regression,
    where `n_classes` and `class_labels` are None. `recipe` says how the file's raw columns became the
    features (domain/features.py): the model keeps it so callers can send raw rows. `train_rows`, `valid_rows` and
    `test_rows` are the row numbers of the training, validation and test rows in the dataset (an evaluation report names
    rows by them). kfold: `X_train` holds every row, `X_valid` none, and `folds` the (train, valid) positions in
    `X_train` of each fold.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    feature_names: list[str]
    n_classes: int | None
    class_labels: list[str] | None
    recipe: FeatureRecipe | None = None
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    train_rows: np.ndarray | None = None
    valid_rows: np.ndarray | None = None
    test_rows: np.ndarray | None = None
    folds: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    validation: Validation = Validation()

    @property
    def has_test(self) -> bool:
        return self.y_test is not None and len(self.y_test) > 0


def validate_dataset(uri: str, target: str | None, task: str, roots: Sequence[Path]) -> int:
    """Check cheaply that `uri` names a usable dataset for `task`; raise DatasetError if not.

    Returns the number of feature columns it sees: exact for builtins, the header's columns less the
    target for files (one-hot encoding may add some at load time). Reads at most a CSV header or a
    Parquet schema, never the data. Raises nothing but DatasetError.
    """
    if task not in TASKS:
        raise DatasetError("task", f"unknown task {str(task)[:40]!r}; expected one of {', '.join(TASKS)}")
    if not isinstance(uri, str):
        raise DatasetError("dataset.uri", "must be a string")
    if task == Task.IMAGE_CLASSIFICATION and not uri.startswith("builtin://"):
        if target:
            raise DatasetError("dataset.target", "an image's label is its class folder: leave target out")
        resolve_file_uri(uri, roots, IMAGE_ARCHIVE_SUFFIXES)
        return 0  # the images' size is known once they are read
    if uri.startswith("builtin://"):
        name = uri.removeprefix("builtin://")
        _check_builtin(name, target, task)
        return BUILTIN_FEATURES[name]
    if not uri.startswith("file://"):
        raise DatasetError("dataset.uri", "unknown scheme; use builtin://<name> or file:///<absolute path>")
    path = resolve_file_uri(uri, roots)
    columns = read_columns(path, _display_name(uri))
    if not target:
        raise DatasetError("dataset.target", "required for file datasets: name the label column")
    if target not in columns:
        shown = [c[:64] for c in columns[:20]]
        raise DatasetError("dataset.target", f"column {target[:64]!r} not found; columns are {shown}"
                           f"{' ...' if len(columns) > 20 else ''}")
    if len(columns) < 2:
        raise DatasetError("dataset.uri", "the file has no feature columns besides the target")
    if len(columns) - 1 > MAX_FEATURE_COLUMNS:
        raise DatasetError("dataset.uri", f"{len(columns) - 1:,} feature columns; at most {MAX_FEATURE_COLUMNS:,}")
    return len(columns) - 1


def check_time_column(uri: str, column: str, roots: Sequence[Path]) -> None:
    """DatasetError("validation.time_column") unless `uri` is a file whose header has `column` (cheap: the header)."""
    if not uri.startswith("file://"):
        raise DatasetError("validation.time_column", "a builtin dataset has no time column: leave it out to split in "
                                                     "row order")
    if column not in read_columns(resolve_file_uri(uri, roots), _display_name(uri)):
        raise DatasetError("validation.time_column", f"column {column[:64]!r} not found in the dataset")


def load_dataset(uri: str, target: str | None, task: str, seed: int = 0, roots: Sequence[Path] = (),
                 validation: Validation | None = None) -> Split:
    """Load `uri` and split it as `validation` says (default: 80/20, stratified for classification), deterministically
    by `seed`. A time_series `time_column` orders the rows and is no feature.

    File datasets (only inside `roots`) follow these rules: rows whose target is missing are dropped;
    numeric and boolean columns are features as they are (missing values stay NaN); text/categorical
    columns with at most MAX_ONE_HOT_LEVELS distinct values are one-hot encoded as `column=value`
    (levels sorted); every other column (high-cardinality text, dates, ...) is dropped. Classification
    labels are encoded by sorted distinct value; a binary task needs exactly 2 of them. Tables over the
    budget (MAX_CELLS, MAX_FEATURE_COLUMNS) are refused.
    """
    validate_dataset(uri, target, task, roots)
    if task == Task.FORECASTING:
        raise DatasetError("task", "a forecasting dataset is featurised by infra/forecasting.py (forecast_split)")
    validation = validation or Validation()
    time_column = validation.time_column if validation.strategy == "time_series" else None
    if task == Task.IMAGE_CLASSIFICATION:
        return _load_images(uri, roots, seed, validation)
    if uri.startswith("builtin://"):
        if time_column:
            raise DatasetError("validation.time_column", "a builtin dataset has no time column: leave it out to "
                                                         "split in row order")
        X, y, names, labels = _load_builtin(uri.removeprefix("builtin://"))
        names, labels = list(names), None if labels is None else list(labels)  # the cached lists stay as they are
        recipe = FeatureRecipe(tuple(InputColumn(n, NUMBER) for n in names), ("target",))
        row_ids, order = np.arange(len(y)), None
    else:
        X, y, recipe, labels, row_ids, order = _load_file(resolve_file_uri(uri, roots), _display_name(uri), target,
                                                          task, time_column)
        names = recipe.feature_names
    if len(y) < MIN_ROWS:
        raise DatasetError("dataset.uri", f"needs at least {MIN_ROWS} rows with a target, found {len(y)}")
    if labels is not None:
        _check_classes(task, labels)
    rows = split_rows(validation, len(y), y if labels is not None else None, seed, order)
    return _split(X, y, names, labels, rows, row_ids, recipe, validation)


def dataset_digest(uri: str, roots: Sequence[Path] = ()) -> str:
    """sha256 of what `uri` names: the file's bytes, or for a builtin the bytes of its feature and target arrays
    (lineage: which data a model was trained on)."""
    import hashlib

    if uri.startswith("builtin://"):
        name = uri.removeprefix("builtin://")
        if name not in BUILTIN_TASK:
            raise DatasetError("dataset.uri", f"unknown builtin dataset {name!r}")
        return _builtin_digest(name)
    digest = hashlib.sha256()
    with resolve_file_uri(uri, roots, FILE_SUFFIXES + IMAGE_ARCHIVE_SUFFIXES).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _display_name(uri: str) -> str:
    return PurePosixPath(unquote(urlparse(uri).path)).name[:100]


def _check_builtin(name: str, target: str | None, task: str) -> None:
    if name not in BUILTIN_TASK:
        raise DatasetError("dataset.uri", f"unknown builtin dataset {name!r}; known: {', '.join(BUILTIN_TASK)}")
    if BUILTIN_TASK[name] != task:
        raise DatasetError("task", f"builtin://{name} is a {BUILTIN_TASK[name]} dataset, not {task}")
    fixed = BUILTIN_FORECAST.get(name, {}).get("target", "target")
    if target not in (None, "", fixed):
        raise DatasetError("dataset.target", f"builtin://{name} has a fixed target; omit it or use {fixed!r}")


@functools.cache
def _builtin_digest(name: str) -> str:
    import hashlib

    if name in BUILTIN_FORECAST:
        return hashlib.sha256(demand_frame().to_csv(index=False).encode()).hexdigest()
    X, y, _, _ = _load_builtin(name)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(X).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()


@functools.cache  # a few small fixed tables: parsed once per process, not for every job's data and digest
def _load_builtin(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str] | None]:
    """(X, y, feature names, class labels or None); the arrays are shared and read-only (splits copy them)."""
    from sklearn import datasets as sk

    bunch = {"breast_cancer": sk.load_breast_cancer, "wine": sk.load_wine, "diabetes": sk.load_diabetes,
             "digits": sk.load_digits}[name]()
    X = bunch.data.astype(np.float32)
    names = [str(n) for n in bunch.feature_names]
    if BUILTIN_TASK[name] == "regression":
        y, labels = bunch.target.astype(np.float32), None
    else:
        y, labels = bunch.target.astype(np.int64), [str(n) for n in bunch.target_names]
    X.flags.writeable = y.flags.writeable = False
    return X, y, names, labels


def _load_images(uri: str, roots: Sequence[Path], seed: int, validation: Validation) -> Split:
    """An image dataset (infra/image_folders.py) as a split of pixel rows; its recipe's `image` is their shape."""
    from infra.image_folders import load_images

    if validation.time_column:
        raise DatasetError("validation.time_column", "an image dataset has no time column")
    X, y, labels, shape = load_images(uri, roots)
    if X.size > MAX_CELLS:
        raise DatasetError("dataset.uri", f"{len(y):,} images of {shape.n_inputs:,} values; at most {MAX_CELLS:,}")
    if len(y) < MIN_ROWS:
        raise DatasetError("dataset.uri", f"needs at least {MIN_ROWS} images, found {len(y)}")
    _check_classes(Task.IMAGE_CLASSIFICATION, labels)
    rows = split_rows(validation, len(y), y, seed)
    return _split(X, y, [], labels, rows, np.arange(len(y)), FeatureRecipe((), (), image=shape), validation)


def _load_file(path: Path, name: str, target: str, task: str, time_column: str | None = None):
    """(X, y, feature recipe, class labels or None, row numbers, time order or None) of the table at `path`."""
    import pandas as pd

    frame = read_table(path, name)
    frame = frame[frame[target].notna()]
    order = _time_order(frame, time_column) if time_column else None
    recipe = learn_recipe(frame, target, exclude=time_column)
    features = encode_frame(frame, recipe)
    if features.shape[1] == 0:
        raise DatasetError("dataset.uri", "no usable feature columns (numeric, or text with few distinct values)")
    if features.shape[1] > MAX_FEATURE_COLUMNS or features.size > MAX_CELLS:
        raise DatasetError("dataset.uri", f"{features.shape[1]:,} feature columns after one-hot encoding; at most "
                           f"{MAX_FEATURE_COLUMNS:,} and {MAX_CELLS:,} cells")
    X = features.to_numpy(dtype=np.float32)
    y_raw = frame[target]
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(y_raw):
            raise DatasetError("dataset.target", f"regression needs a numeric target; {target[:64]!r} is {y_raw.dtype}")
        return X, y_raw.to_numpy(dtype=np.float32), recipe, None, _row_ids(frame), order
    values = y_raw.to_numpy() if pd.api.types.is_numeric_dtype(y_raw) else y_raw.astype(str).to_numpy()
    classes, codes = np.unique(values, return_inverse=True)
    return X, codes.astype(np.int64), recipe, [str(c) for c in classes], _row_ids(frame), order


def _row_ids(frame) -> np.ndarray:
    """The data row numbers (0 = the first row under the header) of `frame`'s rows."""
    index = frame.index.to_numpy()
    return index.astype(np.int64) if np.issubdtype(index.dtype, np.integer) else np.arange(len(frame))


def _time_order(frame, column: str) -> np.ndarray:
    """Positions of `frame`'s rows, oldest first by `column` (numbers, or dates and times as text); stable for ties."""
    import pandas as pd

    if column not in frame.columns:
        raise DatasetError("validation.time_column", f"column {column[:64]!r} not found")
    values = frame[column]
    if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_datetime64_any_dtype(values):
        try:
            values = pd.to_datetime(values, utc=True, format="mixed")
        except (ValueError, TypeError, OverflowError):
            raise DatasetError("validation.time_column", f"column {column[:64]!r} holds neither numbers nor "
                                                         "dates") from None
    if values.isna().any():
        raise DatasetError("validation.time_column", f"column {column[:64]!r} has {int(values.isna().sum())} "
                                                     "missing values: every row needs a time")
    return np.argsort(values.to_numpy(), kind="stable")


def learn_recipe(frame, target: str | None = None, exclude: str | None = None) -> FeatureRecipe:
    """How `frame`'s columns become features (load_dataset's rules); `target`, `exclude` (a time column) and unusable
    columns are `ignored`."""
    import pandas as pd

    columns, ignored = [], []
    for name in frame.columns:
        col = frame[name]
        if name in (target, exclude):
            ignored.append(str(name))
        elif pd.api.types.is_bool_dtype(col):
            columns.append(InputColumn(str(name), BOOLEAN))
        elif pd.api.types.is_numeric_dtype(col):
            columns.append(InputColumn(str(name), NUMBER))
        elif pd.api.types.is_object_dtype(col) or isinstance(col.dtype, (pd.StringDtype, pd.CategoricalDtype)):
            levels = sorted(col.dropna().astype(str).unique())
            if len(levels) > MAX_ONE_HOT_LEVELS:
                ignored.append(str(name))
            else:
                columns.append(InputColumn(str(name), CATEGORY, tuple(levels)))
        else:
            ignored.append(str(name))
    return FeatureRecipe(tuple(columns), tuple(ignored))


def encode_frame(frame, recipe: FeatureRecipe):  # pandas.DataFrame -> pandas.DataFrame of float columns
    """`frame`'s features by `recipe`, vectorised (the inference server encodes one row at a time by the same
    rules, domain/features.py): a category's missing or unseen value is all zeros."""
    import pandas as pd

    columns = {}
    for column in recipe.columns:
        col = frame[column.name]
        if column.type != CATEGORY:
            columns[column.name] = col.astype("float32")
            continue
        text = col.astype(str).where(col.notna(), None)
        for level, feature in zip(column.levels, column.feature_names()):
            columns[feature] = (text == level).astype("float32")
    return pd.DataFrame(columns, index=frame.index)


def _check_classes(task: str, labels: list[str]) -> None:
    k = len(labels)
    if k < 2:
        raise DatasetError("dataset.target", f"classification needs at least 2 classes, found {k}")
    if task == "binary_classification" and k != 2:
        raise DatasetError("dataset.target", f"binary_classification needs exactly 2 classes, found {k}")
    if k > MAX_CLASSES:
        raise DatasetError("dataset.target", f"{k} distinct values is too many classes (max {MAX_CLASSES}); "
                           "is this a regression target?")


def _split(X, y, names, labels, rows: RowSplit, row_ids: np.ndarray, recipe: FeatureRecipe | None,
           validation: Validation) -> Split:
    test = rows.test if len(rows.test) else None
    return Split(X[rows.train], y[rows.train], X[rows.valid], y[rows.valid], names, len(labels) if labels else None,
                 labels, recipe, X_test=None if test is None else X[test], y_test=None if test is None else y[test],
                 train_rows=row_ids[rows.train], valid_rows=row_ids[rows.valid], test_rows=None if test is None else row_ids[test],
                 folds=rows.folds, validation=validation)
