"""A retrain's champion: the deployed version's ONNX model scored on the new job's own test split, so a gate compares
the candidate and the champion on the same rows (domain/retrain.py).

The split is made again exactly as the trainer made it (`load_dataset` is deterministic given the uri, target, task,
seed and validation), and the champion is run through onnxruntime as the inference server runs it. Its figures go
into the job's final metrics as `champion_test_<metric>` and into the evaluation report as `champion`. A champion
that cannot be compared (features or classes other than the new data's, a missing artifact) adds no figures and the
report says why: the gate then fails on a `max_regression` rather than compare different things.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from domain.contract import printable
from domain.validation import Validation
from domain.vocabulary import Task
from runners.artifacts import ArtifactStore
from runners.trainers import TrainResult, TrainSpec, validation_metrics

TABULAR = (Task.BINARY_CLASSIFICATION, Task.MULTICLASS_CLASSIFICATION, Task.REGRESSION)


class NotComparable(Exception):
    """The champion cannot be scored on this job's test rows; the message says why."""


def with_champion(spec: TrainSpec, champion: dict[str, Any], result: TrainResult, artifacts: ArtifactStore,
                  roots: Sequence[Path]) -> TrainResult:
    """`result` with the champion's test-split figures added (or, in its report, why there are none)."""
    try:
        figures = champion_figures(spec, champion, result, artifacts, roots)
        section: dict[str, Any] = {"model": champion.get("model"), "version": champion.get("version"),
                                   "metrics": figures}
        extra = {f"champion_test_{k}": v for k, v in figures.items()}
    except NotComparable as e:
        section, extra = {"model": champion.get("model"), "version": champion.get("version"), "error": str(e)}, {}
    except Exception as e:  # the champion's trouble is never the candidate's failure: the gate says it
        section = {"model": champion.get("model"), "version": champion.get("version"),
                   "error": printable(f"{type(e).__name__}: {e}", 300)}
        extra = {}
    evaluation = {**result.evaluation, "champion": section} if result.evaluation is not None else None
    return replace(result, final_metrics={**result.final_metrics, **extra}, evaluation=evaluation)


def champion_figures(spec: TrainSpec, champion: dict[str, Any], result: TrainResult, artifacts: ArtifactStore,
                     roots: Sequence[Path]) -> dict[str, float]:
    from infra.datasets import load_dataset
    from runners.onnx_converter import onnx_predict

    if spec.task not in TABULAR:
        raise NotComparable(f"a {spec.task} model is not compared with its deployed version")
    theirs, ours = list(champion.get("feature_names") or []), list(result.feature_names)
    if theirs != ours:
        raise NotComparable(_difference("features", theirs, ours))
    if spec.task != Task.REGRESSION and list(champion.get("class_labels") or []) != list(result.class_labels or []):
        raise NotComparable(_difference("classes", list(champion.get("class_labels") or []),
                                        list(result.class_labels or [])))
    split = load_dataset(spec.dataset_uri, spec.target, spec.task, seed=spec.seed, roots=roots,
                         validation=Validation.parse(spec.validation))
    if not split.has_test:
        raise NotComparable("the job has no test split")
    onnx_bytes = artifacts.get(champion["uri"])
    if hashlib.sha256(onnx_bytes).hexdigest() != champion.get("sha256"):
        raise NotComparable(f"the deployed artifact {champion['uri']} no longer matches its sha256")
    predicted = onnx_predict(onnx_bytes, spec.task, split.X_test)
    return validation_metrics(spec.task, split.y_test, predicted)


def _difference(what: str, theirs: list[Any], ours: list[Any]) -> str:
    gone, new = [x for x in theirs if x not in ours], [x for x in ours if x not in theirs]
    parts = (f"only the deployed version's: {', '.join(map(str, gone[:5]))}" if gone else "",
             f"only the new data's: {', '.join(map(str, new[:5]))}" if new else "")
    detail = "; ".join(part for part in parts if part)
    return (f"the deployed version's {what} ({len(theirs)}) differ from the new data's ({len(ours)})"
            + (f": {detail}" if detail else ": the same names in another order"))
