"""NATS JetStream: connections, streams and consumers. The subjects are a public contract (docs/events.md).

Streams
- TRAINYARD_EVENTS     `trainyard.v1.training_job.>`  domain events, published by the relay (dedup by event id)
- TRAINYARD_WORK       `trainyard.work.training.<priority>`  work items (work-queue retention), one per submitted
                       job, published by the relay beside the event; one durable pull consumer per priority,
                       shared by all runners, which always take the highest priority first
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
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
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
WORK_STREAM = "TRAINYARD_WORK"
PRIORITIES = ("critical", "high", "medium", "low")  # the order runners take work in
METRICS_CONSUMER = "clickhouse-metrics"
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{WORK_STREAM}.*"


def work_subject(priority: str) -> str:
    return f"trainyard.work.training.{priority}"


def work_consumer(priority: str) -> str:
    return f"runners-{priority}"


def work_item(subject: str, envelope: dict) -> tuple[str, str] | None:
    """(subject, Nats-Msg-Id) of the work item an event asks for: a submitted job is work at its priority."""
    if subject != JOB_SUBMITTED:
        return None
    return work_subject(envelope["payload"]["priority"]), f"work:{envelope['event_id']}"


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
    await _ensure_stream(js, StreamConfig(name=WORK_STREAM, subjects=["trainyard.work.training.*"],
                                          retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                                          duplicate_window=window))
    for priority in PRIORITIES:
        await js.add_consumer(WORK_STREAM, ConsumerConfig(
            durable_name=work_consumer(priority), filter_subject=work_subject(priority),
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=settings.runner_ack_wait_s,
            max_deliver=settings.runner_max_deliver, max_ack_pending=1000))
    await js.add_consumer(TELEMETRY_STREAM, ConsumerConfig(
        durable_name=METRICS_CONSUMER, filter_subject=TELEMETRY_METRICS, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, ack_wait=10, max_deliver=-1, max_ack_pending=20000))


async def pulled(subs: list[JetStreamContext.PullSubscription], stop: asyncio.Event, batch: int,
                 timeout: float) -> AsyncIterator[list[Msg]]:
    """Batches from the first of `subs` (priority order, highest first) that has messages, until `stop` is set.

    Each pass asks every subscription in turn (a server-side pull of up to `timeout` each), so an idle reader
    polls about every len(subs) × timeout, and a waiting high-priority item is always taken before a lower one.
    A quiet or unreachable server means: try again.
    """
    while not stop.is_set():
        for sub in subs:
            try:
                msgs = await sub.fetch(batch, timeout=timeout)
            except (NatsTimeout, TimeoutError):
                continue
            except Exception:
                log.exception("fetch failed; retrying")
                await asyncio.sleep(1.0)
                break
            yield msgs
            break
