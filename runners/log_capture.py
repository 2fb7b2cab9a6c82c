"""A job's training logs, captured in the runner while it trains: what the trainer logs (Python logging), warns
(`warnings`) and prints, down to the C level (LightGBM, PyTorch), and a failed job's traceback.

`JobLogs` is the bounded buffer: every line gets its level, stream, time and `seq` (its identity within the
attempt) and waits there for `runners/reporting.py` to ship it. It never blocks the trainer: a line over
MAX_LOG_MESSAGE characters is cut with a visible marker; past `rate` lines in one second, or `max_lines` (or
`max_chars` of messages) waiting, lines are dropped and one "N lines dropped" warning says so (the cap is visible, never silent).

`LogCapture` feeds it for the length of one attempt (a runner trains one job at a time, in a worker thread):
- fds 1 and 2 are dup2'd onto pipes; a reader thread per pipe passes the bytes on to the original fd (the
  process's output is unchanged) and cuts them into lines (stdout: info, stderr: warning; LightGBM's own
  "[Warning]"/"[Fatal]"/... tags set the level). Whatever the process writes meanwhile is the job's;
- a handler on the root logger takes the records of the threads the job runs in (`within`); the process's own
  console handlers write to the original stderr meanwhile, so nothing is captured twice;
- `warnings.showwarning` takes the training threads' warnings (level warning).
"""
from __future__ import annotations

import collections
import io
import logging
import os
import re
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from domain.contract import LOG_LEVELS, MAX_LOG_MESSAGE, LogLine

T = TypeVar("T")
log = logging.getLogger("trainyard.runner")
LINES_PER_S = 1000
MAX_WAITING = 50_000  # lines
MAX_WAITING_CHARS = 4_000_000  # of their messages: at most ~16 MB however long the lines
_CONTROL = re.compile("\x1b\\[[0-?]*[ -/]*[@-~]|[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f\\ud800-\\udfff]")
_NATIVE_LEVEL = re.compile(r"\[(Debug|Info|Warning|Error|Fatal)\]")
_NATIVE = {"Debug": "debug", "Info": "info", "Warning": "warning", "Error": "error", "Fatal": "critical"}
_LINE_END = re.compile(rb"\r\n|\r|\n")


def clean(text: str, cut_bytes: int = 0) -> str:
    """`text` as a log message: ANSI colour codes removed, other control characters (a tab excepted) shown as
    U+FFFD, cut to MAX_LOG_MESSAGE characters with a marker naming how many bytes went (`cut_bytes`: bytes
    already cut before `text`)."""
    text = _CONTROL.sub(lambda m: "" if m.group().startswith("\x1b[") else "\ufffd", text)
    if len(text) > MAX_LOG_MESSAGE or cut_bytes:
        keep = MAX_LOG_MESSAGE - 40
        cut_bytes += len(text[keep:].encode()) if len(text) > keep else 0
        text = f"{text[:keep]}… [truncated {cut_bytes:,} bytes]"
    return text


def level_of(stream: str, message: str) -> str:
    """The level of a printed line: a native library's "[Warning]"-style tag if it has one, else its stream's."""
    if m := _NATIVE_LEVEL.search(message[:64]):
        return _NATIVE[m.group(1)]
    return "warning" if stream == "stderr" else "info"


class JobLogs:
    """The lines of one attempt, waiting to be shipped. Thread-safe; `add` never blocks on I/O."""

    def __init__(self, rate: int = LINES_PER_S, max_lines: int = MAX_WAITING, max_chars: int = MAX_WAITING_CHARS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.max_lines, self.max_chars, self.clock = rate, max_lines, max_chars, clock
        self._lock = threading.Lock()
        self._lines: collections.deque[LogLine] = collections.deque()
        self._seq = 0
        self._chars = 0  # of the waiting messages
        self._second, self._in_second = -1, 0
        self._dropped = 0  # since the last notice
        self.dropped_total = 0

    def add(self, level: str, stream: str, message: str, cut_bytes: int = 0) -> None:
        ts_ms = time.time_ns() // 1_000_000
        with self._lock:
            second = int(self.clock())
            if second != self._second:
                self._notice()
                self._second, self._in_second = second, 0
            if self._in_second >= self.rate or len(self._lines) >= self.max_lines or self._chars >= self.max_chars:
                self._dropped += 1
                self.dropped_total += 1
                return
            self._in_second += 1
            self._append(level, stream, clean(message, cut_bytes), ts_ms)

    def exception(self, error: BaseException) -> None:
        """A failed job's traceback, one error line per line of it (past the rate cap: it is what one looks for)."""
        ts_ms = time.time_ns() // 1_000_000
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        with self._lock:
            for line in text.splitlines():
                if line.strip():
                    self._append("error", "stderr", clean(line), ts_ms)

    def note(self, level: str, message: str) -> None:
        """A line from the runner about the job (past the rate cap, like a traceback)."""
        with self._lock:
            self._append(level, "logging", clean(message), time.time_ns() // 1_000_000)

    def drain(self) -> list[LogLine]:
        """Every waiting line, in seq order (and the drop notice, when lines were dropped)."""
        with self._lock:
            self._notice()
            lines, self._lines, self._chars = list(self._lines), collections.deque(), 0
        return lines

    def _notice(self) -> None:
        if self._dropped:
            self._append("warning", "logging", f"{self._dropped:,} lines dropped (more than {self.rate:,} lines/s, "
                                               "or too many waiting to be shipped)",
                         time.time_ns() // 1_000_000)
            self._dropped = 0

    def _append(self, level: str, stream: str, message: str, ts_ms: int) -> None:
        self._lines.append(LogLine(seq=self._seq, ts_ms=ts_ms, level=level, stream=stream, message=message))
        self._seq += 1
        self._chars += len(message)


class _PipeReader(threading.Thread):
    """Reads one redirected fd's pipe until EOF: passes the bytes on to `original`, and adds each line to `logs`
    (keeping at most MAX_LOG_MESSAGE bytes of a line in memory, counting the rest)."""

    def __init__(self, read_fd: int, original: int, stream: str, logs: JobLogs) -> None:
        super().__init__(name=f"log-capture-{stream}", daemon=True)
        self.read_fd, self.original, self.stream, self.logs = read_fd, original, stream, logs

    def run(self) -> None:
        partial, cut = b"", 0
        try:
            while chunk := os.read(self.read_fd, 65536):
                _write_all(self.original, chunk)
                parts = _LINE_END.split(chunk)
                for part in parts[:-1]:
                    self._line(partial + part, cut)
                    partial, cut = b"", 0
                room = MAX_LOG_MESSAGE - len(partial)
                partial, cut = partial + parts[-1][:max(room, 0)], cut + max(len(parts[-1]) - max(room, 0), 0)
            self._line(partial, cut)
        finally:
            os.close(self.read_fd)

    def _line(self, data: bytes, cut: int) -> None:
        if data.strip() or cut:
            text = data.decode("utf-8", errors="replace")
            self.logs.add(level_of(self.stream, text), self.stream, text, cut)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the original output is gone (a closed pipe): the job's lines are still captured
        pass


class _ThreadHandler(logging.Handler):
    def __init__(self, capture: LogCapture) -> None:
        super().__init__(logging.NOTSET)
        self.capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread not in self.capture.threads:
            return
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        except Exception:  # a record whose arguments do not format: its template, rather than nothing
            text = str(record.msg)
        level = logging.getLevelName(min(max(record.levelno // 10 * 10, 10), 50)).lower()
        for line in text.splitlines() or [""]:
            if line.strip():
                self.capture.logs.add(level, "logging", line)


class LogCapture:
    """Captures the process's output and the job threads' logging and warnings into `logs` between `start` and
    `stop`. Only one at a time takes the fds (they are the process's); `fds=False` leaves them alone."""

    _fds_owner: LogCapture | None = None
    _guard = threading.Lock()

    def __init__(self, logs: JobLogs, fds: bool = True) -> None:
        self.logs, self.fds = logs, fds
        self.threads: set[int] = set()
        self._handler = _ThreadHandler(self)
        self._saved: dict[int, int] = {}
        self._readers: list[_PipeReader] = []
        self._consoles: list[tuple[logging.StreamHandler, Any]] = []
        self._showwarning: Any = None
        self._console_out: io.TextIOWrapper | None = None
        self._started = False

    def within(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn` that, wherever it runs (a worker thread), has that thread's logging and warnings captured."""
        def run(*args: Any, **kwargs: Any) -> T:
            ident = threading.get_ident()
            self.threads.add(ident)
            try:
                return fn(*args, **kwargs)
            finally:
                self.threads.discard(ident)
        return run

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.fds:
            with LogCapture._guard:  # the fds are the process's: a second capture takes logging and warnings only
                self.fds = LogCapture._fds_owner is None
                LogCapture._fds_owner = self if self.fds else LogCapture._fds_owner
            if self.fds:
                self._redirect()
            else:
                log.warning("output already captured for another job in this process; capturing logging only")
        logging.getLogger().addHandler(self._handler)
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._warning

    def stop(self, join_s: float = 2.0) -> None:
        """Restore everything; waits up to `join_s` for the readers to pass on the last bytes. Idempotent."""
        if not self._started:
            return
        self._started = False
        if warnings.showwarning == self._warning:
            warnings.showwarning = self._showwarning
        logging.getLogger().removeHandler(self._handler)
        if self.fds:
            self._restore(join_s)
            with LogCapture._guard:
                LogCapture._fds_owner = None

    def flush_python_buffers(self) -> None:
        """Python's own buffered stdout/stderr on to the fds (so printed lines are captured as they come)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or replaced stream: nothing to pass on
                pass

    def _warning(self, message: Any, category: type, filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
        if threading.get_ident() in self.threads:
            self.logs.add("warning", "logging", f"{category.__name__}: {message} ({filename}:{lineno})")
        else:
            self._showwarning(message, category, filename, lineno, file, line)

    def _redirect(self) -> None:
        self.flush_python_buffers()
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            self._saved[fd] = os.dup(fd)
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            reader = _PipeReader(read_fd, self._saved[fd], stream, self.logs)
            reader.start()
            self._readers.append(reader)
        # The process's console log handlers write past the capture meanwhile: the job's records come through
        # the handler above, the runner's own are not the job's.
        self._console_out = open(os.dup(self._saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
                    sys.stdout, sys.stderr):
                self._consoles.append((handler, handler.setStream(self._console_out)))

    def _restore(self, join_s: float) -> None:
        for handler, stream in self._consoles:
            handler.setStream(stream)
        self._consoles = []
        if self._console_out is not None:
            self._console_out.close()
            self._console_out = None
        self.flush_python_buffers()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # the pipe's last write end closes: its reader sees EOF
        deadline = time.monotonic() + join_s
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        for reader, saved in zip(self._readers, self._saved.values()):
            if not reader.is_alive():  # else a child process still holds the pipe: the reader keeps its fd
                os.close(saved)
        self._readers, self._saved = [], {}
