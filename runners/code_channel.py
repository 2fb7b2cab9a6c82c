"""The runner's end of a code job's channel: what the SDK (trainyard/sdk.py) sends, checked and turned into calls
on a `CodeSink`; and the one thing the runner sends back, `stop`.

The script is not trusted: every line is bounded (MAX_LINE bytes), parsed, and checked as the service checks
built-in telemetry (metric names 1–200 characters without control characters, finite values, steps in range,
params and labels bounded). What fails is dropped and counted, with one note a kind. A file the script names
(checkpoint, artifact, model) must be a regular file under the job's output or checkpoint directory, opened one
component at a time without following a symlink, and is copied into a directory only the runner can write: the
sink gets that copy, never a path the script could swap afterwards.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import stat
import threading
from pathlib import Path
from typing import Any

from domain.contract import has_control

MAX_LINE = 8 * 1024 * 1024  # bytes of one message; the SDK's largest batch is well under it
MAX_NAME, MAX_FINAL_NAME, MAX_FINAL_NAMES = 200, 100, 100
MAX_PARAMS_BYTES = 64 * 1024
MAX_LABELS = 10_000
MAX_FILES = 100  # artifacts and models a job may hand over; checkpoints replace each other
KEEP_CHECKPOINTS = 2


class CodeSink:
    """What a code job says, as calls; the defaults do nothing. The sandbox calls them from its reader threads:
    the channel's, in the order the script sent its messages, and one per output stream. Each should return
    quickly (a slow sink holds the script's messages back, never its training)."""

    def on_metrics(self, step: int, metrics: dict[str, float], ts_ms: int) -> None: ...
    def on_progress(self, step: int, total: int) -> None: ...
    def on_params(self, params: dict[str, Any]) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_artifact(self, name: str, path: Path) -> None: ...
    def on_model(self, path: Path, feature_names: list[str] | None, class_labels: list[Any] | None,
                 validation: Path | None = None) -> None: ...
    def on_finish(self, metrics: dict[str, float]) -> None: ...
    def on_output_line(self, stream: str, text: str) -> None:
        """A line the script printed: `stream` is "stdout" or "stderr"; `text` is cut to a log line's bound."""
    def on_note(self, level: str, text: str) -> None:
        """A line from the sandbox about the job (a limit hit, a message dropped)."""

    def on_report(self, value: float, step: int) -> bool:
        """A study's intermediate objective; True prunes the run (the script is told to stop)."""
        return False


class Invalid(ValueError):
    pass


def _name(value: Any, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or has_control(value):
        raise Invalid(f"a name of 1 to {limit} characters without control characters")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid("a finite number")
    return float(value)


def _step(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 1:
        raise Invalid("a step from 0 to 2**63-1")
    return value


def _labels(value: Any, kind: tuple[type, ...]) -> list[Any] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LABELS or not all(
            isinstance(v, kind) and not isinstance(v, bool) and (not isinstance(v, str) or len(v) <= MAX_NAME)
            for v in value):
        raise Invalid(f"a list of at most {MAX_LABELS} labels")
    return value


class ChannelReader(threading.Thread):
    """Reads `sock` until the script's end closes; `roots`: where the script's files may be; `collect_dir`: the
    runner's own directory the files are copied to."""

    def __init__(self, sock: socket.socket, sink: CodeSink, roots: tuple[Path, ...], collect_dir: Path) -> None:
        super().__init__(name="code-channel", daemon=True)
        self.sock, self.sink, self.roots, self.collect_dir = sock, sink, roots, collect_dir
        self.final_metrics: dict[str, float] = {}
        self.pruned = False
        self.invalid: dict[str, int] = {}
        self._send_lock = threading.Lock()
        self._files = 0
        self._checkpoints: list[Path] = []

    def send_stop(self, reason: str) -> None:
        """Tells the script to stop; never blocks (a script that does not read its end misses nothing it asked
        for: SIGTERM follows a cancel)."""
        with self._send_lock:
            try:
                self.sock.send(json.dumps({"t": "stop", "reason": reason}).encode() + b"\n", socket.MSG_DONTWAIT)
            except OSError:
                pass

    def run(self) -> None:
        buffer, skipping = b"", False
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            lines = (buffer + chunk).split(b"\n")
            buffer = lines.pop()
            for line in lines:
                if not skipping:
                    self._line(line)
                skipping = False
            if len(buffer) > MAX_LINE:
                self._drop("oversized", f"a message over {MAX_LINE:,} bytes")
                buffer, skipping = b"", True

    def _line(self, line: bytes) -> None:
        kind: Any = "unparsed"
        try:
            message = json.loads(line)
            kind = message["t"] if isinstance(message, dict) else None
            handler = getattr(self, f"_on_{kind}", None) if isinstance(kind, str) and kind.isalpha() else None
            if handler is None:
                raise Invalid("a known message kind")
            handler(message)
        except (Invalid, ValueError, KeyError, TypeError, OSError) as e:
            self._drop(str(kind)[:40], str(e)[:200])

    def _drop(self, kind: str, why: str) -> None:
        self.invalid[kind] = self.invalid.get(kind, 0) + 1
        if self.invalid[kind] == 1:
            self.sink.on_note("warning", f"code job message {kind!r} dropped: expected {why} (noted once)")

    def _on_metrics(self, message: dict[str, Any]) -> None:
        for point in message["points"]:
            step, ts_ms, values = point
            clean = {_name(k): _number(v) for k, v in values.items()}
            self.sink.on_metrics(_step(step), clean, _step(ts_ms))

    def _on_progress(self, message: dict[str, Any]) -> None:
        self.sink.on_progress(_step(message["step"]), _step(message["total"]))

    def _on_report(self, message: dict[str, Any]) -> None:
        if self.sink.on_report(_number(message["value"]), _step(message["step"])) and not self.pruned:
            self.pruned = True
            self.send_stop("pruned")

    def _on_params(self, message: dict[str, Any]) -> None:
        params = message["params"]
        if not isinstance(params, dict) or len(json.dumps(params)) > MAX_PARAMS_BYTES:
            raise Invalid(f"params as an object of at most {MAX_PARAMS_BYTES} bytes")
        self.sink.on_params(params)

    def _on_finish(self, message: dict[str, Any]) -> None:
        metrics = message["metrics"]
        if not isinstance(metrics, dict) or len(metrics) > MAX_FINAL_NAMES:
            raise Invalid(f"at most {MAX_FINAL_NAMES} final metrics")
        self.final_metrics = {_name(k, MAX_FINAL_NAME): _number(v) for k, v in metrics.items()}
        self.sink.on_finish(self.final_metrics)

    def _on_checkpoint(self, message: dict[str, Any]) -> None:
        step = _step(message["step"])
        copy = self._collect(message["path"], f"checkpoint-{step}")
        self._checkpoints.append(copy)
        for old in self._checkpoints[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        self._checkpoints = self._checkpoints[-KEEP_CHECKPOINTS:]
        self.sink.on_checkpoint(step, copy)

    def _on_artifact(self, message: dict[str, Any]) -> None:
        name = _name(message["name"])
        self.sink.on_artifact(name, self._collect(message["path"], f"artifact-{self._take_file()}"))

    def _on_model(self, message: dict[str, Any]) -> None:
        features = _labels(message.get("feature_names"), (str,))
        classes = _labels(message.get("class_labels"), (str, int))
        model = self._collect(message["path"], f"model-{self._take_file()}.onnx")
        rows = message.get("validation")  # the SDK's CSV of the rows the model was validated on
        validation = self._collect(rows, f"validation-{self._take_file()}.csv") if rows is not None else None
        self.sink.on_model(model, features, classes, validation)

    def _take_file(self) -> int:
        if self._files >= MAX_FILES:
            raise Invalid(f"at most {MAX_FILES} artifacts and models")
        self._files += 1
        return self._files

    def _collect(self, path: Any, as_name: str) -> Path:
        if not isinstance(path, str) or "\x00" in path or len(path) > 4096:
            raise Invalid("a file path")
        target = os.path.normpath(path)
        for root in self.roots:
            if target.startswith(str(root) + os.sep):
                source = _open_inside(root, Path(target).relative_to(root).parts)
                copy = self.collect_dir / as_name
                with os.fdopen(source, "rb") as src, open(copy, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                return copy
        raise Invalid("a file under the job's output or checkpoint directory")


def _open_inside(root: Path, parts: tuple[str, ...]) -> int:
    """A read fd on the regular file `root/parts...`, reached without following any symlink."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = inner
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except OSError as e:
        raise Invalid(f"a regular file reached without symlinks ({e.strerror})") from e
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Invalid("a regular file")
    return fd
