"""The inference server's in-memory state (serving/state.py): deployments swap in only once loaded, stale events
change nothing, keys and rate limits, request rows, and the bounded prediction buffer."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from domain.api_key import hash_key, new_key
from runners.onnx_converter import convert
from serving.state import (KeyState, ModelLoader, PredictError, ServingState, Telemetry, answer, rows_of)
from runners.trainers import TrainSpec, trainer_for
from infra.datasets import encode_frame, load_dataset
from runners.onnx_converter import native_predict
from tests.support.churn import churn_frame, raw_rows
from tests.support.fakes import QuietReporter


@pytest.fixture(scope="module")
def artifact_store() -> dict[str, bytes]:
    result = trainer_for("lightgbm").fit(TrainSpec("lightgbm", "binary_classification", "builtin://breast_cancer",
                                                   None, {"n_estimators": 5}), QuietReporter())
    onnx = convert("lightgbm", "binary_classification", result.model_bytes, 30).onnx_bytes
    return {"file:///m.onnx": onnx, "file:///broken.onnx": b"not onnx"}


def artifact(store: dict[str, bytes], uri: str = "file:///m.onnx", sha: str | None = None) -> dict:
    return {"uri": uri, "sha256": sha or hashlib.sha256(store[uri]).hexdigest(), "input_name": "input",
            "output_name": "probabilities", "n_features": 30, "feature_names": [f"f{i}" for i in range(30)],
            "class_labels": ["malignant", "benign"], "task": "binary_classification"}


def snapshot(store: dict, revision: int, weights: tuple[int, int] = (100, 0), **over) -> dict:
    a = over.pop("artifact", artifact(store))
    return {"name": "d", "revision": revision, "active": True, "shadow": None,
            "variants": [{"name": "a", "model": "m", "version": 1, "weight": weights[0], "artifact": a},
                         {"name": "b", "model": "m", "version": 2, "weight": weights[1], "artifact": a}], **over}


def test_a_revision_swaps_in_once_loaded_and_an_older_event_changes_nothing(artifact_store) -> None:
    state = ServingState(ModelLoader(artifact_store.__getitem__))
    assert state.apply_deployment(snapshot(artifact_store, 1), version=1)
    assert state.apply_deployment(snapshot(artifact_store, 2, (0, 100)), version=2)
    assert not state.apply_deployment(snapshot(artifact_store, 1), version=1)  # a redelivery of the old one
    assert state.deployments["d"].revision == 2 and state.deployments["d"].router.choose() == "b"
    assert len(state.loader.cache) == 1  # one session per artifact, shared by every variant using it


def test_a_revision_that_cannot_load_keeps_the_previous_one_serving(artifact_store) -> None:
    state = ServingState(ModelLoader(artifact_store.__getitem__))
    state.apply_deployment(snapshot(artifact_store, 1), version=1)
    tampered = artifact(artifact_store, sha="0" * 64)
    assert not state.apply_deployment(snapshot(artifact_store, 2, artifact=tampered), version=2)
    broken = artifact(artifact_store, uri="file:///broken.onnx")
    assert not state.apply_deployment(snapshot(artifact_store, 3, artifact=broken), version=3)
    assert state.deployments["d"].revision == 1 and "revision 3 not loaded" in state.errors["d"]
    state.apply_deployment({"name": "d", "active": False}, version=4)
    assert "d" not in state.deployments and not state.errors and not state.loader.cache


def test_keys_scope_rate_and_revocation() -> None:
    state = ServingState(ModelLoader(lambda uri: b""))
    key, other = new_key(), new_key()
    state.apply_key("k1", 1, {"name": "one", "key_hash": hash_key(key), "deployments": ["d"], "rate_limit_per_s": 2})
    state.apply_key("k2", 1, {"name": "two", "key_hash": hash_key(other), "deployments": ["x"],
                              "rate_limit_per_s": None})
    with pytest.raises(PredictError) as e:
        state.authorize(None, "d")
    assert e.value.status == 401 and e.value.headers["WWW-Authenticate"] == "Bearer"
    assert pytest.raises(PredictError, state.authorize, "ty_nope", "d").value.status == 401
    assert pytest.raises(PredictError, state.authorize, other, "d").value.status == 403
    state.authorize(key, "d")
    state.authorize(key, "d")  # a burst of 2
    limited = pytest.raises(PredictError, state.authorize, key, "d").value
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    state.apply_key("k1", 2, None)  # revoked
    state.apply_key("k1", 1, {"name": "one", "key_hash": hash_key(key), "deployments": ["*"]})  # stale: ignored
    assert pytest.raises(PredictError, state.authorize, key, "d").value.status == 401


def test_the_token_bucket_refills_at_its_rate() -> None:
    bucket = KeyState("k", "k", ["*"], rate=10.0, version=1, tokens=0.0, stamp=100.0)
    assert bucket.take(100.05) > 0  # half a token
    assert bucket.take(100.2) == 0.0  # refilled


def test_rows_are_numbers_or_null_in_feature_order_or_named(artifact_store) -> None:
    state = ServingState(ModelLoader(artifact_store.__getitem__))
    state.apply_deployment(snapshot(artifact_store, 1), version=1)
    model = state.deployments["d"].variants["a"]
    row = [float(i) for i in range(30)]
    X = rows_of([row, {f"f{i}": float(i) for i in reversed(range(30))}], model)
    assert X.dtype == np.float32 and (X[0] == X[1]).all()
    assert np.isnan(rows_of([[None] + row[1:]], model)[0, 0])
    for bad, field in [([], "instances"), ("x", "instances"), ([row[:29]], "instances.0"),
                       ([row[:29] + ["1.5"]], "instances.0.29"), ([row[:29] + [True]], "instances.0.29"),
                       ([row[:29] + [float("inf")]], "instances"), ([[row]], "instances.0"),
                       ([{f"f{i}": 1.0 for i in range(29)} | {"zz": 1.0}], "instances.0.f29"),
                       ([row] * 1001, "instances")]:
        with pytest.raises(PredictError) as e:
            rows_of(bad, model)
        assert e.value.status == 422 and e.value.field == field, (bad, e.value.field)
    out = answer(model, model.run(X))
    assert out["classes"] == ["malignant", "benign"] and set(out["predictions"]) <= {"malignant", "benign"}
    assert all(abs(sum(p) - 1) < 1e-5 for p in out["probabilities"])


def test_raw_rows_of_a_file_with_a_text_column_predict_as_the_native_model(tmp_path) -> None:
    frame = churn_frame(200)
    path = tmp_path / "churn.csv"
    frame.to_csv(path, index=False)
    spec = TrainSpec("lightgbm", "binary_classification", path.as_uri(), "churn", {"n_estimators": 10},
                     dataset_roots=(tmp_path,))
    result = trainer_for("lightgbm").fit(spec, QuietReporter())
    onnx = convert("lightgbm", "binary_classification", result.model_bytes, len(result.feature_names)).onnx_bytes
    store = {"file:///m.onnx": onnx}
    served = {**artifact(store), "n_features": len(result.feature_names),
              "feature_names": list(result.feature_names), "class_labels": list(result.class_labels),
              "feature_recipe": result.feature_recipe}
    state = ServingState(ModelLoader(store.__getitem__))
    assert state.apply_deployment(snapshot(store, 1, artifact=served), version=1)
    model = state.deployments["d"].variants["a"]
    recipe = load_dataset(path.as_uri(), "churn", "binary_classification", roots=(tmp_path,)).recipe

    rows = raw_rows(frame)
    rows[0]["contract"] = "weekly"  # never seen in training: all zeros, as a missing contract was
    rows[1]["contract"] = None
    rows[2]["tenure"] = None
    X = rows_of(rows, model)
    table = frame.drop(columns=["churn"]).astype({"contract": object})
    table.loc[0, "contract"], table.loc[1, "contract"], table.loc[2, "tenure"] = "weekly", None, np.nan
    expected = encode_frame(table, recipe).to_numpy(dtype=np.float32)
    assert np.array_equal(X, expected, equal_nan=True)
    native = native_predict("lightgbm", "binary_classification", result.model_bytes, expected)
    served_p = np.array(answer(model, model.run(X))["probabilities"])[:, 1]
    assert np.abs(served_p - native).max() <= 1e-4
    # Encoded rows (the features' own names) still work and agree.
    encoded = [dict(zip(result.feature_names, map(float, x))) for x in expected[3:6]]
    assert np.array_equal(rows_of(encoded, model), X[3:6])
    for bad, field in [([{k: v for k, v in rows[3].items() if k != "contract"}], "instances.0.contract"),
                       ([rows[3] | {"contract": ["month"]}], "instances.0.contract"),
                       ([rows[3] | {"tenure": "12"}], "instances.0.tenure"),
                       ([rows[3] | {"colour": "red"}], "instances.0")]:
        with pytest.raises(PredictError) as e:
            rows_of(bad, model)
        assert e.value.status == 422 and e.value.field == field, (bad, e.value.detail)


def test_the_prediction_buffer_is_bounded_and_a_failed_batch_comes_back_with_its_id() -> None:
    t = Telemetry("srv", limit=10)
    for i in range(15):
        t.record(f"r{i}", "d", 1, "a", "m", 1, 200, 250, 1)
    assert len(t) == 10 and t.dropped == 5
    first = t.take(max_records=4)
    assert t.take() is first  # not published yet (NATS away): the same batch, the same id
    t.published_one()
    second = t.take()
    assert second.batch_id != first.batch_id and second.size == 6 and first.request_id == ["r0", "r1", "r2", "r3"]
    t.published_one()
    assert t.take() is None and t.published == 10
