"""ONNX export of a trained model, checked for parity against the native model before anyone serves it.

`export_onnx(framework, task, model_bytes, split)` converts a trainer's model bytes (LightGBM text or the
PyTorch trainer's torch.save dict) to ONNX, runs both on the job's validation split and returns an
`ExportResult` whose `parity` report says how close they are; it raises `ParityError` (an `ExportError`,
carrying the report) when they are not close enough, and `ExportError` when conversion is impossible.
Plain functions: no I/O beyond what is passed in; torch, lightgbm and onnxmltools are imported only when a
model of theirs is converted or predicted, so importing it stays cheap.

The ONNX graph contract (what serving relies on), for both frameworks:
  * opset: ai.onnx `opset` (DEFAULT_OPSET = 15, the highest onnxmltools 1.16 converts LightGBM to; the
    PyTorch exporter writes it directly), plus ai.onnx.ml 1 for LightGBM's tree ensembles.
  * one input "input": float32 [N, n_features], raw features in the dataset's column order, NaN where a
    value is missing (handled like the native model: LightGBM's missing-value rules; the MLP uses the mean).
  * exactly one output:
      - classification: "probabilities", float32 [N, K], classes in label-index order (`Split.class_labels`);
        K = 2 for binary ([1 - p, p]). Actual probabilities: rows sum to 1 (softmax/sigmoid are in the graph).
      - regression: "values", float32 [N, 1], in target units.
    LightGBM's "label" output is removed, and with it every node only it needed.

Parity: native and ONNX predictions in `validation_metrics`' shapes (binary: P(class 1) (n,); multiclass:
(n, K); regression: (n,)) are compared element-wise. It passes when every ONNX output is finite and
max_abs_diff <= tolerance * scale, where scale is 1 for classification (probabilities: the tolerance is
absolute) and max(1, max |native value|) for regression: ONNX computes in float32, so a model predicting in
the thousands cannot agree to 1e-4 absolutely, and the tolerance becomes relative to the output's magnitude.
The task metric ("auc" for binary when defined, else "accuracy"; "accuracy" for multiclass; "rmse" for
regression) is reported both ways for people to read; it does not decide the verdict on its own.

Inference runs on onnxruntime's CPU provider, single-threaded, graph optimizations on, logs quiet:
`session_for(onnx_bytes)`, the same session the inference server builds.
"""
from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from domain.vocabulary import Framework, Task
from infra.datasets import Split
from infra.onnx_runtime import session_for
from runners.trainers import validation_metrics

__all__ = [
    "DEFAULT_OPSET", "DEFAULT_TOLERANCE", "INPUT_NAME", "ExportError", "ExportResult", "OnnxModel", "ParityError",
    "check_parity", "convert", "export_onnx", "native_predict", "onnx_predict", "output_name", "session_for",
]

DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 15  # onnxmltools 1.16 converts LightGBM up to 15; torch's exporter supports it too
INPUT_NAME = "input"
# Tasks whose model outputs K class probabilities: an image model (the CNN, pixel rows in) predicts as a multiclass one
_K_CLASSES = (Task.MULTICLASS_CLASSIFICATION, Task.IMAGE_CLASSIFICATION)
_EXPORT_LOCK = threading.Lock()  # torch's TorchScript exporter keeps global state: one export at a time


class ExportError(Exception):
    """The model cannot be converted to ONNX (unsupported model, converter error, graph that does not run)."""


class ParityError(ExportError):
    """The ONNX model converted but does not predict like the native one; `report` is check_parity's."""

    def __init__(self, report: dict) -> None:
        self.report = report
        native, onnx_value = report["metric_native"], report["metric_onnx"]
        metric = f"{report['metric']} native {_fmt(native)} vs onnx {_fmt(onnx_value)}"
        diff, allowed, tolerance = report["max_abs_diff"], report["allowed_abs_diff"], report["tolerance"]
        scale = f" x output scale {_fmt(allowed / tolerance)}" if tolerance and allowed != tolerance else ""
        where = f"{report['non_finite']} non-finite ONNX outputs; the finite ones' " if report["non_finite"] else ""
        super().__init__(
            f"ONNX parity failed on {report['n_rows']} validation rows: {where}max_abs_diff {_fmt(diff)} "
            f"{'>' if diff > allowed else '<='} allowed {_fmt(allowed)} (tolerance {_fmt(tolerance)}{scale}); {metric}"
        )


@dataclass(frozen=True)
class OnnxModel:
    onnx_bytes: bytes
    opset: int  # ai.onnx opset the graph imports
    input_name: str  # always "input"
    input_shape: list  # [None, n_features]
    output_name: str  # "probabilities" (classification, [N, K]) or "values" (regression, [N, 1])


@dataclass(frozen=True)
class ExportResult:
    model: OnnxModel
    parity: dict  # check_parity's report, "passed" True


def output_name(task: str) -> str:
    """The graph output serving reads for `task`."""
    return "values" if task == Task.REGRESSION else "probabilities"


# ---- conversion -----------------------------------------------------------------------------
def convert(framework: str, task: str, model_bytes: bytes, n_features: int, opset: int = DEFAULT_OPSET) -> OnnxModel:
    """The ONNX graph of a trainer's model (see the module docstring for its contract). Raises ExportError.

    Deterministic: the same model bytes give the same ONNX bytes."""
    if task not in set(Task):
        raise ExportError(f"unknown task {str(task)[:40]!r}; expected one of {', '.join(Task)}")
    if framework == Framework.LIGHTGBM:
        model = _convert_lightgbm(task, model_bytes, n_features, opset)
    elif framework == Framework.PYTORCH:
        model = _convert_pytorch(task, model_bytes, n_features, opset)
    else:
        raise ExportError(f"cannot export framework {str(framework)[:40]!r}; expected 'lightgbm' or 'pytorch'")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - any checker complaint means we produced a bad graph
        raise ExportError(f"the converted {framework} graph is invalid: {_short(exc)}") from exc
    return OnnxModel(onnx_bytes=model.SerializeToString(), opset=opset, input_name=INPUT_NAME,
                     input_shape=[None, n_features], output_name=output_name(task))


def _convert_lightgbm(task: str, model_bytes: bytes, n_features: int, opset: int) -> onnx.ModelProto:
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        text = model_bytes.decode()
        if not text.startswith("tree\n"):  # LightGBM would print a [Fatal] line before raising
            raise ValueError("no 'tree' header")
        booster = lgb.Booster(model_str=text)
    except Exception as exc:  # noqa: BLE001 - LightGBM raises its own error types for bad text
        raise ExportError(f"not a LightGBM text model: {_short(exc)}") from exc
    objective = _lightgbm_header(text).get("objective", "").split(" ")[0]
    expected = {Task.BINARY_CLASSIFICATION: "binary", Task.MULTICLASS_CLASSIFICATION: "multiclass",
                Task.REGRESSION: "regression"}[task]
    if objective != expected:
        raise ExportError(f"the LightGBM model's objective {objective[:40]!r} does not match task {task}")
    if booster.num_feature() != n_features:
        raise ExportError(f"the LightGBM model takes {booster.num_feature()} features, the dataset has {n_features}")
    try:
        model = convert_lightgbm(booster, name="trainyard", target_opset=opset, zipmap=False,
                                 initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))])
    except Exception as exc:  # noqa: BLE001 - the converter raises anything from RuntimeError to TypeError
        raise ExportError(f"onnxmltools could not convert the LightGBM model: {_short(exc)}") from exc
    produced = "variable" if task == Task.REGRESSION else "probabilities"
    width = {Task.BINARY_CLASSIFICATION: 2, Task.MULTICLASS_CLASSIFICATION: booster.num_model_per_iteration(),
             Task.REGRESSION: 1}[task]
    _keep_only_output(model, produced, output_name(task), width)
    return _at_opset(model, opset)


def _lightgbm_header(text: str) -> dict[str, str]:
    """The `key=value` lines before the first tree of LightGBM's model text."""
    header: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            header[key] = value
    return header


def _convert_pytorch(task: str, model_bytes: bytes, n_features: int, opset: int) -> onnx.ModelProto:
    import torch

    from runners.trainers.cnn_trainer import load_network

    try:
        saved = torch.load(io.BytesIO(model_bytes), map_location="cpu", weights_only=True)
        network = load_network(model_bytes)
    except Exception as exc:  # noqa: BLE001 - unpickling and state-dict errors come in many types
        raise ExportError(f"not a Trainyard PyTorch model: {_short(exc)}") from exc
    if saved.get("task") != task:
        raise ExportError(f"the PyTorch model was trained for {str(saved.get('task'))[:40]!r}, not {task}")
    architecture = saved["architecture"]
    if architecture["n_features"] != n_features:
        raise ExportError(f"the PyTorch model takes {architecture['n_features']} features, "
                          f"the dataset has {n_features}")
    n_outputs = architecture["n_outputs"]
    if (n_outputs < 2) if task in _K_CLASSES else (n_outputs != 1):
        raise ExportError(f"a {task} model cannot have {n_outputs} outputs")
    width = 2 if task == Task.BINARY_CLASSIFICATION else n_outputs
    name = output_name(task)
    buffer = io.BytesIO()
    try:
        with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's DeprecationWarning, tracer notes
            torch.onnx.export(_serving_head(network, task), (torch.zeros(1, n_features),), buffer, dynamo=False,
                              input_names=[INPUT_NAME], output_names=[name], opset_version=opset,
                              dynamic_axes={INPUT_NAME: {0: "N"}, name: {0: "N"}}, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"torch.onnx.export failed: {_short(exc)}") from exc
    model = onnx.load_from_string(buffer.getvalue())
    _keep_only_output(model, name, name, width)
    return model


def _serving_head(network, task: str):
    """StandardizedMLP with probabilities on top: sigmoid as [1 - p, p] (binary), softmax (multiclass)."""
    import torch
    from torch import nn

    class ServingHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.network(x)
            if task == Task.BINARY_CLASSIFICATION:
                p = torch.sigmoid(out)
                return torch.cat([1 - p, p], dim=1)
            if task in _K_CLASSES:
                return torch.softmax(out, dim=1)
            return out

    return ServingHead().eval()


def _keep_only_output(model: onnx.ModelProto, produced: str, name: str, width: int) -> None:
    """Make `produced` the graph's only output, named `name`, shape [N, width]; drop nodes nothing needs."""
    graph = model.graph
    if produced not in [o.name for o in graph.output]:
        raise ExportError(f"the converter produced no {produced!r} output (got {[o.name for o in graph.output]})")
    if produced != name:
        for node in graph.node:
            node.input[:] = [name if i == produced else i for i in node.input]
            node.output[:] = [name if o == produced else o for o in node.output]
        next(o for o in graph.output if o.name == produced).name = name
    kept = [o for o in graph.output if o.name == name]
    del graph.output[:]
    graph.output.extend(kept)
    needed, nodes = {name}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
    nodes.reverse()
    del graph.node[:]
    graph.node.extend(nodes)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]
    for value, dims in ((graph.input[0], None), (graph.output[0], width)):
        shape = value.type.tensor_type.shape
        if dims is not None:
            del shape.dim[:]
            shape.dim.add()
            shape.dim.add().dim_value = dims
        shape.dim[0].Clear()
        shape.dim[0].dim_param = "N"


def _at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` with its ai.onnx opset raised to `opset` (onnxmltools imports only the lowest one it needs)."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current != opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"cannot express the converted graph in opset {opset}: {_short(exc)}") from exc
    model.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(list(model.opset_import)))
    return model


# ---- prediction -----------------------------------------------------------------------------
def native_predict(framework: str, task: str, model_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """The native model's predictions in `validation_metrics`' shape: P(class 1) (n,), (n, K)
    probabilities or (n,) values; float64."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if framework == Framework.LIGHTGBM:
        import lightgbm as lgb

        model = lgb.Booster(model_str=model_bytes.decode())
        return np.asarray(model.predict(X, num_threads=1), dtype=np.float64)  # one thread: runners share cores
    if framework == Framework.PYTORCH:
        import torch

        from runners.trainers.cnn_trainer import load_network
        from runners.trainers.pytorch_trainer import predict

        shaped = Task.MULTICLASS_CLASSIFICATION if task in _K_CLASSES else task
        return predict(load_network(model_bytes), torch.from_numpy(X), shaped)  # as the trainer measured it
    raise ExportError(f"cannot predict with framework {str(framework)[:40]!r}")


def onnx_predict(onnx_bytes_or_session: bytes | ort.InferenceSession, task: str, X: np.ndarray) -> np.ndarray:
    """The ONNX model's predictions in `validation_metrics`' shape (float32, as onnxruntime computes them)."""
    session = (onnx_bytes_or_session if isinstance(onnx_bytes_or_session, ort.InferenceSession)
               else session_for(onnx_bytes_or_session))
    (out,) = session.run([output_name(task)], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})
    if task == Task.BINARY_CLASSIFICATION:
        return out[:, 1]
    if task in _K_CLASSES:
        return out
    return out.reshape(-1)


# ---- parity ---------------------------------------------------------------------------------
def check_parity(framework: str, task: str, model_bytes: bytes, onnx_model: OnnxModel, X: np.ndarray,
                 y: np.ndarray, tolerance: float) -> dict:
    """Compare the native model and `onnx_model` on (X, y); the report (JSON-safe, no NaN or inf):

    {"max_abs_diff", "allowed_abs_diff" (tolerance * scale, see the module docstring), "tolerance", "n_rows",
     "non_finite" (ONNX output elements that are NaN/inf), "metric", "metric_native", "metric_onnx" (None where
     undefined: a non-finite output, "probabilities" outside [0, 1]), "passed"}.
    Raises ExportError if onnxruntime cannot run the graph or it predicts another shape than the native model."""
    if len(X) == 0:
        raise ExportError("no rows to check ONNX parity on")
    native = native_predict(framework, task, model_bytes, X)
    try:
        got = onnx_predict(session_for(onnx_model.onnx_bytes), task, X)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are of its own types
        raise ExportError(f"onnxruntime cannot run the converted model: {_short(exc)}") from exc
    if got.shape != native.shape:
        raise ExportError(f"the ONNX model predicts shape {got.shape}, the native model {native.shape}")
    finite = np.isfinite(got)
    diff = np.abs(got.astype(np.float64) - native)
    max_abs_diff = float(diff[finite].max()) if finite.any() else 0.0
    scale = max(1.0, float(np.abs(native[np.isfinite(native)]).max(initial=0.0))) if task == Task.REGRESSION else 1.0
    metric = {Task.REGRESSION: "rmse", Task.MULTICLASS_CLASSIFICATION: "accuracy",
              Task.IMAGE_CLASSIFICATION: "accuracy"}.get(
        task, "auc" if len(np.unique(y)) == 2 else "accuracy")
    non_finite = int((~finite).sum())
    allowed = tolerance * scale
    return {
        "max_abs_diff": max_abs_diff, "allowed_abs_diff": allowed, "tolerance": float(tolerance),
        "n_rows": int(len(X)), "non_finite": non_finite, "metric": metric,
        "metric_native": _metric(task, y, native, metric),
        "metric_onnx": _metric(task, y, got, metric) if not non_finite else None,
        "passed": bool(non_finite == 0 and max_abs_diff <= allowed),
    }


def _metric(task: str, y: np.ndarray, predicted: np.ndarray, metric: str) -> float | None:
    """`metric` of `predicted`; None where it is undefined (say, "probabilities" outside [0, 1])."""
    try:
        value = validation_metrics(task, y, predicted).get(metric)
    except ValueError:
        return None
    return float(value) if value is not None and math.isfinite(value) else None


def export_onnx(framework: str, task: str, model_bytes: bytes, split: Split, tolerance: float = DEFAULT_TOLERANCE,
                opset: int = DEFAULT_OPSET,
                converter: Callable[[str, str, bytes, int, int], OnnxModel] = convert) -> ExportResult:
    """Convert with `converter` and check parity on the validation split. Raises ExportError if the model
    cannot be converted, ParityError (report attached) if the ONNX model does not predict like the native one. A
    forecaster is converted as the regression model of its features it is (`Task.model_task`)."""
    task = Task(task).model_task
    onnx_model = converter(framework, task, model_bytes, split.X_valid.shape[1], opset)
    report = check_parity(framework, task, model_bytes, onnx_model, split.X_valid, split.y_valid, tolerance)
    if not report["passed"]:
        raise ParityError(report)
    return ExportResult(model=onnx_model, parity=report)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
