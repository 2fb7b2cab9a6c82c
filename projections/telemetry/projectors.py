"""The ClickHouse telemetry projectors: batches from JetStream into ClickHouse tables — metric points from runners
into `metric_points` (`MetricsProjector`), training log lines from runners into `log_lines` (`LogsProjector`),
prediction records from inference servers into `predictions`
(`PredictionsProjector`), ground truth posted to the API into `feedback` (`FeedbackProjector`). One
`TelemetryProjector` does them all; a kind only says how to parse and insert a batch.

Fetches many batches at once, inserts them in one ClickHouse insert (feedback: one per deployment and 10,000
rows), then acks. A crash between insert and ack redelivers the batches; the insert's deduplication token, the
landed-batch check and the tables' ReplacingMergeTree keys make the repeat invisible (metric_store.py,
log_store.py, prediction_store.py).

Poison policy: a batch that does not validate (out-of-range numbers, wrong shapes) is dead-lettered at once. When an
insert fails, ClickHouse is probed: if it is away, every batch is nak'd and retried for as long as it takes (nothing
accepted is dropped); if it answers, the batches are inserted one by one and a batch that fails on its own
`max_tries` deliveries is dead-lettered, so one bad batch never holds up the others.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext

from domain.contract import FeedbackBatch, LogBatch, MetricBatch, PredictionBatch, printable
from infra.consumer import Consumer, Poison
from infra.fanout import Fanout
from infra.health import Stage
from infra.messaging import (FEEDBACK_CONSUMER, LOGS_CONSUMER, METRICS_CONSUMER, PREDICTIONS_CONSUMER,
                             TELEMETRY_STREAM)
from projections.telemetry.log_store import LogStore, stored_line
from projections.telemetry.metric_store import MetricColumns, MetricStore, PreparedInsert
from projections.telemetry.prediction_store import PredictionStore

log = logging.getLogger("trainyard.metrics")


def add_batch(cols: MetricColumns, batch: MetricBatch) -> None:
    job_id = str(batch.job_id)
    for name, chunk in batch.series.items():
        cols.extend(job_id, batch.attempt, name, chunk.steps, chunk.values, chunk.ts_ms)


def _split(msgs: list, limit: int) -> tuple[list, list]:
    """The longest head of `msgs` within `limit` bytes (one message at least), and the rest."""
    size = 0
    for i, msg in enumerate(msgs):
        size += len(msg.data)
        if size > limit and i > 0:
            return msgs[:i], msgs[i:]
    return msgs, []


class TelemetryProjector:
    """Subclasses set `consumer` (its durable on TRAINYARD_TELEMETRY), `batch_class` and
    `insert_batches(batches, token, staged)` (blocking), and may set `prepare(batches)` (see there)."""

    consumer = ""
    batch_class: Any = None
    gather_s = 0.0  # > 0: hold fetched batches up to this long and insert them together
    group_bytes = 4 << 20  # at most this much of messages per insert (one message at least)

    def __init__(self, js: JetStreamContext, store: Any, stage: Stage | None = None, fetch_size: int = 512,
                 max_tries: int = 3, fanout: Fanout | None = None) -> None:
        """`fanout`: told of each insert once it is queryable (`changes`), which wakes the live streams that read
        those rows and hands them the rows."""
        self.store, self.fetch_size, self.fanout = store, fetch_size, fanout
        self.stage = stage or Stage(f"{self.consumer}-projector", loops=True)
        self.source: Consumer[Any] = Consumer(js, TELEMETRY_STREAM, self.consumer, self.batch_class, self.stage,
                                              name=f"{self.consumer} projector", max_deliveries=max_tries)

    def insert_batches(self, batches: list, token: str, staged: Any = None) -> None:
        """Insert `batches` (`staged`: what `prepare(batches)` returned, when it ran)."""
        raise NotImplementedError

    def prepare(self, batches: list) -> Any:
        """The CPU work of inserting `batches` that needs no insert before it done (blocking; run while the group
        before is inserted). None by default."""
        return None

    topic_prefix = ""  # set: each insert wakes the streams of "<prefix>:<job id>" with the batches' `rows`

    def rows(self, batch: Any) -> tuple[list, int]:
        """A batch's rows as the job's live stream source reads them, and how many items they count for."""
        raise NotImplementedError

    def changes(self, batches: list, followed: Callable[[str], bool]) -> dict[str, tuple[Any, int]]:
        """What an insert of `batches` changed, for the live streams: fan-out topic -> (the rows, and how many; None
        when nobody follows the topic, so rows are built only for followed jobs). None without a `topic_prefix`."""
        out: dict[str, tuple[Any, int]] = {}
        if not self.topic_prefix:
            return out
        for b in batches:
            topic = f"{self.topic_prefix}:{b.job_id}"
            if not followed(topic):
                out[topic] = (None, 0)
                continue
            rows, size = out.get(topic) or ([], 0)
            more, count = self.rows(b)
            rows.extend(more)
            out[topic] = (rows, size + count)
        return out

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self.source.watch(stop))
        try:
            # Gather for up to `gather_s` (or `fetch_size` batches) per insert: a ClickHouse insert has a fixed
            # cost that many small batches would pay over and over. Without gathering, what a fetch brings goes in.
            # Two groups at most are in flight: one decoding and preparing while the one before it inserts (in a
            # thread), so decoding and fetching overlap the insert; inserts stay one at a time and in order. A group
            # holds at most `group_bytes` of messages: a backlog goes in as several groups, each prepared while the
            # one before is written, rather than as one whose insert nothing overlaps.
            held: list = []
            first = 0.0
            inserting: asyncio.Task | None = None
            while not stop.is_set():
                msgs = await self.source.fetch(self.fetch_size - len(held), timeout=0.25 if self.gather_s else 0.5)
                if msgs and not held:
                    first = time.monotonic()
                held += msgs
                while held and (len(held) >= self.fetch_size or time.monotonic() - first >= self.gather_s
                                or sum(len(m.data) for m in held) >= self.group_bytes):
                    group, held = _split(held, self.group_bytes)
                    before, inserting = inserting, asyncio.create_task(self.project(group, after=inserting))
                    if before is not None:
                        await before
            if inserting is not None:
                await inserting
        finally:
            watcher.cancel()

    async def project(self, msgs: list, after: asyncio.Task | None = None) -> None:
        """Decode `msgs` (dead-lettering what does not validate), wait for `after` (the group before, still
        inserting), then insert them and ack."""
        good = []
        for msg in msgs:
            try:
                good.append((msg, self.source.decode(msg)))
            except Poison as p:
                await self.source.dead_letter(msg, str(p))
        staged = None
        if good:
            try:
                staged = await asyncio.to_thread(self.prepare, [b for _, b in good])
            except Exception as e:  # the insert prepares them again, and its failure path finds the batch at fault
                log.debug("%s: preparing %d batches failed: %s", self.consumer, len(good), printable(e, 300))
        if after is not None:
            await asyncio.wait([after])  # its outcome is for run() to see
        if not good:
            return
        try:
            await self._insert(good, staged)
        except Exception as e:
            log.warning("%s insert of %d batches failed: %s", self.consumer, len(good), printable(e, 300))
            self.stage.failed(e)
            if not await self._store_answers():  # ClickHouse away: every batch waits for it, none is spent
                for msg, _ in good:
                    await self.source.nak(msg)
                return
            for one in good:  # ClickHouse answers: find the batch it refuses, and only that one is spent
                try:
                    await self._insert([one])
                except Exception as e1:
                    await self.source.retry(one[0], e1)

    async def _insert(self, batches: list, staged: Any = None) -> None:
        token = ",".join(b.batch_id for _, b in batches)
        await asyncio.to_thread(self.insert_batches, [b for _, b in batches], token, staged)
        if self.fanout is not None:
            for topic, (rows, size) in self.changes([b for _, b in batches], self.fanout.followed).items():
                self.fanout.notify(topic, rows, size)
        for msg, _ in batches:
            await msg.ack()
        self.stage.progressed()

    async def _store_answers(self) -> bool:
        try:
            await asyncio.to_thread(self.store.ch.query, "SELECT 1")
            return True
        except Exception:
            return False


class MetricsProjector(TelemetryProjector):
    consumer, batch_class = METRICS_CONSUMER, MetricBatch
    # Not gathered (gather_s 0), though every insert has a fixed cost: a job's last points, flushed just before it
    # reports its end, must be queryable when the job shows completed.
    store: MetricStore

    def prepare(self, batches: list[MetricBatch]) -> PreparedInsert | None:
        cols = MetricColumns()
        for batch in batches:
            add_batch(cols, batch)
        return self.store.prepare(cols)

    def insert_batches(self, batches: list[MetricBatch], token: str, staged: Any = None) -> None:
        self.store.write(staged if staged is not None else self.prepare(batches), token)

    topic_prefix = "metrics"

    def rows(self, batch: MetricBatch) -> tuple[list, int]:
        return [(name, batch.attempt, c.steps, c.values, c.ts_ms) for name, c in batch.series.items()], batch.size


class LogsProjector(TelemetryProjector):
    consumer, batch_class = LOGS_CONSUMER, LogBatch
    # Not gathered, like metrics: a failed job's traceback, flushed before it reports its end, must be readable
    # when the job shows failed.
    store: LogStore

    def insert_batches(self, batches: list[LogBatch], token: str, staged: Any = None) -> None:
        self.store.insert_batches(batches, token)

    topic_prefix = "logs"

    def rows(self, batch: LogBatch) -> tuple[list, int]:
        return [stored_line(batch, line) for line in batch.lines], len(batch.lines)


class PredictionsProjector(TelemetryProjector):
    consumer, batch_class = PREDICTIONS_CONSUMER, PredictionBatch
    gather_s = 1.0
    store: PredictionStore

    def insert_batches(self, batches: list[PredictionBatch], token: str, staged: Any = None) -> None:
        self.store.insert_batches(batches, token)


class FeedbackProjector(TelemetryProjector):
    consumer, batch_class = FEEDBACK_CONSUMER, FeedbackBatch
    store: PredictionStore

    def insert_batches(self, batches: list[FeedbackBatch], token: str, staged: Any = None) -> None:
        self.store.insert_feedback(batches)
