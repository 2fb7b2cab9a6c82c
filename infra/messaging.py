"""NATS JetStream: connections, streams and consumers. Subjects live in domain/contract.py (the public contract).

Streams (together they capture every subject under `trainyard.v1.>` that Trainyard publishes)
- TRAINYARD_EVENTS     `trainyard.v1.<aggregate>.>` for each registered aggregate (domain/registry.py), published by
                       the relay, dedup by event id over `dedup_window_s`
- TRAINYARD_TELEMETRY  `trainyard.v1.telemetry.>` metric and log batches from runners, prediction and feedback
                       batches (dedup by batch id)
- TRAINYARD_DLQ        `trainyard.v1.dlq.>` what a stage could not process, kept for inspection
- TRAINYARD_WORK       `trainyard.work.<priority>.<kind>.<aggregate_id>` work items (work-queue retention); the
                       durable pull consumers per priority, shared by all runners, which ask the highest priority
                       first: `work-<priority>` filters the built-in kinds (training, export: every runner takes
                       them) and `work-<priority>-code` the kind "code" (jobs running the user's code: only runners
                       that accept code fetch from it). Capability is a consumer filter, so a runner that refuses
                       code never sees a code item, and no item waits behind one it cannot take. Work that needs a
                       GPU is published one level deeper, `trainyard.work.<priority>.gpu.<kind>.<id>`, and read
                       through `work-<priority>-gpu` (training) and `work-<priority>-gpu-code` (code): only runners
                       with a GPU read them, so a CPU-only runner never fetches a GPU job (a runner too small in
                       GPUs, CPUs or memory for a job it fetched is refused at claim: commands/reports.py). A runner
                       acks its item as soon as the aggregate answered its claim, so
                       delivery counts mean nothing: attempts and their budget belong to the aggregate's leases.
Every stream has a size limit (Settings `*_max_bytes`) and the DLQ a per-message one. `StreamKeeper` (run by serve)
recreates the streams and consumers above when they vanish (a deleted stream or consumer otherwise leaves the relay
failing or every new job queued for good) and says so in its `/readyz` stage.
Runner reports are NATS request/reply on `trainyard.rpc.runner.report` (no stream: the runner retries until a
command handler answers, and the aggregate makes repeats harmless).
"""
from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType,
                         StreamConfig)
from nats.js.errors import NotFoundError

from domain.contract import (DLQ_PREFIX, SUBJECT_PREFIX, TELEMETRY_FEEDBACK, TELEMETRY_LOGS, TELEMETRY_METRICS,
                             TELEMETRY_PREDICTIONS, WORK_PREFIX, dlq_subject, printable, work_filter)
from domain.registry import event_subjects
from domain.vocabulary import BUILTIN_WORK, PRIORITY_ORDER, WorkKind
from infra.health import Stage, stopped_within
from infra.nats_accounts import NatsCredentials
from infra.settings import Settings

log = logging.getLogger("trainyard.messaging")
EVENTS_STREAM = "TRAINYARD_EVENTS"
TELEMETRY_STREAM = "TRAINYARD_TELEMETRY"
DLQ_STREAM = "TRAINYARD_DLQ"
WORK_STREAM = "TRAINYARD_WORK"
STREAMS = (EVENTS_STREAM, TELEMETRY_STREAM, DLQ_STREAM, WORK_STREAM)
METRICS_CONSUMER = "clickhouse-metrics"
LOGS_CONSUMER = "clickhouse-logs"
PREDICTIONS_CONSUMER = "clickhouse-predictions"
FEEDBACK_CONSUMER = "clickhouse-feedback"
STUDY_DRIVER_CONSUMER = "study-driver"  # every domain event; the driver acts on studies' and their trials' events
WORK_ACK_WAIT_S = 30.0  # a runner holds an item only from fetch to the claim's answer


def work_consumer(priority: str, code: bool = False, gpu: bool = False) -> str:
    return f"work-{priority}" + ("-gpu" if gpu else "") + ("-code" if code else "")


def work_consumers(code: bool = True, gpu: bool = False) -> list[tuple[str, str]]:
    """(priority, durable) of the work consumers a runner reads, most urgent first; `code`: the code ones too;
    `gpu`: the GPU ones too, first within a priority (a GPU runner serves the work only it can do before the
    work any runner can)."""
    kinds = (False, True) if code else (False,)
    routes = (True, False) if gpu else (False,)
    return [(p, work_consumer(p, c, g)) for p in PRIORITY_ORDER for g in routes for c in kinds]


def credentials(settings: Settings) -> NatsCredentials | None:
    """The NATS login the settings name: the credentials file, else user + password, else none (an open bus)."""
    if settings.nats_creds:
        return NatsCredentials.read(settings.nats_creds)
    if settings.nats_user:
        return NatsCredentials(settings.nats_user, settings.nats_password or "")
    return None


async def connect(url: str, name: str, creds: NatsCredentials | None = None) -> tuple[Client, JetStreamContext]:
    """Connect with unlimited reconnects: a NATS restart must not end a long-running process. With `creds`, log in
    as that user and take replies on its inbox prefix (the only inbox its permissions may let it read)."""
    login: dict = {}
    if creds is not None:
        login = {"user": creds.user, "password": creds.password}
        if creds.inbox_prefix:
            login["inbox_prefix"] = creds.inbox_prefix
    try:
        nc = await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                connect_timeout=5, allow_reconnect=True, **login)
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
    await _ensure_stream(js, StreamConfig(name=EVENTS_STREAM, subjects=event_subjects(),
                                          storage=StorageType.FILE, duplicate_window=window,
                                          max_bytes=settings.events_stream_max_bytes, discard=DiscardPolicy.OLD))
    await _ensure_stream(js, StreamConfig(name=TELEMETRY_STREAM, subjects=[f"{SUBJECT_PREFIX}.telemetry.>"],
                                          storage=StorageType.FILE, duplicate_window=window, max_age=7 * 86400,
                                          max_bytes=settings.telemetry_stream_max_bytes, discard=DiscardPolicy.OLD))
    # The newest dead letters are the ones worth reading: a flood pushes the oldest out, never grows the stream.
    await _ensure_stream(js, StreamConfig(name=DLQ_STREAM, subjects=[f"{DLQ_PREFIX}.>"], storage=StorageType.FILE,
                                          max_age=30 * 86400, max_bytes=settings.dlq_max_bytes,
                                          max_msg_size=settings.dlq_max_msg_bytes, discard=DiscardPolicy.OLD))
    await _ensure_stream(js, StreamConfig(name=WORK_STREAM, subjects=[f"{WORK_PREFIX}.>"],
                                          retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                                          duplicate_window=window, max_bytes=settings.work_stream_max_bytes,
                                          discard=DiscardPolicy.NEW))
    # Built-in consumers first: one made before code jobs filtered every kind, and a work-queue stream refuses
    # consumers whose filters overlap (filter_subjects needs nats-server 2.10 or later).
    # The GPU consumers filter `<priority>.gpu.<kind>`, which no filter above matches: an export never needs a GPU.
    for gpu, code in ((False, False), (False, True), (True, False), (True, True)):
        for priority in PRIORITY_ORDER:
            filters = ({"filter_subject": work_filter(priority, WorkKind.CODE, gpu)} if code
                       else {"filter_subject": work_filter(priority, WorkKind.TRAINING, gpu)} if gpu
                       else {"filter_subjects": [work_filter(priority, k) for k in BUILTIN_WORK]})
            await js.add_consumer(WORK_STREAM, ConsumerConfig(
                durable_name=work_consumer(priority, code, gpu), ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, ack_wait=WORK_ACK_WAIT_S, max_deliver=-1, max_ack_pending=10_000,
                **filters))
    await js.add_consumer(EVENTS_STREAM, ConsumerConfig(
        durable_name=STUDY_DRIVER_CONSUMER, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=30, max_deliver=-1, max_ack_pending=10_000))
    await js.add_consumer(TELEMETRY_STREAM, ConsumerConfig(
        durable_name=METRICS_CONSUMER, filter_subject=TELEMETRY_METRICS, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, ack_wait=10, max_deliver=-1, max_ack_pending=20000))
    for durable, subject in ((PREDICTIONS_CONSUMER, TELEMETRY_PREDICTIONS), (FEEDBACK_CONSUMER, TELEMETRY_FEEDBACK),
                             (LOGS_CONSUMER, TELEMETRY_LOGS)):
        await js.add_consumer(TELEMETRY_STREAM, ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=10, max_deliver=-1, max_ack_pending=20000))


async def wait_for(js: JetStreamContext, stream: str, consumers: tuple[str, ...] = (), interval_s: float = 0.5,
                   log_every_s: float = 10.0) -> None:
    """Until `stream` and its `consumers` exist. A process whose NATS user may not administer streams (runner,
    inference server) waits here for the service to create them (`ensure_streams`)."""
    waited = 0.0
    while True:
        try:
            if consumers:
                for consumer in consumers:
                    await js.consumer_info(stream, consumer)
            else:
                await js.stream_info(stream)
            return
        except NotFoundError:
            pass
        except Exception as e:  # noqa: BLE001 - a timeout or a reconnect: ask again
            if waited >= log_every_s:
                log.warning("waiting for %s: %s", stream, printable(e, 200))
        if waited >= log_every_s:
            log.info("waiting for the service to create %s %s", stream, ", ".join(consumers))
            waited = 0.0
        await asyncio.sleep(interval_s)
        waited += interval_s


def owned_consumers() -> list[tuple[str, str]]:
    """(stream, durable) of every consumer ensure_streams makes."""
    return [*((WORK_STREAM, durable) for _, durable in work_consumers(gpu=True)), (EVENTS_STREAM, STUDY_DRIVER_CONSUMER),
            *((TELEMETRY_STREAM, d) for d in (METRICS_CONSUMER, PREDICTIONS_CONSUMER, FEEDBACK_CONSUMER,
                                                 LOGS_CONSUMER))]


async def missing(js: JetStreamContext) -> list[str]:
    """The streams and consumers of ensure_streams that do not exist now (by name)."""
    gone: list[str] = []
    for name in STREAMS:
        try:
            await js.stream_info(name)
        except NotFoundError:
            gone.append(name)
    for stream, durable in owned_consumers():
        if stream in gone:
            gone.append(f"{stream}/{durable}")
            continue
        try:
            await js.consumer_info(stream, durable)
        except NotFoundError:
            gone.append(f"{stream}/{durable}")
    return gone


class StreamKeeper:
    """Every `settings.stream_check_s`, whether the streams and consumers exist; what vanished (deleted by anyone on
    the bus, or lost with the server's storage) is made again by ensure_streams, and the stage's last error names
    it. A recreated stream is empty: the reconciler requeues queued jobs whose items were lost, and the relay goes
    on from its position."""

    def __init__(self, js: JetStreamContext, settings: Settings, stage: Stage) -> None:
        self.js, self.settings, self.stage = js, settings, stage
        self.recreated = 0

    async def check(self) -> list[str]:
        gone = await missing(self.js)
        if gone:
            await ensure_streams(self.js, self.settings)
            self.recreated += len(gone)
            self.stage.failed(f"recreated {', '.join(gone)} (they had vanished)")
        self.stage.progressed()
        return gone

    async def run(self, stop: asyncio.Event) -> None:
        while True:
            self.stage.tick()
            try:
                await self.check()
            except Exception as e:  # NATS away: the connection reconnects; check again next round
                self.stage.failed(e)
            if await stopped_within(stop, self.settings.stream_check_s):
                return


class WorkStream:
    """The work stream as the reconciler asks it (commands/reconciler.py `WorkQueue`)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def queued_ids(self) -> set[str]:
        """The aggregate ids with a work item on TRAINYARD_WORK now (the last token of each subject)."""
        info = await self.js.stream_info(WORK_STREAM, subjects_filter=f"{WORK_PREFIX}.>")
        return {s.rsplit(".", 1)[-1] for s in (info.state.subjects or {})}


async def dead_letter(js: JetStreamContext, original_subject: str, data: bytes, reason: str) -> None:
    """Keep what a stage could not process on `trainyard.v1.dlq.<original>` (stream TRAINYARD_DLQ), with the reason
    in the `Trainyard-Error` header."""
    await js.publish(dlq_subject(original_subject), data, headers={"Trainyard-Error": printable(reason, 500)})
