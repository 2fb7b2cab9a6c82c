"""The evaluation report of a model a code job saved as ONNX, on the rows its script declared it was validated on
(`run.save_model(..., validation=(X, y))`: a CSV of x0..xN-1 and `target`).

The graph runs under onnxruntime on those rows; its serving output is chosen as the export's validation chooses it
(runners/onnx_validation.py), and the report is the one a built-in trainer's job gets (runners/trainers/evaluation.py)
with permutation importance. Rows are named by their position in the declared rows. A report that cannot be made
(rows that do not fit the graph, targets that are not its classes) raises `ValueError` with the reason: the job
still completes, its log says why it has no report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from domain.vocabulary import Task
from runners.onnx_converter import session_for
from runners.onnx_validation import _serving_output
from runners.trainers.evaluation import evaluation_report, named, permutation_importance

MAX_ROWS = 100_000


def code_model_report(onnx_bytes: bytes, task: str, rows_csv: Path, class_labels: list[Any] | None,
                      feature_names: list[str] | None) -> dict[str, Any]:
    import pandas as pd

    frame = pd.read_csv(rows_csv, nrows=MAX_ROWS + 1)
    if len(frame) > MAX_ROWS or len(frame) == 0 or "target" not in frame.columns:
        raise ValueError(f"the declared validation rows must be 1 to {MAX_ROWS:,} rows with a target")
    X = frame.drop(columns=["target"]).to_numpy(dtype=np.float32)
    session = session_for(onnx_bytes)
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def predict(rows: np.ndarray) -> np.ndarray:
        _, value = _serving_output(task, outputs, session.run(None, {name: np.ascontiguousarray(rows)}), len(rows))
        value = value.astype(np.float64)
        if Task(task).is_classification:
            return value[:, 1] if task == Task.BINARY_CLASSIFICATION else value
        return value.reshape(-1)

    predicted = predict(X)
    labels = [str(c) for c in class_labels] if class_labels else None
    y = _targets(frame["target"], task, labels, predicted)
    names = feature_names if feature_names and len(feature_names) == X.shape[1] else [f"x{i}" for i in range(X.shape[1])]
    importance = named(permutation_importance(predict, X, y, task), names)
    return evaluation_report(task, {"validation": (y, predicted, np.arange(len(y)))}, labels, importance=importance,
                             importance_kind="permutation")


def _targets(column: Any, task: str, labels: list[str] | None, predicted: np.ndarray) -> np.ndarray:
    if not Task(task).is_classification:
        return column.to_numpy(dtype=np.float64)
    k = 2 if predicted.ndim == 1 else predicted.shape[1]
    known = labels or [str(i) for i in range(k)]
    if len(known) != k:
        raise ValueError(f"the model outputs {k} classes, its class_labels name {len(known)}")
    index = {label: i for i, label in enumerate(known)}
    text = column.astype(str)
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"validation targets {unknown[:5]} are none of the model's classes {known[:10]}")
    return text.map(index).to_numpy(dtype=np.int64)
