"""A code job as a runner runs it: unpack its bundle into a fresh work dir, run the script in the sandbox
(runners/code_sandbox.py `run_code`) and turn what it says into what built-in trainers produce.

The bundle is found in the job's project under `code_root` and checked against the sha256 the job recorded at
submit (bundles are immutable; a mismatch fails the job). Its dataset, when it has one, is the file itself (read
only by the script), or for a `builtin://` dataset a CSV of it written into the work dir (feature columns in the
dataset's order, then `target`). The sink maps the SDK's calls: metrics and progress to the `JobReporter`, output
lines and sandbox notes to the job's logs, `report(value, step)` to the study's intermediate objective, the
ONNX file of `save_model` becomes the job's artifact (format "onnx", feature names and class labels recorded),
and the files of `log_artifact` are stored beside it and listed on the job's Completed event (at most
MAX_JOB_ARTIFACTS names and MAX_ARTIFACTS_BYTES in all: past that, a warning in its logs, not a failure).
The outcome is a runner report: completed (with the model, or without one when the script saved none), failed
with the sandbox's error (its traceback is in the logs, from stderr), or cancelled. The work dir is removed
afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from domain.contract import EVALUATION_ARTIFACT, MAX_JOB_ARTIFACTS, printable
from domain.search_space import CODE_OBJECTIVE_SERIES
from infra.code_bundles import BundleError, BundleLimits, get_bundle, unpack_bundle
from infra.datasets import dataset_digest
from runners.artifacts import ArtifactStore
from runners.code_channel import CodeSink
from runners.code_evaluation import code_model_report
from runners.code_sandbox import CodeRun, Resources, run_code
from runners.log_capture import JobLogs, level_of
from runners.reporting import JobReporter


MAX_ARTIFACTS_BYTES = 1 << 30  # all the files one job keeps with run.log_artifact (each is also under RLIMIT_FSIZE)


class JobSink(CodeSink):
    """A code job's SDK calls as a built-in trainer's reports and log lines."""

    def __init__(self, reporter: JobReporter, logs: JobLogs,
                 checkpoint: Callable[[int, Path], None] | None = None) -> None:
        self.reporter, self.logs, self.checkpoint = reporter, logs, checkpoint
        self.model: tuple[Path, list[str] | None, list[Any] | None] | None = None
        self.validation: Path | None = None  # the rows the script says its model was validated on (CSV)
        self.artifacts: dict[str, Path] = {}  # name -> the runner's copy; a name logged again replaces its file
        self._artifact_bytes: dict[str, int] = {}

    def on_artifact(self, name: str, path: Path) -> None:
        size = path.stat().st_size
        total = sum(self._artifact_bytes.values()) - self._artifact_bytes.get(name, 0) + size
        if name not in self.artifacts and len(self.artifacts) >= MAX_JOB_ARTIFACTS:
            self.logs.note("warning", f"artifact {name!r} not kept: at most {MAX_JOB_ARTIFACTS} artifacts a job")
        elif total > MAX_ARTIFACTS_BYTES:
            self.logs.note("warning", f"artifact {name!r} not kept: a job's artifacts may hold at most "
                                      f"{MAX_ARTIFACTS_BYTES:,} bytes in all")
        else:
            self.artifacts[name], self._artifact_bytes[name] = path, size

    def on_checkpoint(self, step: int, path: Path) -> None:
        if self.checkpoint is not None:  # kept as the job's (the runner's checkpoint store): a later run resumes
            self.checkpoint(step, path)

    def on_metrics(self, step: int, metrics: dict[str, float], ts_ms: int) -> None:
        self.reporter.points(step, metrics)

    def on_progress(self, step: int, total: int) -> None:
        self.reporter.progress(step, total)

    def on_model(self, path: Path, feature_names: list[str] | None, class_labels: list[Any] | None,
                 validation: Path | None = None) -> None:
        self.model = (path, feature_names, class_labels)  # the last one saved is the job's model
        self.validation = validation

    def on_output_line(self, stream: str, text: str) -> None:
        self.logs.add(level_of(stream, text), stream, text)

    def on_note(self, level: str, text: str) -> None:
        self.logs.note(level, text)

    def on_report(self, value: float, step: int) -> bool:
        self.reporter.points(step, {CODE_OBJECTIVE_SERIES: value})  # kept: a rebuilt pruner reads it back
        self.reporter.objective(step, value)
        return False  # the study's answer comes back as a cancel on the stop flag (SIGTERM after a grace)


def run_code_job(job_id: str, attempt: int, spec: dict[str, Any], reporter: JobReporter, logs: JobLogs,
                 artifacts: ArtifactStore, code_root: Path, limits: BundleLimits, dataset_roots: Sequence[Path],
                 resume_from: Path | None = None, checkpoint: Callable[[int, Path], None] | None = None,
                 gpus: tuple[int, ...] = ()) -> dict[str, Any]:
    """Run the code job `spec` (TrainingJob.spec of a code job) to its end; the runner report it makes.
    `resume_from`: the checkpoint its script finds as `run.latest_checkpoint()`; `checkpoint(step, file)`: keeps
    what it saves with `run.save_checkpoint`; `gpus`: the devices the runner gave it (its CUDA_VISIBLE_DEVICES;
    none: no GPU visible)."""
    code = spec["code"]
    bundle = get_bundle(code_root, spec["project"], code["code_id"])
    if bundle is None or bundle.sha256 != code["sha256"]:
        return {"type": "failed", "error": f"code bundle {code['code_id']} is no longer stored as submitted"}
    base = Path(tempfile.mkdtemp(prefix=f"trainyard-code-{job_id[:8]}-"))
    try:
        os.chmod(base, 0o755)  # the script's own uid reaches its code and data, lists nothing else of ours
        try:
            unpack_bundle(bundle.path, base / "code", limits)
        except BundleError as e:
            return {"type": "failed", "error": printable(f"code bundle {code['code_id']}: {e.reason}")}
        _readable(base / "code")
        dataset = spec.get("dataset") or {}
        data_path = _dataset_file(dataset, base, dataset_roots) if dataset.get("uri") else None
        res = spec.get("resources") or {}
        run = CodeRun(code_dir=base / "code", entrypoint=code["entrypoint"], work_dir=base / "work",
                      args=tuple(code.get("args") or ()), params=spec.get("params") or {}, dataset_path=data_path,
                      resources=Resources(cpus=int(res.get("cpus", 1)), memory_mb=int(res.get("memory_mb", 2048)),
                                          gpus=tuple(gpus)),
                      timeout_s=float(spec.get("timeout_s") or 3600), run_id=f"{job_id}:{attempt}",
                      resume_from=resume_from)
        (base / "work").mkdir()
        sink = JobSink(reporter, logs, checkpoint)
        outcome = run_code(run, sink, reporter.stop_flag)
        if outcome.status == "cancelled":
            return {"type": "cancelled"}
        if outcome.status == "failed":
            return {"type": "failed", "error": printable(outcome.error or "the script failed"), "traceback": True}
        artifact = _model_artifact(job_id, attempt, sink, artifacts, spec, dataset_roots)
        kept = [{"name": name, "uri": a.uri, "sha256": a.sha256, "size_bytes": a.size_bytes}
                for name, path in sink.artifacts.items() for a in [artifacts.put_file(job_id, attempt, path)]]
        report = _evaluation(sink, spec, base, logs)
        if report is not None:  # ours first: GET …/evaluation serves the first evaluation.json listed
            a = artifacts.put_file(job_id, attempt, report)
            kept.insert(0, {"name": EVALUATION_ARTIFACT, "uri": a.uri, "sha256": a.sha256, "size_bytes": a.size_bytes})
        return {"type": "completed", "final_metrics": outcome.final_metrics, "artifact": artifact,
                "artifacts": kept}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _evaluation(sink: JobSink, spec: dict[str, Any], base: Path, logs: JobLogs) -> Path | None:
    """The evaluation report of the saved model on the rows the script declared (a JSON file), or None: no model,
    no rows, or rows that cannot be evaluated (the log says why; the job still completes)."""
    if sink.model is None or sink.validation is None:
        return None
    path, features, classes = sink.model
    try:
        report = code_model_report(path.read_bytes(), spec["task"], sink.validation, classes, features)
    except Exception as e:  # noqa: BLE001 - the script's rows or graph: no report, the job stands
        logs.note("warning", printable(f"no evaluation report: {type(e).__name__}: {e}", 500))
        return None
    out = base / "evaluation.json"
    out.write_text(json.dumps(report, separators=(",", ":"), allow_nan=False))
    return out


def _model_artifact(job_id: str, attempt: int, sink: JobSink, artifacts: ArtifactStore, spec: dict[str, Any],
                    dataset_roots: Sequence[Path]) -> dict[str, Any]:
    """The saved ONNX model as the job's artifact, with the code it came from (lineage); {} without a model."""
    if sink.model is None:
        return {}
    path, features, classes = sink.model
    art = artifacts.put(job_id, attempt, path.read_bytes(), "onnx")
    code = spec["code"]
    artifact: dict[str, Any] = {"uri": art.uri, "sha256": art.sha256, "size_bytes": art.size_bytes, "format": "onnx",
                                "feature_names": features, "code_sha256": code["sha256"],
                                "entrypoint": code["entrypoint"]}
    if classes is not None:
        artifact["class_labels"] = [str(c) for c in classes]
    uri = (spec.get("dataset") or {}).get("uri")
    if uri:
        try:
            artifact["dataset_sha256"] = dataset_digest(uri, dataset_roots)
        except Exception:  # noqa: BLE001 - lineage is best effort, as for built-in trainers
            pass
    return artifact


def _dataset_file(dataset: dict[str, Any], base: Path, roots: Sequence[Path]) -> Path:
    """The file the script reads: the dataset's own, or a builtin written out as CSV."""
    uri = str(dataset["uri"])
    if not uri.startswith("builtin://"):
        from infra.dataset_files import resolve_file_uri

        return resolve_file_uri(uri, roots)
    import pandas as pd

    from infra.datasets import _load_builtin

    X, y, names, labels = _load_builtin(uri.removeprefix("builtin://"))
    frame = pd.DataFrame(X, columns=names)
    frame["target"] = [labels[int(v)] for v in y] if labels else y
    out = base / "dataset.csv"
    frame.to_csv(out, index=False)
    os.chmod(out, 0o644)
    return out


def _readable(root: Path) -> None:
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                os.chmod(path, 0o644)

