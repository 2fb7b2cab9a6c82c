"""The ClickHouse metrics projector: telemetry batches from JetStream into `metric_points`.

Fetches many batches at once, inserts them in one ClickHouse insert, then acks. A crash between
insert and ack redelivers the batches; the table's ReplacingMergeTree key makes the repeat
invisible to queries (projections/metric_store.py). A malformed batch goes to the dead-letter subject.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from pydantic import ValidationError

from domain.telemetry import MetricBatch
from infra.messaging import METRICS_CONSUMER, TELEMETRY_METRICS, TELEMETRY_STREAM, dlq_subject, pulled
from projections.metric_store import MetricColumns, MetricStore

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


class MetricsProjector:
    def __init__(self, js: JetStreamContext, store: MetricStore, fetch_size: int = 512) -> None:
        self.js, self.store, self.fetch_size = js, store, fetch_size

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe_bind(METRICS_CONSUMER, stream=TELEMETRY_STREAM)
        log.info("metrics projector started")
        async for msgs in pulled([sub], stop, self.fetch_size, timeout=0.5):
            try:
                await self.project(msgs)
            except Exception:  # ClickHouse away: unacked batches are redelivered after the ack wait (10 s)
                log.exception("metric insert failed; batches will be redelivered")
                for msg in msgs:
                    with contextlib.suppress(Exception):  # the malformed ones were acked already
                        await msg.nak(delay=1.0)

    async def project(self, msgs: list) -> None:
        good, cols = [], MetricColumns()
        for msg in msgs:
            try:
                batch = MetricBatch.model_validate_json(msg.data)
            except ValidationError as e:
                log.warning("malformed metric batch dead-lettered: %s", e.error_count())
                await self.js.publish(dlq_subject(TELEMETRY_METRICS), msg.data)
                await msg.ack()
                continue
            good.append((msg, batch))
            add_batch(cols, batch)
        if not good:
            return
        token = ",".join(b.batch_id for _, b in good)
        await asyncio.to_thread(self.store.insert_columns, cols, token)
        for msg, _ in good:
            await msg.ack()
