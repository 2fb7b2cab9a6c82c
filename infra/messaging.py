"""NATS JetStream: connections, streams and consumers. The subjects are a public contract (docs/events.md).

Streams
- TRAINYARD_EVENTS     `trainyard.v1.training_job.>`  domain events, published by the relay (dedup by event id)
- TRAINYARD_TELEMETRY  `trainyard.v1.telemetry.>`     metric batches from runners (dedup by batch id)
- TRAINYARD_DLQ        `trainyard.v1.dlq.>`           messages that could not be processed, kept for inspection
Runner reports are NATS request/reply on `trainyard.rpc.runner.report` (not in a stream: the runner
retries until the command handler answers, and the aggregate makes repeats harmless).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from infra.settings import Settings

EVENTS_STREAM = "TRAINYARD_EVENTS"
TELEMETRY_STREAM = "TRAINYARD_TELEMETRY"
DLQ_STREAM = "TRAINYARD_DLQ"
JOB_SUBMITTED = "trainyard.v1.training_job.submitted"
JOB_CANCEL_REQUESTED = "trainyard.v1.training_job.cancel_requested"
TELEMETRY_METRICS = "trainyard.v1.telemetry.metrics"
REPORT_SUBJECT = "trainyard.rpc.runner.report"
REPORT_QUEUE = "command-handlers"
RUNNERS_CONSUMER = "runners"
METRICS_CONSUMER = "clickhouse-metrics"
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{EVENTS_STREAM}.{RUNNERS_CONSUMER}"


log = logging.getLogger("trainyard.messaging")


def dlq_subject(original: str) -> str:
    return "trainyard.v1.dlq." + original.removeprefix("trainyard.v1.").removeprefix("trainyard.")


async def connect(url: str, name: str) -> tuple[Client, JetStreamContext]:
    """Connect with unlimited reconnects: a NATS restart must not end a long-running process."""
    try:
        nc = await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                connect_timeout=5, allow_reconnect=True)
    except NoServersError as e:
        raise RuntimeError(f"cannot reach NATS at {url}: {e}") from e
    return nc, nc.jetstream(timeout=10)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)  # type: ignore[arg-type]
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and durable consumer. Idempotent; every process may call it."""
    window = settings.dedup_window_s
    await _ensure_stream(js, StreamConfig(name=EVENTS_STREAM, subjects=["trainyard.v1.training_job.>"],
                                          storage=StorageType.FILE, duplicate_window=window))
    await _ensure_stream(js, StreamConfig(name=TELEMETRY_STREAM, subjects=["trainyard.v1.telemetry.>"],
                                          storage=StorageType.FILE, duplicate_window=window, max_age=7 * 86400))
    await _ensure_stream(js, StreamConfig(name=DLQ_STREAM, subjects=["trainyard.v1.dlq.>"],
                                          storage=StorageType.FILE))
    await js.add_consumer(EVENTS_STREAM, ConsumerConfig(
        durable_name=RUNNERS_CONSUMER, filter_subject=JOB_SUBMITTED, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, ack_wait=settings.runner_ack_wait_s,
        max_deliver=settings.runner_max_deliver, max_ack_pending=1000))
    await js.add_consumer(TELEMETRY_STREAM, ConsumerConfig(
        durable_name=METRICS_CONSUMER, filter_subject=TELEMETRY_METRICS, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, ack_wait=10, max_deliver=-1, max_ack_pending=20000))


async def pulled(sub: JetStreamContext.PullSubscription, stop: asyncio.Event, batch: int,
                 timeout: float) -> AsyncIterator[list[Msg]]:
    """Batches from a pull subscription until `stop` is set; a quiet or unreachable server means: try again."""
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch, timeout=timeout)
        except (NatsTimeout, TimeoutError):
            continue
        except Exception:
            log.exception("fetch failed; retrying")
            await asyncio.sleep(1.0)
            continue
        yield msgs
