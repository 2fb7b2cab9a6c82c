"""The export of a model a code job saved as ONNX: validated, not converted.

`validate_onnx(onnx_bytes, task, rows, y, tolerance)` loads the script's graph with onnxruntime, checks that it
takes one float32 input [N, n_features], runs it on `rows` (the dataset's validation rows where their width fits
the graph; else seeded random rows, so a graph without data behind it is still run), and finds the output that
serves the task: classification, a float [N, K] tensor (K >= 2; K = 2 for binary) of probabilities (finite, in
[0, 1], rows summing to 1; an output named like "prob…" first); regression, a float [N, 1] or [N] tensor. That
output becomes the graph's only one, named as the converter's graph contract says ("probabilities" or "values",
runners/onnx_converter.py), so deploy, serve and A/B treat it like any exported model; the rewritten graph is
run again and must give the same numbers (the parity report, "native" being the script's graph). Other outputs
(skl2onnx's labels, ZipMap's dictionaries) are dropped. `ExportError` says what does not fit.
"""
from __future__ import annotations

import numpy as np
import onnx

from domain.vocabulary import Task
from runners.onnx_converter import (ExportError, ExportResult, OnnxModel, ParityError, _keep_only_output, _metric,
                                    _short, output_name, session_for)

SAMPLE_ROWS = 256


def validate_onnx(onnx_bytes: bytes, task: str, rows: np.ndarray | None, y: np.ndarray | None,
                  tolerance: float) -> ExportResult:
    try:
        session = session_for(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are of its own types
        raise ExportError(f"onnxruntime cannot load the model: {_short(exc)}") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 2:
        shown = [(i.name, i.type, i.shape) for i in inputs]
        raise ExportError(f"the model must take one float32 input [N, n_features]; it takes {shown}")
    width = inputs[0].shape[1]
    if not isinstance(width, int):
        width = rows.shape[1] if rows is not None else None
    if width is None:
        raise ExportError("the model's input has no fixed width and there are no rows to learn it from")
    on_data = rows is not None and rows.shape[1] == width and len(rows) > 0
    X = (np.ascontiguousarray(rows, dtype=np.float32) if on_data
         else np.random.default_rng(0).normal(size=(SAMPLE_ROWS, width)).astype(np.float32))
    try:
        outputs = session.run(None, {inputs[0].name: X})
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnxruntime cannot run the model on {len(X)} rows of {width} features: "
                          f"{_short(exc)}") from exc
    names = [o.name for o in session.get_outputs()]
    chosen, value = _serving_output(task, names, outputs, len(X))
    model = onnx.load_from_string(onnx_bytes)
    served = output_name(task)
    _keep_only_output(model, chosen, served, value.shape[1] if value.ndim == 2 else 1)
    rewritten = model.SerializeToString()
    try:
        (again,) = session_for(rewritten).run([served], {inputs[0].name: X})
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the model with only its {chosen!r} output does not run: {_short(exc)}") from exc
    report = _report(task, value, again, y if on_data else None, len(X), tolerance)
    report["rows"] = "validation" if on_data else "random"
    if not report["passed"]:
        raise ParityError(report)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(model=OnnxModel(onnx_bytes=rewritten, opset=opset, input_name=inputs[0].name,
                                        input_shape=[None, width], output_name=served), parity=report)


def _serving_output(task: str, names: list[str], outputs: list, n: int) -> tuple[str, np.ndarray]:
    """The output that serves `task` (see the module docstring)."""
    candidates = []
    for name, out in zip(names, outputs):
        if not isinstance(out, np.ndarray) or out.dtype.kind != "f" or len(out) != n:
            continue
        if task == Task.REGRESSION and (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
            candidates.append((name, out))
        elif task != Task.REGRESSION and out.ndim == 2 and _probabilities(out, task):
            candidates.append((name, out))
    if not candidates:
        want = ("a float [N, 1] output of values" if task == Task.REGRESSION else
                "a float [N, K] output of class probabilities (rows summing to 1" +
                (", K = 2)" if task == Task.BINARY_CLASSIFICATION else ")"))
        raise ExportError(f"the model has no output fit to serve {task}: want {want}; it has {names}")
    candidates.sort(key=lambda c: "prob" not in c[0].lower())
    return candidates[0]


def _probabilities(out: np.ndarray, task: str) -> bool:
    if out.shape[1] < 2 or (task == Task.BINARY_CLASSIFICATION and out.shape[1] != 2):
        return False
    return bool(np.isfinite(out).all() and (out >= -1e-6).all() and (out <= 1 + 1e-6).all()
                and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def _report(task: str, native: np.ndarray, served: np.ndarray, y: np.ndarray | None, n: int,
            tolerance: float) -> dict:
    native, served = native.astype(np.float64).reshape(served.shape), served.astype(np.float64)
    finite = np.isfinite(served)
    diff = float(np.abs(served - native)[finite].max()) if finite.any() else 0.0
    metric = {Task.REGRESSION: "rmse", Task.MULTICLASS_CLASSIFICATION: "accuracy"}.get(task, "accuracy")

    def score(p: np.ndarray) -> float | None:
        if y is None:
            return None
        shaped = p[:, 1] if task == Task.BINARY_CLASSIFICATION else p.reshape(-1) if task == Task.REGRESSION else p
        return _metric(task, y, shaped, metric)

    non_finite = int((~finite).sum())
    return {"max_abs_diff": diff, "allowed_abs_diff": float(tolerance), "tolerance": float(tolerance), "n_rows": n,
            "non_finite": non_finite, "metric": metric if y is not None else None, "metric_native": score(native),
            "metric_onnx": score(served), "passed": bool(non_finite == 0 and diff <= tolerance)}
