"""The training script's side of a Trainyard code job: `run = ty.init()`, then log, checkpoint, report, finish.

    import trainyard.sdk as ty

    with ty.init(params={"lr": 0.01}) as run:      # the job's params win over these defaults
        for epoch in range(run.params.get("epochs", 10)):
            if run.should_stop():                   # cancelled, timed out or pruned: save and leave
                break
            run.log({"loss": loss}, step=epoch)     # ~1 µs, never blocks: a thread ships the points
        run.finish(metrics={"auc": auc})

Under Trainyard (the runner set TRAINYARD_CHANNEL_FD and TRAINYARD_RUN_FILE) the run talks to the runner only over
the inherited socket, one JSON object a line (`{"t": kind, ...}`): the script sends `metrics` (batched points),
`progress`, `params`, `report`, `checkpoint`, `artifact`, `model` and `finish`; the runner sends `stop`, which a
reader thread turns into the flag `should_stop()` returns. The run file says the params, dataset, directories and
run id. SIGTERM (cancel, timeout) sets the same flag when the script has asked `should_stop()` at least once, so
it can checkpoint and leave within the grace period; a script that never asks ends at SIGTERM as it would without
the SDK.

Offline (`python train.py` anywhere, no channel) the same calls work on a local run: params from TRAINYARD_PARAMS
(JSON) over `init(params=...)`, the dataset from TRAINYARD_DATASET or `init(dataset_path=...)`, and everything is
written under `./trainyard-runs/<run id>/` (or TRAINYARD_RUNS_DIR): `metrics.jsonl` (one line a `log` call),
`params.json`, `events.jsonl` (progress, reports, checkpoints, artifacts, model, finish), `summary.json`,
`output/` and `checkpoints/`.

Bounds, as for built-in metrics: a metric name is 1–200 characters without control characters, at most 1,000
names a run (100 in `finish`); a value is a finite number (int, float, or anything with `__float__`, e.g. a NumPy
scalar): NaN and ±inf raise ValueError at the call, since a silently missing point is harder to find than a loud
one. At most MAX_BUFFERED points wait to be shipped; beyond that (the runner not reading) points are dropped, with
one warning, and training goes on.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

ENV_CHANNEL = "TRAINYARD_CHANNEL_FD"
ENV_RUN_FILE = "TRAINYARD_RUN_FILE"
ENV_PARAMS = "TRAINYARD_PARAMS"
ENV_DATASET = "TRAINYARD_DATASET"
ENV_RUNS_DIR = "TRAINYARD_RUNS_DIR"
MAX_NAME = 200
MAX_NAMES = 1000
MAX_FINAL_NAME, MAX_FINAL_NAMES = 100, 100
MAX_BUFFERED = 200_000  # points waiting to be shipped
MAX_PARAMS_BYTES = 64 * 1024  # of one log_params call, as JSON
MAX_LABELS = 10_000  # feature names or class labels of a model
MAX_VALIDATION_ROWS = 100_000  # rows a model's declared validation data may have
FLUSH_S = 0.25
FLUSH_POINTS = 5_000  # a batch this big is shipped at once rather than at the next tick
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")
_CHECKPOINT = re.compile(r"^ckpt-(\d{12})(\.[A-Za-z0-9]+)?$")


def _name(name: Any, limit: int = MAX_NAME) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= limit or _CONTROL.search(name):
        raise ValueError(f"a metric name is a string of 1 to {limit} characters without control characters, "
                         f"not {name!r:.80}")
    return name


def _number(name: str, value: Any) -> float:
    if type(value) is not float:
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            raise ValueError(f"metric {name!r}: {value!r:.80} is not a number")
        try:
            value = float(value)
        except (OverflowError, TypeError, ValueError) as e:
            raise ValueError(f"metric {name!r}: {value!r:.80} is not a finite number") from e
    if not math.isfinite(value):
        raise ValueError(f"metric {name!r} is {value}: values must be finite")
    return value


def _step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= 2**63 - 1:
        raise ValueError(f"a step is an int from 0 to 2**63-1, not {step!r:.80}")
    return step


class _Channel:
    """The inherited socket to the runner: one JSON object a line each way."""

    def __init__(self, fd: int, on_stop: Any) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self._lock = threading.Lock()
        self.broken = False
        threading.Thread(target=self._read, args=(on_stop,), name="trainyard-sdk-channel", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            if self.broken:
                return
            try:
                self.sock.sendall(data)
            except OSError:  # the runner is gone: the job is over whatever the script does
                self.broken = True

    def metrics(self, points: list[tuple[int, int, dict[str, float]]]) -> None:
        self.send({"t": "metrics", "points": points})

    def _read(self, on_stop: Any) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("t") == "stop":
                    on_stop(str(message.get("reason", "stop")))


class _LocalFiles:
    """The offline run's files under `run_dir`."""

    def __init__(self, run_dir: Path, params: dict[str, Any]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.params = run_dir, dict(params)
        self._lock = threading.Lock()
        self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._events = open(run_dir / "events.jsonl", "a", encoding="utf-8")
        self._write_params()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._events.write(json.dumps(message, allow_nan=False) + "\n")
            self._events.flush()
            if message["t"] == "params":
                self.params.update(message["params"])
                self._write_params()
            elif message["t"] == "finish":
                (self.run_dir / "summary.json").write_text(json.dumps(message["metrics"], indent=1))

    def metrics(self, points: list[tuple[int, int, dict[str, float]]]) -> None:
        with self._lock:
            self._metrics.writelines(json.dumps({"step": s, "ts_ms": ts, "metrics": m}) + "\n" for s, ts, m in points)
            self._metrics.flush()

    def _write_params(self) -> None:
        (self.run_dir / "params.json").write_text(json.dumps(self.params, indent=1, default=str))


class Run:
    """One run of the script. `params` (a dict), `dataset_path` (a Path or None; read it, do not write it),
    `output_dir` (the script's to write), `checkpoint_dir`, `run_id`, `offline` (True outside Trainyard).
    `log` and `progress` may be called from any thread; they never block."""

    def __init__(self, *, run_id: str, params: dict[str, Any], dataset_path: str | None, output_dir: Path,
                 checkpoint_dir: Path, transport: _Channel | _LocalFiles, offline: bool) -> None:
        self.run_id, self.params, self.offline = run_id, params, offline
        self.dataset_path = Path(dataset_path) if dataset_path else None
        self.output_dir, self.checkpoint_dir = output_dir, checkpoint_dir
        self.stop_reason: str | None = None
        self._transport = transport
        self._lock = threading.Lock()  # the waiting points
        self._flush_lock = threading.Lock()  # one shipment at a time, in order
        self._points: list[tuple[int, int, dict[str, float]]] = []
        self._waiting = self._dropped = 0
        self._progress: tuple[int, int] | None = None
        self._names: set[str] = set()
        self._next_step = 0
        self._stop = threading.Event()
        self._asked = False  # whether the script ever asked should_stop()
        self._finished = False
        self._in_fork_child = False
        self._wake = threading.Event()
        os.register_at_fork(after_in_child=self._forked)
        threading.Thread(target=self._flush_loop, name="trainyard-sdk-flush", daemon=True).start()
        atexit.register(self._flush)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Records `metrics` ({name: number}) at `step` (default: one past the last step logged)."""
        step = self._next_step if step is None else _step(step)
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            if name not in self._names:
                self._new_name(name)
            clean[name] = _number(name, value)
        self._next_step = step + 1
        if not clean or self._in_fork_child:
            return
        ts_ms = time.time_ns() // 1_000_000
        with self._lock:
            if self._waiting >= MAX_BUFFERED:
                self._dropped += len(clean)
                return
            self._points.append((step, ts_ms, clean))
            self._waiting += len(clean)
            full = self._waiting >= FLUSH_POINTS
        if full:
            self._wake.set()

    def progress(self, step: int, total: int) -> None:
        """Where the script is: shipped with the next batch (only the latest counts)."""
        self._progress = (_step(step), _step(total))

    def should_stop(self) -> bool:
        """True once the job is cancelled, timed out or pruned: save a checkpoint and return. No round trip."""
        self._asked = True
        return self._stop.is_set()

    def report(self, value: float, step: int) -> bool:
        """A study's intermediate objective at `step`, for pruning. Returns should_stop() as of now: a prune
        decision comes back a moment later, so ask should_stop() before the next step."""
        self._send({"t": "report", "value": _number("report", value), "step": _step(step)})
        return self.should_stop()

    def log_params(self, params: dict[str, Any]) -> None:
        """Records more params (JSON values) with the run's."""
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ValueError("params are a dict with string keys")
        size = len(json.dumps(params, allow_nan=False, default=str))
        if size > MAX_PARAMS_BYTES:
            raise ValueError(f"params are at most {MAX_PARAMS_BYTES} bytes as JSON, these {size}")
        self._send({"t": "params", "params": json.loads(json.dumps(params, default=str))})

    def save_checkpoint(self, obj: Any, step: int | None = None, keep: int = 3) -> Path:
        """Saves `obj` as the checkpoint of `step` (default: the last step logged) and returns its path; keeps
        the newest `keep`. `obj` is a path to a file (copied), bytes, or an object (torch.save when PyTorch is
        loaded, else pickle). The runner keeps the latest for a later attempt to resume from."""
        step = max(self._next_step - 1, 0) if step is None else _step(step)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(obj, (str, os.PathLike)):
            source = Path(obj)
            if not source.is_file():
                raise FileNotFoundError(f"no checkpoint file at {source}")
            suffix, write = source.suffix, lambda f: shutil.copyfileobj(open(source, "rb"), f)
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            suffix, write = ".bin", lambda f: f.write(obj)
        elif "torch" in sys.modules:
            suffix, write = ".pt", lambda f: sys.modules["torch"].save(obj, f)
        else:
            suffix, write = ".pkl", lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        suffix = suffix if _SUFFIX.fullmatch(suffix) else ""
        path = self.checkpoint_dir / f"ckpt-{step:012d}{suffix}"
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as f:
            write(f)
        os.replace(partial, path)
        for old in self._checkpoints()[:-max(keep, 1)]:
            old.unlink(missing_ok=True)
        # The points logged so far go first: a run resumed from this checkpoint logs from the next step on, so the
        # runner must hold every step up to it before it keeps the checkpoint.
        self._flush()
        self._send({"t": "checkpoint", "step": step, "path": str(path)})
        return path

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint: this run's, or the one a resumed attempt starts from; None if there is none."""
        found = self._checkpoints()
        return found[-1] if found else None

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None:
        """Keeps the file at `path` (inside output_dir) with the job, as `name` (default: its file name)."""
        source = Path(path).absolute()
        if not source.is_file():
            raise FileNotFoundError(f"no artifact file at {source}")
        self._send({"t": "artifact", "name": _name(name or source.name), "path": str(source)})

    def save_model(self, path: str | os.PathLike, feature_names: list[str] | None = None,
                   class_labels: list[Any] | None = None, validation: tuple[Any, Any] | None = None) -> None:
        """Declares the ONNX file at `path` (inside output_dir) the job's model, with the names of its input
        features in order and, for a classifier, its class labels in output order. `validation`, `(X, y)` (rows of
        numbers and their targets: class labels as in `class_labels`, or values; lists or arrays, at most
        MAX_VALIDATION_ROWS): the rows the model was validated on; the job's evaluation report is computed on them,
        as a built-in trainer's is, and the export checks the ONNX file on them."""
        source = Path(path).absolute()
        if not source.is_file():
            raise FileNotFoundError(f"no model file at {source}")
        for what, values in (("feature_names", feature_names), ("class_labels", class_labels)):
            if values is not None and (not isinstance(values, (list, tuple)) or len(values) > MAX_LABELS):
                raise ValueError(f"{what} is a list of at most {MAX_LABELS} values")
        message = {"t": "model", "path": str(source),
                   "feature_names": [_name(str(n)) for n in feature_names] if feature_names is not None else None,
                   "class_labels": [c if isinstance(c, (int, str)) else str(c) for c in class_labels]
                   if class_labels is not None else None}
        if validation is not None:
            message["validation"] = str(self._validation_file(validation))
        self._send(message)

    def _validation_file(self, validation: tuple[Any, Any]) -> Path:
        """(X, y) written as CSV in output_dir: a header of x0..xN-1 and `target`, one row per row."""
        import csv

        X, y = validation
        rows, labels = list(X), list(y)
        if len(rows) != len(labels) or not rows or len(rows) > MAX_VALIDATION_ROWS:
            raise ValueError(f"validation is (X, y) of 1 to {MAX_VALIDATION_ROWS:,} rows and as many targets")
        out = self.output_dir / f".trainyard-validation-{uuid.uuid4().hex[:8]}.csv"
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle)
            width = len(list(rows[0]))
            writer.writerow([f"x{i}" for i in range(width)] + ["target"])
            for row, label in zip(rows, labels):
                values = [float(v) for v in row]
                if len(values) != width:
                    raise ValueError("validation rows must all have the same width")
                writer.writerow([repr(v) for v in values] + [label.item() if hasattr(label, "item") else label])
        return out

    def finish(self, metrics: dict[str, Any] | None = None) -> None:
        """The run's final metrics (at most 100); ships everything waiting. Later calls do nothing."""
        final = {_name(k, MAX_FINAL_NAME): _number(k, v) for k, v in (metrics or {}).items()}
        if len(final) > MAX_FINAL_NAMES:
            raise ValueError(f"at most {MAX_FINAL_NAMES} final metrics, not {len(final)}")
        if self._finished:
            return
        self._flush()
        self._send({"t": "finish", "metrics": final})
        self._finished = True

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is None:
            self.finish()
        else:
            self._flush()

    def _new_name(self, name: Any) -> None:
        _name(name)
        if len(self._names) >= MAX_NAMES:
            raise ValueError(f"a run logs at most {MAX_NAMES} metric names")
        self._names.add(name)

    def _checkpoints(self) -> list[Path]:
        try:
            return sorted(p for p in self.checkpoint_dir.iterdir() if _CHECKPOINT.match(p.name))
        except FileNotFoundError:
            return []

    def _send(self, message: dict[str, Any]) -> None:
        if not self._in_fork_child:
            self._transport.send(message)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        if self._in_fork_child:
            return
        with self._flush_lock:
            with self._lock:
                points, self._points, self._waiting = self._points, [], 0
                dropped, self._dropped = self._dropped, 0
            for start in range(0, len(points), FLUSH_POINTS):
                self._transport.metrics(points[start:start + FLUSH_POINTS])
            if self._progress is not None:
                (step, total), self._progress = self._progress, None
                self._transport.send({"t": "progress", "step": step, "total": total})
        if dropped:
            warnings.warn(f"trainyard: {dropped:,} metric points dropped (more than {MAX_BUFFERED:,} waiting)",
                          RuntimeWarning, stacklevel=2)

    def _stopped(self, reason: str) -> None:
        # The runner's stop message says why (cancelled, pruned, timed out); its SIGTERM, sent just after, can be
        # handled first and says only "terminated": the message's reason wins whichever comes first.
        if self.stop_reason is None or self.stop_reason == "terminated":
            self.stop_reason = reason
        self._stop.set()

    def _forked(self) -> None:  # a DataLoader worker and the like: the parent process ships, not the copy
        self._in_fork_child = True


_run: Run | None = None
_init_lock = threading.Lock()


def init(params: dict[str, Any] | None = None, dataset_path: str | os.PathLike | None = None) -> Run:
    """The run of this process (made on the first call). `params` are defaults the job's params (or
    TRAINYARD_PARAMS offline) override; `dataset_path` is used when the job (or TRAINYARD_DATASET) names none."""
    global _run
    with _init_lock:
        if _run is None or _run._finished:
            defaults = dict(params or {})
            fd = os.environ.get(ENV_CHANNEL)
            _run = _managed(int(fd), defaults, dataset_path) if fd else _offline(defaults, dataset_path)
        return _run


def _managed(fd: int, defaults: dict[str, Any], dataset_path: Any) -> Run:
    spec = json.loads(Path(os.environ[ENV_RUN_FILE]).read_text())
    holder: list[Run] = []
    channel = _Channel(fd, lambda reason: holder and holder[0]._stopped(reason))
    run = Run(run_id=spec["run_id"], params={**defaults, **spec.get("params", {})},
              dataset_path=spec.get("dataset_path") or (str(dataset_path) if dataset_path else None),
              output_dir=Path(spec["output_dir"]), checkpoint_dir=Path(spec["checkpoint_dir"]),
              transport=channel, offline=False)
    holder.append(run)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    return run


def _on_sigterm(signum: int, frame: Any) -> None:
    run = _run
    if run is None or not run._asked:  # nothing would read the flag: end as without the SDK
        raise SystemExit(128 + signum)
    run._stopped("terminated")


def _offline(defaults: dict[str, Any], dataset_path: Any) -> Run:
    params = dict(defaults)
    if raw := os.environ.get(ENV_PARAMS):
        given = json.loads(raw)
        if not isinstance(given, dict):
            raise ValueError(f"{ENV_PARAMS} must hold a JSON object")
        params.update(given)
    dataset = os.environ.get(ENV_DATASET) or (str(dataset_path) if dataset_path else None)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = Path(os.environ.get(ENV_RUNS_DIR) or "trainyard-runs").absolute() / run_id
    files = _LocalFiles(run_dir, params)
    output_dir = run_dir / "output"
    output_dir.mkdir(parents=True, exist_ok=True)
    return Run(run_id=run_id, params=params, dataset_path=dataset, output_dir=output_dir,
               checkpoint_dir=run_dir / "checkpoints", transport=files, offline=True)
