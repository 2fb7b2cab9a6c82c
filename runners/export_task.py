"""An export as a runner runs it: fetch the version's model (checked against its sha256), load the validation split
it was trained with, convert and check parity (runners/onnx_converter.py), store the ONNX file, and say how it went.

A model a code job saved is already ONNX: it is validated instead (runners/onnx_validation.py), on the validation
split of its dataset when it has one, else on random rows of the graph's width.

The outcome is a runner report: `completed` with the ONNX artifact (uri, sha256, opset, input/output names,
n_features, the parity metric's name) and the parity figures as its final metrics, or `failed` with the figures
in the error when the outputs differ by more than the export's tolerance.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from domain.contract import printable
from domain.vocabulary import Task
from infra.datasets import Split, load_dataset
from infra.forecasting import forecast_split
from runners.artifacts import ArtifactStore
from runners.trainers import Reporter, TrainingCancelled


def _validation_split(spec: dict[str, Any], dataset_roots: Sequence[Path]) -> Split | None:
    """The split the model was trained with (a forecaster's: its featurised windows), None without a dataset."""
    dataset = spec.get("dataset") or {}
    if not dataset.get("uri"):
        return None
    if spec["task"] == Task.FORECASTING:
        return forecast_split(dataset, dataset_roots).split
    return load_dataset(dataset["uri"], dataset.get("target"), spec["task"], seed=0, roots=dataset_roots)


def run_export(export_id: str, attempt: int, spec: dict[str, Any], artifacts: ArtifactStore,
               dataset_roots: Sequence[Path], reporter: Reporter) -> dict[str, Any]:
    from runners.onnx_converter import ExportError, export_onnx

    try:
        source = spec["artifact"]
        model_bytes = artifacts.get(source["uri"])
        if hashlib.sha256(model_bytes).hexdigest() != source["sha256"]:
            return {"type": "failed", "error": f"the model artifact {source['uri']} no longer matches its sha256"}
        if reporter.should_stop():
            raise TrainingCancelled()
        split = _validation_split(spec, dataset_roots)
        if reporter.should_stop():
            raise TrainingCancelled()
        if source.get("format") == "onnx":  # the user's own model (a code job): validate, do not convert
            from runners.onnx_validation import validate_onnx

            result = validate_onnx(model_bytes, spec["task"], split.X_valid if split else None,
                                   split.y_valid if split else None, tolerance=spec["tolerance"])
        elif split is None:
            return {"type": "failed", "error": "the model's job has no dataset to check the export on"}
        else:
            result = export_onnx(spec["framework"], spec["task"], model_bytes, split, tolerance=spec["tolerance"])
    except TrainingCancelled:
        return {"type": "cancelled"}
    except ExportError as e:
        return {"type": "failed", "error": printable(e)}
    except Exception as e:  # a missing artifact, an unreadable dataset: the export fails, the runner lives
        return {"type": "failed", "error": printable(f"{type(e).__name__}: {e}")}
    onnx = result.model
    art = artifacts.put(export_id, attempt, onnx.onnx_bytes, "onnx")
    parity = result.parity
    artifact = {"uri": art.uri, "sha256": art.sha256, "size_bytes": art.size_bytes, "format": "onnx",
                "opset": onnx.opset, "input_name": onnx.input_name, "output_name": onnx.output_name,
                "n_features": int(onnx.input_shape[1]), "parity_metric": str(parity["metric"]) if parity["metric"] else None}
    if "rows" in parity:
        artifact["validated_on"] = f"{parity['rows']} rows"
    figures = {k: float(parity[k]) for k in ("max_abs_diff", "n_rows", "tolerance", "metric_native", "metric_onnx")
               if parity[k] is not None}
    return {"type": "completed", "final_metrics": figures, "artifact": artifact}
