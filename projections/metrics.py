"""The ClickHouse telemetry projectors: batches from JetStream into ClickHouse tables — metric points from runners
into `metric_points` (`MetricsProjector`), prediction records from inference servers into `predictions`
(`PredictionsProjector`), ground truth posted to the API into `feedback` (`FeedbackProjector`). One
`TelemetryProjector` does all three; a kind only says how to parse and insert a batch.

Fetches many batches at once, inserts them in one ClickHouse insert (feedback: one per deployment and 10,000
rows), then acks. A crash between insert and ack redelivers the batches; the insert's deduplication token, the
landed-batch check and the tables' ReplacingMergeTree keys make the repeat invisible (projections/metric_store.py,
projections/prediction_store.py).

Poison policy: a batch that does not validate (out-of-range numbers, wrong shapes) is dead-lettered at once. When an
insert fails, ClickHouse is probed: if it is away, every batch is nak'd and retried for as long as it takes (nothing
accepted is dropped); if it answers, the batches are inserted one by one and a batch that fails on its own
`max_tries` deliveries is dead-lettered, so one bad batch never holds up the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from pydantic import ValidationError

from domain.contract import (TELEMETRY_FEEDBACK, TELEMETRY_METRICS, TELEMETRY_PREDICTIONS, FeedbackBatch,
                             MetricBatch, PredictionBatch, printable)
from infra.health import Stage
from infra.messaging import (FEEDBACK_CONSUMER, METRICS_CONSUMER, PREDICTIONS_CONSUMER, TELEMETRY_STREAM,
                             dead_letter, pulled)
from projections.metric_store import MetricColumns, MetricStore
from projections.prediction_store import PredictionStore

log = logging.getLogger("trainyard.metrics")


def add_batch(cols: MetricColumns, batch: MetricBatch) -> None:
    n = batch.size
    cols.job_id += [str(batch.job_id)] * n
    cols.attempt += [batch.attempt] * n
    cols.batch_id += [batch.batch_id] * n
    for name, chunk in batch.series.items():
        cols.name += [name] * len(chunk.steps)
        cols.step += chunk.steps
        cols.value += chunk.values
        cols.ts_ms += chunk.ts_ms


class TelemetryProjector:
    """Subclasses set `consumer`, `subject`, `batch_class` and `insert_batches(batches, token)` (blocking)."""

    consumer = ""
    subject = ""
    batch_class: Any = None
    gather_s = 0.0  # > 0: hold fetched batches up to this long and insert them together

    def __init__(self, js: JetStreamContext, store: Any, stage: Stage | None = None, fetch_size: int = 512,
                 max_tries: int = 3) -> None:
        self.js, self.store, self.fetch_size, self.max_tries = js, store, fetch_size, max_tries
        self.stage = stage or Stage(f"{self.consumer}-projector", loops=True)

    def insert_batches(self, batches: list, token: str) -> None:
        raise NotImplementedError

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe_bind(self.consumer, stream=TELEMETRY_STREAM)
        log.info("%s projector started", self.consumer)
        watcher = asyncio.create_task(self._watch(stop))
        try:
            if not self.gather_s:
                async for msgs in pulled(sub, stop, self.fetch_size, timeout=0.5):
                    await self.project(msgs)
                return
            # Gather for up to `gather_s` (or `fetch_size` batches) per insert: a ClickHouse insert has a fixed
            # cost that many small batches would pay over and over (measured: most of serve's CPU per prediction).
            held: list = []
            first = 0.0
            while not stop.is_set():
                try:  # 0.25 s: shorter timeouts (to hold exactly gather_s) broke test_ab's labels; cause not found
                    msgs = await sub.fetch(self.fetch_size - len(held), timeout=0.25)
                except (NatsTimeout, TimeoutError):
                    msgs = []
                except Exception:
                    log.exception("%s fetch failed; retrying", self.consumer)
                    await asyncio.sleep(1.0)
                    continue
                if msgs and not held:
                    first = time.monotonic()
                held += msgs
                if held and (len(held) >= self.fetch_size or time.monotonic() - first >= self.gather_s):
                    await self.project(held)
                    held = []
        finally:
            watcher.cancel()

    async def _watch(self, stop: asyncio.Event) -> None:
        """Position and lag of the consumer, once a second, for /readyz."""
        while not stop.is_set():
            try:
                info = await self.js.consumer_info(TELEMETRY_STREAM, self.consumer)
                position = info.ack_floor.stream_seq if info.ack_floor else 0
                self.stage.observe(position, position + (info.num_pending or 0) + (info.num_ack_pending or 0))
            except Exception as e:
                self.stage.failed(e)
            await asyncio.sleep(1.0)

    async def project(self, msgs: list) -> None:
        good = []
        for msg in msgs:
            try:
                good.append((msg, self.batch_class.model_validate_json(msg.data)))
            except ValidationError as e:
                await self._dead_letter(msg, f"invalid batch: {printable(e, 300)}")
        if not good:
            return
        try:
            await self._insert(good)
        except Exception as e:
            log.warning("%s insert of %d batches failed: %s", self.consumer, len(good), printable(e, 300))
            self.stage.failed(e)
            if not await self._store_answers():
                await self._nak_all(good)
                return
            for one in good:
                try:
                    await self._insert([one])
                except Exception as e1:
                    msg = one[0]
                    if msg.metadata.num_delivered >= self.max_tries:
                        await self._dead_letter(msg, f"insert failed {self.max_tries} times: {printable(e1, 300)}")
                    else:
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=1.0)

    async def _insert(self, batches: list) -> None:
        token = ",".join(b.batch_id for _, b in batches)
        await asyncio.to_thread(self.insert_batches, [b for _, b in batches], token)
        for msg, _ in batches:
            await msg.ack()
        self.stage.progressed()

    async def _store_answers(self) -> bool:
        try:
            await asyncio.to_thread(self.store.ch.query, "SELECT 1")
            return True
        except Exception:
            return False

    async def _nak_all(self, batches: list) -> None:
        for msg, _ in batches:
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _dead_letter(self, msg, reason: str) -> None:  # noqa: ANN001
        log.warning("%s batch dead-lettered: %s", self.consumer, reason)
        await dead_letter(self.js, self.subject, msg.data, reason)
        await msg.ack()
        self.stage.poisoned_one(reason)


class MetricsProjector(TelemetryProjector):
    consumer, subject, batch_class = METRICS_CONSUMER, TELEMETRY_METRICS, MetricBatch
    # Not gathered (gather_s 0), though a chDB insert costs about 3.6 ms of CPU whatever its size: a job's last
    # points, flushed just before it reports its end, must be queryable when the job shows completed.
    store: MetricStore

    def insert_batches(self, batches: list[MetricBatch], token: str) -> None:
        cols = MetricColumns()
        for batch in batches:
            add_batch(cols, batch)
        self.store.insert_columns(cols, token)


class PredictionsProjector(TelemetryProjector):
    consumer, subject, batch_class = PREDICTIONS_CONSUMER, TELEMETRY_PREDICTIONS, PredictionBatch
    gather_s = 1.0
    store: PredictionStore

    def insert_batches(self, batches: list[PredictionBatch], token: str) -> None:
        self.store.insert_batches(batches, token)


class FeedbackProjector(TelemetryProjector):
    consumer, subject, batch_class = FEEDBACK_CONSUMER, TELEMETRY_FEEDBACK, FeedbackBatch
    store: PredictionStore

    def insert_batches(self, batches: list[FeedbackBatch], token: str) -> None:
        self.store.insert_feedback(batches)
