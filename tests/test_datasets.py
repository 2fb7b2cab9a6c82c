"""Dataset URIs: the submit-time check names the field at fault; loading splits deterministically; file
datasets are read only inside the dataset roots, within a budget, and errors never quote a file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer

from infra import dataset_files
from domain.features import UNSEEN_CATEGORY, FeatureRecipe
from infra.datasets import TASKS, DatasetError, encode_frame, load_dataset, validate_dataset

NO_ROOTS = ()


@pytest.mark.parametrize("uri, task, n_classes, rows", [
    ("builtin://breast_cancer", "binary_classification", 2, 569),
    ("builtin://wine", "multiclass_classification", 3, 178),
    ("builtin://diabetes", "regression", None, 442),
])
def test_builtin_datasets_load_as_typed_80_20_splits(uri, task, n_classes, rows):
    split = load_dataset(uri, None, task)

    assert len(split.y_train) + len(split.y_valid) == rows
    assert len(split.y_valid) == pytest.approx(rows * 0.2, abs=1)
    assert split.X_train.dtype == split.X_valid.dtype == np.float32
    assert split.X_train.shape[1] == len(split.feature_names)
    assert split.n_classes == n_classes
    if n_classes is None:
        assert split.y_train.dtype == np.float32 and split.class_labels is None
    else:
        assert split.y_train.dtype == np.int64
        assert set(split.y_train) == set(range(n_classes)) == set(split.y_valid)
        assert len(split.class_labels) == n_classes


def test_classification_split_is_stratified():
    split = load_dataset("builtin://wine", None, "multiclass_classification")
    train_share = np.bincount(split.y_train) / len(split.y_train)
    valid_share = np.bincount(split.y_valid) / len(split.y_valid)
    assert np.abs(train_share - valid_share).max() < 0.03


def test_split_is_deterministic_by_seed():
    a, b = (load_dataset("builtin://diabetes", None, "regression", seed=5) for _ in range(2))
    c = load_dataset("builtin://diabetes", None, "regression", seed=6)
    assert np.array_equal(a.X_valid, b.X_valid) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_valid, c.y_valid)


@pytest.mark.parametrize("uri, target, task, field", [
    ("builtin://diabetes", None, "binary_classification", "task"),
    ("builtin://breast_cancer", None, "multiclass_classification", "task"),
    ("builtin://wine", None, "regression", "task"),
    ("builtin://iris", None, "multiclass_classification", "dataset.uri"),
    ("builtin://wine", "quality", "multiclass_classification", "dataset.target"),
    ("builtin://wine", None, "clustering", "task"),
    ("s3://bucket/data.csv", "y", "regression", "dataset.uri"),
    ("/abs/data.csv", "y", "regression", "dataset.uri"),
    ("file://relative/data.csv", "y", "regression", "dataset.uri"),
    ("file:data.csv", "y", "regression", "dataset.uri"),
    ("file:///no/such/file.csv", "y", "regression", "dataset.uri"),
])
def test_validate_dataset_names_the_field_at_fault(uri, target, task, field, tmp_path):
    with pytest.raises(DatasetError) as error:
        validate_dataset(uri, target, task, (tmp_path, "/no"))
    assert error.value.field == field
    assert error.value.reason


def test_validate_dataset_accepts_builtins_with_or_without_their_target_name():
    assert validate_dataset("builtin://breast_cancer", None, "binary_classification", NO_ROOTS) == 30
    assert validate_dataset("builtin://wine", "target", "multiclass_classification", NO_ROOTS) == 13


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_file_dataset_needs_its_target_column(tmp_path, suffix):
    frame = load_breast_cancer(as_frame=True).frame
    path = tmp_path / f"cancer.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)

    roots = (tmp_path,)
    assert validate_dataset(path.as_uri(), "target", "binary_classification", roots) == frame.shape[1] - 1
    for target in ("label", None):
        with pytest.raises(DatasetError) as error:
            validate_dataset(path.as_uri(), target, "binary_classification", roots)
        assert error.value.field == "dataset.target"
    with pytest.raises(DatasetError) as error:
        load_dataset(path.as_uri(), "label", "binary_classification", roots=roots)
    assert error.value.field == "dataset.target"


def test_file_dataset_needs_a_csv_or_parquet_file(tmp_path):
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "empty.csv").write_text("")
    for name in ("data.json", "folder.csv", "empty.csv"):
        with pytest.raises(DatasetError) as error:
            validate_dataset((tmp_path / name).as_uri(), "y", "regression", (tmp_path,))
        assert error.value.field == "dataset.uri", name


def test_validate_dataset_reads_only_the_header(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,y\n1,2,3\n1,2,3,4,5,6\n")  # a full read would fail on line 3
    validate_dataset(path.as_uri(), "y", "regression", (tmp_path,))


def test_file_features_one_hot_few_levels_and_drop_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({
        "size": rng.normal(size=n),
        "flag": rng.random(n) > 0.5,
        "colour": rng.choice(["red", "green", None], size=n),
        "customer_id": [f"c{i}" for i in range(n)],
        "label": rng.choice(["no", "yes"], size=n),
    })
    frame.loc[:4, "label"] = None
    path = tmp_path / "people.parquet"
    frame.to_parquet(path)

    split = load_dataset(path.as_uri(), "label", "binary_classification", roots=(tmp_path,))

    assert split.feature_names == ["size", "flag", "colour=green", "colour=red"]
    assert len(split.y_train) + len(split.y_valid) == n - 5  # rows without a label are dropped
    assert split.class_labels == ["no", "yes"]
    colour = np.concatenate([split.X_train, split.X_valid])[:, 2:]
    assert set(colour.sum(axis=1)) == {0.0, 1.0}  # a missing colour is all zeros


def test_a_file_records_its_feature_recipe_and_a_raw_row_encodes_as_the_loader_did(tmp_path):
    rng = np.random.default_rng(1)
    n = 120
    frame = pd.DataFrame({
        "tenure": np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 72, size=n)),
        "contract": rng.choice(["month", "year", "two_year", None], size=n),
        "paperless": rng.random(n) > 0.5,
        "customer_id": [f"c{i}" for i in range(n)],
        "churn": rng.choice(["no", "yes"], size=n),
    })
    path = tmp_path / "churn.csv"
    frame.to_csv(path, index=False)

    split = load_dataset(path.as_uri(), "churn", "binary_classification", roots=(tmp_path,))

    recipe = FeatureRecipe.from_json(split.recipe.to_json())  # what travels with the model is the same recipe
    assert recipe.to_json() == {
        "columns": [{"name": "tenure", "type": "number"},
                    {"name": "contract", "type": "category", "levels": ["month", "two_year", "year"]},
                    {"name": "paperless", "type": "boolean"}],
        "ignored": ["customer_id", "churn"], "unseen_category": UNSEEN_CATEGORY}
    assert recipe.feature_names == split.feature_names
    # The file's rows, one at a time as a caller sends them (nulls for missing cells, keys in another order, the
    # ignored columns along), encode to the loader's matrix.
    read = pd.read_csv(path)
    rows = [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in reversed(r.items())}
            for r in read.to_dict("records")]
    encoded = np.array([recipe.encode(row) for row in rows], dtype=np.float32)
    loaded = encode_frame(read, recipe).to_numpy(dtype=np.float32)
    assert np.array_equal(encoded, loaded, equal_nan=True)
    X = np.concatenate([split.X_train, split.X_valid])
    assert sorted(map(tuple, np.nan_to_num(X, nan=-1))) == sorted(map(tuple, np.nan_to_num(loaded, nan=-1)))
    # Unseen and missing categories are all zeros, as a missing value was in training.
    unseen = recipe.encode({"tenure": 3, "contract": "weekly", "paperless": True})
    assert unseen == recipe.encode({"tenure": 3, "contract": None, "paperless": True}) == [3.0, 0, 0, 0, 1.0]


def test_builtin_datasets_record_an_all_number_recipe():
    split = load_dataset("builtin://wine", None, "multiclass_classification")
    assert split.recipe.is_identity and split.recipe.feature_names == split.feature_names


def test_file_target_must_suit_the_task(tmp_path):
    path = tmp_path / "three.csv"
    pd.DataFrame({"x": range(30), "y": ["a", "b", "c"] * 10}).to_csv(path, index=False)
    for task in ("binary_classification", "regression"):
        with pytest.raises(DatasetError) as error:
            load_dataset(path.as_uri(), "y", task, roots=(tmp_path,))
        assert error.value.field == "dataset.target"
    assert load_dataset(path.as_uri(), "y", "multiclass_classification", roots=(tmp_path,)).n_classes == 3


def test_tiny_files_are_refused(tmp_path):
    path = tmp_path / "tiny.csv"
    pd.DataFrame({"x": range(4), "y": [0, 1, 0, 1]}).to_csv(path, index=False)
    with pytest.raises(DatasetError) as error:
        load_dataset(path.as_uri(), "y", "binary_classification", roots=(tmp_path,))
    assert error.value.field == "dataset.uri"


uris = st.one_of(
    st.text(),
    st.text().map(lambda s: "file://" + s),
    st.text().map(lambda s: "file:///" + s),
    st.text().map(lambda s: "builtin://" + s),
    st.sampled_from(["file:///", "file://[", "file:///\x00.csv", "file:///tmp", "file:///%00.csv"]),
)


@settings(deadline=None, max_examples=300)
@given(uri=uris, target=st.one_of(st.none(), st.text()), task=st.one_of(st.sampled_from(TASKS), st.text()))
def test_validate_dataset_raises_nothing_but_dataset_error(uri, target, task):
    try:
        validate_dataset(uri, target, task, ("/tmp",))
    except DatasetError as error:
        assert error.field in ("dataset.uri", "dataset.target", "task")


def _table(path, rows=20):
    pd.DataFrame({"x": range(rows), "y": [0, 1] * (rows // 2)}).to_csv(path, index=False)
    return path


def test_files_outside_the_roots_are_refused_whether_they_exist_or_not(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    _table(outside / "data.csv")
    for uri in ((outside / "data.csv").as_uri(), (outside / "missing.csv").as_uri(),
                f"file://{root}/../outside/data.csv", f"file://{root}/%2e%2e/outside/data.csv"):
        with pytest.raises(DatasetError) as error:
            validate_dataset(uri, "y", "binary_classification", (root,))
        assert error.value.field == "dataset.uri" and "outside the dataset roots" in error.value.reason, uri
    with pytest.raises(DatasetError) as error:
        validate_dataset((root / "missing.csv").as_uri(), "y", "binary_classification", (root,))
    assert "no such file" in error.value.reason
    with pytest.raises(DatasetError) as error:  # no roots: no file datasets at all
        load_dataset((outside / "data.csv").as_uri(), "y", "binary_classification", roots=())
    assert error.value.field == "dataset.uri"


def test_a_symlink_inside_a_root_cannot_reach_outside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    secret = _table(tmp_path / "secret.csv")
    (root / "link.csv").symlink_to(secret)
    (root / "passwd.csv").symlink_to("/etc/passwd")
    (root / "loop.csv").symlink_to(root / "loop.csv")
    for name in ("link.csv", "passwd.csv", "loop.csv"):
        with pytest.raises(DatasetError) as error:
            load_dataset((root / name).as_uri(), "y", "binary_classification", roots=(root,))
        assert "outside the dataset roots" in error.value.reason
        assert "root:" not in str(error.value)
    inner = _table(root / "inner.csv")  # a symlink to a file inside a root is fine
    (root / "alias.csv").symlink_to(inner)
    assert validate_dataset((root / "alias.csv").as_uri(), "y", "binary_classification", (root,)) == 1


def test_a_symlinked_root_is_resolved(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    _table(real / "data.csv")
    assert validate_dataset((tmp_path / "alias" / "data.csv").as_uri(), "y", "binary_classification",
                            (tmp_path / "alias",)) == 1


def test_unparsable_files_are_named_but_never_quoted(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"SECRET-LINE-1\nSECRET-LINE-2\n")
    (tmp_path / "bad.csv").write_bytes(b"a,b\n\xff\xfeSECRET,1\n" * 20)
    for name in ("bad.parquet", "bad.csv"):
        uri = (tmp_path / name).as_uri()
        with pytest.raises(DatasetError) as error:
            load_dataset(uri, "b", "regression", roots=(tmp_path,))
        assert error.value.field == "dataset.uri"
        assert "SECRET" not in str(error.value) and "cannot read" in error.value.reason, str(error.value)


def test_tables_over_the_budget_are_refused(tmp_path, monkeypatch):
    wide = tmp_path / "wide.csv"
    pd.DataFrame(np.zeros((12, 10_002))).assign(y=[0, 1] * 6).to_csv(wide, index=False)
    with pytest.raises(DatasetError) as error:
        validate_dataset(wide.as_uri(), "y", "binary_classification", (tmp_path,))
    assert "at most 10,000" in error.value.reason
    tall = _table(tmp_path / "tall.csv", rows=400)
    monkeypatch.setattr(dataset_files, "MAX_CELLS", 500)  # 400 rows x 2 columns
    with pytest.raises(DatasetError) as error:
        load_dataset(tall.as_uri(), "y", "binary_classification", roots=(tmp_path,))
    assert "too large" in error.value.reason
    pd.read_csv(tall).to_parquet(tmp_path / "tall.parquet")
    with pytest.raises(DatasetError) as error:
        load_dataset((tmp_path / "tall.parquet").as_uri(), "y", "binary_classification", roots=(tmp_path,))
    assert "too large" in error.value.reason
