"""ONNX export: real models from the real trainers convert, predict like the native model, and follow the
graph contract serving relies on; a converter that gets it wrong is caught by the parity check."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from sklearn.datasets import load_breast_cancer

from infra.datasets import Split, load_dataset
from runners.onnx_converter import (
    DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportError, OnnxModel, ParityError, check_parity, convert, export_onnx,
    native_predict, onnx_predict, session_for,
)
from runners.trainers import TrainSpec, trainer_for, validation_metrics
from tests.support.fakes import QuietReporter

FAST = {"lightgbm": {"n_estimators": 30}, "pytorch": {"epochs": 5, "hidden_sizes": [16]}}
DATASETS = {"binary_classification": "builtin://breast_cancer", "multiclass_classification": "builtin://wine",
            "regression": "builtin://diabetes"}
CASES = [(f, t) for f in ("lightgbm", "pytorch") for t in DATASETS]
WIDTH = {"binary_classification": 2, "multiclass_classification": 3, "regression": 1}
METRIC = {"binary_classification": "auc", "multiclass_classification": "accuracy", "regression": "rmse"}


def train(framework: str, task: str, uri: str, roots=()) -> tuple[bytes, dict, Split]:
    spec = TrainSpec(framework, task, uri, None if uri.startswith("builtin://") else "target",
                     FAST[framework], seed=3, dataset_roots=roots)
    result = trainer_for(framework).fit(spec, QuietReporter())
    return result.model_bytes, result.final_metrics, load_dataset(uri, spec.target, task, seed=3, roots=roots)


@pytest.fixture(scope="module")
def models() -> dict:
    return {(f, t): train(f, t, DATASETS[t]) for f, t in CASES}


@pytest.mark.parametrize("framework, task", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_export_predicts_like_the_native_model(models, framework, task):
    model_bytes, final_metrics, split = models[framework, task]

    result = export_onnx(framework, task, model_bytes, split)

    parity = result.parity
    assert parity["passed"] is True
    assert parity["n_rows"] == len(split.y_valid) and parity["tolerance"] == DEFAULT_TOLERANCE
    assert parity["non_finite"] == 0
    assert parity["max_abs_diff"] <= parity["allowed_abs_diff"]
    if task != "regression":  # probabilities: the tolerance is absolute
        assert parity["max_abs_diff"] <= 1e-4 and parity["allowed_abs_diff"] == DEFAULT_TOLERANCE
    assert parity["metric"] == METRIC[task]
    assert parity["metric_native"] == pytest.approx(final_metrics[METRIC[task]], rel=1e-9)  # what training measured
    assert parity["metric_onnx"] == pytest.approx(parity["metric_native"], rel=1e-5, abs=1e-6)

    onnx_predictions = onnx_predict(result.model.onnx_bytes, task, split.X_valid)
    native = native_predict(framework, task, model_bytes, split.X_valid)
    assert onnx_predictions.shape == native.shape == ((len(split.y_valid),) if task != "multiclass_classification"
                                                      else (len(split.y_valid), 3))
    assert validation_metrics(task, split.y_valid, native)[METRIC[task]] == parity["metric_native"]


@pytest.mark.parametrize("framework, task", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_graph_follows_the_serving_contract(models, framework, task):
    model_bytes, _, split = models[framework, task]
    n_features = split.X_valid.shape[1]

    model = convert(framework, task, model_bytes, n_features)

    name = "values" if task == "regression" else "probabilities"
    assert (model.input_name, model.input_shape, model.output_name, model.opset) == (
        "input", [None, n_features], name, DEFAULT_OPSET)
    graph = onnx.load_from_string(model.onnx_bytes)
    onnx.checker.check_model(graph, full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in graph.opset_import}["ai.onnx"] == DEFAULT_OPSET
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.graph.input] == [("input", onnx.TensorProto.FLOAT)]
    assert [o.name for o in graph.graph.output] == [name]  # LightGBM's "label" output is gone
    dims = [d.dim_param or d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", WIDTH[task]]

    session = session_for(model.onnx_bytes)
    assert [o.name for o in session.get_outputs()] == [name]
    (out,) = session.run(None, {"input": split.X_valid[:7]})
    assert out.dtype == np.float32 and out.shape == (7, WIDTH[task])
    if task != "regression":
        assert np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(out[:, -1] if task == "binary_classification" else out,
                                   onnx_predict(session, task, split.X_valid[:7]))
    assert convert(framework, task, model_bytes, n_features).onnx_bytes == model.onnx_bytes  # deterministic


def broken_converter(op: str, amount: float):
    """A converter that gets the numbers wrong: applies `op` ("Add", "Mul") with `amount` to the real graph's output."""

    def broken(framework, task, model_bytes, n_features, opset):
        good = convert(framework, task, model_bytes, n_features, opset)
        graph = onnx.load_from_string(good.onnx_bytes)
        produced = graph.graph.output[0].name
        for node in graph.graph.node:
            node.output[:] = ["raw" if o == produced else o for o in node.output]
        graph.graph.initializer.append(helper.make_tensor("shift", onnx.TensorProto.FLOAT, [], [amount]))
        graph.graph.node.append(helper.make_node(op, ["raw", "shift"], [produced]))
        return OnnxModel(graph.SerializeToString(), good.opset, good.input_name, good.input_shape, good.output_name)

    return broken


@pytest.mark.parametrize("framework, task", [("lightgbm", "binary_classification"), ("pytorch", "regression")])
def test_a_converter_that_changes_predictions_fails_parity(models, framework, task):
    model_bytes, _, split = models[framework, task]

    with pytest.raises(ParityError) as caught:
        export_onnx(framework, task, model_bytes, split, converter=broken_converter("Mul", 0.9))

    report = caught.value.report
    native = native_predict(framework, task, model_bytes, split.X_valid)
    assert report["passed"] is False and isinstance(caught.value, ExportError)
    assert report["max_abs_diff"] == pytest.approx(0.1 * np.abs(native).max(), rel=1e-3)
    assert report["max_abs_diff"] > report["allowed_abs_diff"]
    message = str(caught.value)
    for figure in (f"{report['max_abs_diff']:.6g}", f"{report['tolerance']:.6g}", str(report["n_rows"]),
                   report["metric"], f"{report['metric_native']:.6g}", f"{report['metric_onnx']:.6g}"):
        assert figure in message


def test_non_finite_onnx_output_fails_parity(models):
    model_bytes, _, split = models["lightgbm", "multiclass_classification"]

    with pytest.raises(ParityError) as caught:
        export_onnx("lightgbm", "multiclass_classification", model_bytes, split,
                    converter=broken_converter("Add", float("nan")))

    report = caught.value.report
    assert report["passed"] is False and report["non_finite"] == report["n_rows"] * 3
    assert report["metric_onnx"] is None and "non-finite" in str(caught.value)


def test_a_small_tolerance_is_enforced(models):
    model_bytes, _, split = models["lightgbm", "binary_classification"]

    with pytest.raises(ParityError) as caught:
        export_onnx("lightgbm", "binary_classification", model_bytes, split,
                    converter=broken_converter("Add", 1e-3))
    assert caught.value.report["max_abs_diff"] > caught.value.report["allowed_abs_diff"] == DEFAULT_TOLERANCE


NAN_CASES = [("lightgbm", "binary_classification"), ("lightgbm", "regression"), ("pytorch", "binary_classification")]


@pytest.mark.parametrize("framework, task", NAN_CASES, ids=[f"{f}-{t}" for f, t in NAN_CASES])
def test_missing_values_predict_the_same(models, framework, task):
    # Trained without missing values: LightGBM treats NaN as 0 (diabetes' centered features give splits on
    # both sides of 0), the MLP as the feature's mean; ONNX agrees.
    model_bytes, _, split = models[framework, task]
    X = split.X_valid[:6].copy()
    X[0, :] = np.nan
    X[1, ::2] = np.nan
    X[2, :5] = np.nan
    onnx_model = convert(framework, task, model_bytes, X.shape[1])

    report = check_parity(framework, task, model_bytes, onnx_model, X, split.y_valid[:6], DEFAULT_TOLERANCE)

    assert report["passed"] and report["non_finite"] == 0
    assert report["max_abs_diff"] <= (1e-4 if task != "regression" else report["allowed_abs_diff"])
    assert np.isfinite(onnx_predict(onnx_model.onnx_bytes, task, X)).all()
    clean = native_predict(framework, task, model_bytes, split.X_valid[:6])
    assert not np.allclose(native_predict(framework, task, model_bytes, X)[:3], clean[:3])  # NaN did matter


@pytest.mark.parametrize("framework", ["lightgbm", "pytorch"])
def test_models_trained_with_missing_values_export(framework, tmp_path):
    # Trained on missing values: LightGBM learns a default direction per split, which the graph keeps.
    data = load_breast_cancer(as_frame=True)
    frame = data.data.copy()
    rng = np.random.default_rng(0)
    for column in frame.columns[:10]:
        frame.loc[rng.random(len(frame)) < 0.3, column] = np.nan
    frame["target"] = data.target
    frame.to_csv(tmp_path / "holes.csv", index=False)
    model_bytes, _, split = train(framework, "binary_classification", f"file://{tmp_path}/holes.csv", (tmp_path,))
    assert np.isnan(split.X_valid).any(axis=1).mean() > 0.5

    result = export_onnx(framework, "binary_classification", model_bytes, split)

    assert result.parity["passed"] and result.parity["max_abs_diff"] <= 1e-4


def test_regression_tolerance_scales_with_the_output(models):
    # A model predicting in the millions: float32 cannot agree to 1e-4 absolutely, so the tolerance is relative.
    model_bytes, _, split = models["pytorch", "regression"]
    saved = torch.load(io.BytesIO(model_bytes), weights_only=True)
    saved["state_dict"]["y_mean"] = torch.tensor([5e6])
    saved["state_dict"]["y_std"] = saved["state_dict"]["y_std"] * 1e4
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    big = buffer.getvalue()
    scaled = Split(split.X_train, split.y_train * 1e4 + 5e6, split.X_valid, split.y_valid * 1e4 + 5e6,
                   split.feature_names, None, None)

    result = export_onnx("pytorch", "regression", big, scaled)

    native = native_predict("pytorch", "regression", big, split.X_valid)
    assert result.parity["allowed_abs_diff"] == pytest.approx(DEFAULT_TOLERANCE * np.abs(native).max())
    assert result.parity["max_abs_diff"] <= result.parity["allowed_abs_diff"]
    with pytest.raises(ParityError):  # 1% of 5e6 is well beyond a 1e-4 relative tolerance
        export_onnx("pytorch", "regression", big, scaled, converter=broken_converter("Add", 5e4))


def test_conversion_refuses_what_it_cannot_convert(models):
    lgb_bytes, _, split = models["lightgbm", "regression"]
    torch_bytes, _, _ = models["pytorch", "multiclass_classification"]
    n = split.X_valid.shape[1]

    for framework, task, data, features, reason in [
        ("lightgbm", "binary_classification", lgb_bytes, n, "objective"),
        ("lightgbm", "regression", lgb_bytes, n + 1, "features"),
        ("lightgbm", "regression", b"not a model", n, "LightGBM"),
        ("pytorch", "regression", torch_bytes, 13, "trained for"),
        ("pytorch", "multiclass_classification", torch_bytes, 12, "features"),
        ("pytorch", "multiclass_classification", b"\x00garbage", 13, "PyTorch"),
        ("xgboost", "regression", lgb_bytes, n, "framework"),
        ("lightgbm", "ranking", lgb_bytes, n, "task"),
    ]:
        with pytest.raises(ExportError, match=reason):
            convert(framework, task, data, features)
    with pytest.raises(ExportError, match="opset"):
        convert("lightgbm", "regression", lgb_bytes, n, opset=DEFAULT_OPSET + 10)
