"""From the training thread to the telemetry stream: bounded buffers and one batch shipper.

`JobReporter` is the trainer's `Reporter`: it buffers points (at most `max_points`; past that, new points are
counted as dropped rather than growing without bound) and exposes the stop flag. The job's log lines wait in
`JobLogs` (runners/log_capture.py). A `Shipper` drains a buffer every flush interval into batches that always fit
NATS's max payload (`MetricBatch`es of at most `BATCH_POINTS` points; `LogBatch`es within their line and character
bounds), publishes each with `Nats-Msg-Id` = batch id (a retried publish that did land is deduplicated), and keeps
at most `max_pending` unsent batches while NATS is away, dropping the oldest beyond that (counted, logged).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from nats.js import JetStreamContext

from domain.contract import (MAX_BATCH_LINES, MAX_BATCH_LOG_CHARS, TELEMETRY_LOGS, TELEMETRY_METRICS, LogBatch,
                             LogLine, MetricBatch, SeriesChunk)
from infra.messaging import TELEMETRY_STREAM
from runners.log_capture import LogCapture

log = logging.getLogger("trainyard.runner")
Batch = TypeVar("Batch", MetricBatch, LogBatch)
BATCH_POINTS = 5_000  # ~160 KB packed: well under NATS's 1 MB default max payload
STORED_POLL_S = 0.05


def raise_if_cancelled() -> None:
    """Re-raise a cancel that an awaited library call swallowed: nats-py can turn the CancelledError of a task
    cancelled during a request into a timeout error, and a loop that catches errors would then run forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class JobReporter:
    """The trainer's `Reporter`: buffers points from the training thread for the async side to ship."""

    def __init__(self, stop_flag: threading.Event, max_points: int = 500_000, watch: str | None = None,
                 on_watch: Callable[[], None] | None = None) -> None:
        """`watch`: a metric whose latest (step, value) is kept in `watched` and announced by calling `on_watch`
        (a study trial's objective, reported for pruning decisions)."""
        self.stop_flag, self.max_points = stop_flag, max_points
        self.watch, self.on_watch = watch, on_watch
        self.watched: tuple[int, float] | None = None
        self._lock = threading.Lock()
        self._series: dict[str, SeriesChunk] = {}
        self._buffered = 0
        self.dropped = 0
        self.step_seen = 0
        self.total_steps = 0

    def step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.watch) if self.watch else None
        if value is not None and math.isfinite(value):
            self.objective(step, value)
        self.progress(step, total_steps)
        self.points(step, metrics)

    def progress(self, step: int, total_steps: int) -> None:
        """Where the run is (a code job says so apart from its metrics)."""
        with self._lock:
            self.step_seen, self.total_steps = step, total_steps

    def objective(self, step: int, value: float) -> None:
        """A study trial's intermediate objective at `step` (a code job's `run.report`)."""
        self.watched = (step, float(value))
        if self.on_watch is not None:
            self.on_watch()

    def points(self, step: int, metrics: dict[str, float]) -> None:
        """Buffer `metrics` at `step` for the shipper."""
        ts_ms = time.time_ns() // 1_000_000
        with self._lock:
            if self._buffered + len(metrics) > self.max_points:
                self.dropped += len(metrics)
                return
            for name, value in metrics.items():
                chunk = self._series.setdefault(name, SeriesChunk(steps=[], values=[], ts_ms=[]))
                chunk.steps.append(step)
                chunk.values.append(float(value))
                chunk.ts_ms.append(ts_ms)
            self._buffered += len(metrics)

    def should_stop(self) -> bool:
        return self.stop_flag.is_set()

    def drain(self) -> dict[str, SeriesChunk]:
        with self._lock:
            series, self._series, self._buffered = self._series, {}, 0
        return series


def batches(job_id: str, attempt: int, runner_id: str, series: dict[str, SeriesChunk]) -> list[MetricBatch]:
    """`series` cut into batches of at most BATCH_POINTS points, their columns packed (domain/contract.py
    SeriesChunk): what the metrics projector decodes fastest."""
    out: list[MetricBatch] = []
    current: dict[str, SeriesChunk] = {}
    room = BATCH_POINTS

    def close() -> None:
        nonlocal current, room
        if current:
            out.append(MetricBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=attempt, runner_id=runner_id,
                                   series=current))
        current, room = {}, BATCH_POINTS

    for name, chunk in series.items():
        start = 0
        while start < len(chunk.steps):
            if room == 0:
                close()
            end = min(len(chunk.steps), start + room)
            current[name] = SeriesChunk.packed(chunk.steps[start:end], chunk.values[start:end], chunk.ts_ms[start:end])
            room -= end - start
            start = end
    close()
    return out


class Shipper:
    """Publishes the batches `take()` cuts from a buffer on `subject`, in order, with `Nats-Msg-Id` = batch id (a
    retried publish that did land is deduplicated). While NATS is away it keeps at most `max_pending` unsent
    batches, dropping the oldest beyond that (counted, logged). `what` names the batches in the log."""

    def __init__(self, js: JetStreamContext, subject: str, take: Callable[[], list[Batch]], what: str,
                 max_pending: int = 200) -> None:
        self.js, self.subject, self.take, self.what = js, subject, take, what
        self.pending: collections.deque[Batch] = collections.deque()
        self.max_pending = max_pending
        self.dropped_batches = 0
        self.last_seq = 0  # the stream sequence of the last batch published
        self._flushing = asyncio.Lock()  # the periodic flush and an asked one (before a checkpoint) take turns

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.flush()
            raise_if_cancelled()

    async def flush(self) -> bool:
        """Queue what the buffer holds and publish the queue in order; False if something is left unsent."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> bool:
        self.pending.extend(self.take())
        while len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.dropped_batches += 1
            log.warning("%s batch dropped (NATS away too long; %d so far)", self.what, self.dropped_batches)
        while self.pending:
            batch = self.pending[0]
            try:
                ack = await self.js.publish(self.subject, batch.model_dump_json().encode(),
                                            headers={"Nats-Msg-Id": batch.batch_id})
                self.last_seq = max(self.last_seq, ack.seq)
            except Exception as e:
                log.warning("%s batch publish failed (%s); will retry", self.what, type(e).__name__)
                return False
            self.pending.popleft()
        return True

    async def flush_all(self, deadline_s: float = 30.0) -> None:
        """At the end of an attempt: keep trying for up to `deadline_s`."""
        deadline = time.monotonic() + deadline_s
        while not await self.flush() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)


async def stored(js: JetStreamContext, waits: dict[str, int], timeout_s: float) -> bool:
    """Wait until each telemetry consumer in `waits` (durable -> stream sequence) has settled every message up to
    that sequence (its ack floor: the projector acks a batch once it is queryable), for at most `timeout_s`. A
    runner calls it before reporting a job's end, so a finished job's points and log lines, its traceback
    included, can be read the moment the job shows finished. False when it gave up (the report goes anyway)."""
    deadline = time.monotonic() + timeout_s
    waiting = {durable: seq for durable, seq in waits.items() if seq > 0}
    while waiting:
        for durable, seq in list(waiting.items()):
            try:
                info = await js.consumer_info(TELEMETRY_STREAM, durable)
            except Exception as e:
                log.debug("telemetry consumer %s: no info (%s)", durable, type(e).__name__)
                return False
            if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq:
                del waiting[durable]
        if waiting:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(STORED_POLL_S)
    return True


def metric_shipper(js: JetStreamContext, reporter: JobReporter, job_id: str, attempt: int, runner_id: str) -> Shipper:
    return Shipper(js, TELEMETRY_METRICS, lambda: batches(job_id, attempt, runner_id, reporter.drain()),
                   f"job {job_id}: metric")


def log_batches(job_id: str, attempt: int, runner_id: str, lines: list[LogLine]) -> list[LogBatch]:
    """`lines` cut into batches within LogBatch's bounds (lines, characters), in order."""
    out: list[LogBatch] = []
    start = chars = 0
    for i, line in enumerate(lines):
        if i - start == MAX_BATCH_LINES or chars + len(line.message) > MAX_BATCH_LOG_CHARS:
            out.append(LogBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=attempt, runner_id=runner_id,
                                lines=lines[start:i]))
            start, chars = i, 0
        chars += len(line.message)
    if start < len(lines):
        out.append(LogBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=attempt, runner_id=runner_id,
                            lines=lines[start:]))
    return out


def log_shipper(js: JetStreamContext, capture: LogCapture, job_id: str, attempt: int, runner_id: str) -> Shipper:
    def take() -> list[LogBatch]:
        capture.flush_python_buffers()  # a print() sits in Python's buffer until flushed
        return log_batches(job_id, attempt, runner_id, capture.logs.drain())
    return Shipper(js, TELEMETRY_LOGS, take, f"job {job_id}: log", max_pending=50)  # up to ~0.5 MB each
