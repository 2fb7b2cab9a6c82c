"""`trainyard serve-inference`: the inference server process (serving/app.py over serving/state.py).

On start it loads every active deployment and live API key from the read models (PostgreSQL), then follows
`trainyard.v1.deployment.*` and `trainyard.v1.api_key.*` on its own durable JetStream consumer
(`inference-<port>`), applying each change as it comes (a stale event — an older aggregate version — is ignored,
so a redelivery or the overlap with the reload is harmless; a malformed one is dead-lettered). The read model is
read again every `RELOAD_S` as a safety net. Prediction records are published in batches to
`trainyard.v1.telemetry.predictions` off the request path; while NATS is away they wait in a bounded buffer (what
overflows is dropped and counted in /readyz), and predictions go on.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import uvicorn
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.app import InferenceApp, parse_test_delays
from domain.contract import TELEMETRY_PREDICTIONS, printable
from infra.health import Health, Stage, stopped_within
from infra.messaging import EVENTS_STREAM, connect, dead_letter, ensure_streams, pulled
from infra.postgres import DDL_LOCK, pool as pg_pool
from infra.settings import Settings
from projections.deployments import DEPLOYMENTS_DDL, DeploymentQueries
from runners.artifacts import LocalArtifactStore
from serving.state import ModelLoader, ServingState, Telemetry

log = logging.getLogger("trainyard.inference")
RELOAD_S = 10.0
FLUSH_S = 1.0  # prediction records go out once a second (fewer, larger ClickHouse inserts downstream)
FEED_SUBJECTS = ["trainyard.v1.deployment.>", "trainyard.v1.api_key.>"]
MAX_EVENT_BYTES = 4 * 1024 * 1024
MAX_PAYLOAD = 900_000  # under NATS' default max_payload (1 MB): a bigger batch is split


class _Server(uvicorn.Server):
    """Signals are ours (below): uvicorn's own handling would re-raise SIGTERM and skip the shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Event(BaseModel):
    """The part of the public envelope the feed reads (docs/asyncapi.json); anything else is ignored."""

    model_config = ConfigDict(extra="ignore")
    aggregate: str = Field(max_length=50)
    aggregate_id: UUID
    aggregate_version: int = Field(ge=1, le=2**31 - 1)
    type: str = Field(max_length=100)
    payload: dict[str, Any]


class Feed:
    """Deployment and API-key changes, from the read model (reload) and the event stream (follow)."""

    def __init__(self, state: ServingState, queries: DeploymentQueries, stage: Stage) -> None:
        self.state, self.queries, self.stage = state, queries, stage
        self.names: dict[UUID, str] = {}  # deployment id → name (Revised events carry only the id)

    def reload(self) -> None:
        """Everything the read model says now (blocking: loads ONNX sessions)."""
        for row in self.queries.list():
            self.names[row["id"]] = row["name"]
            self.state.apply_deployment({k: row[k] for k in ("name", "revision", "active", "variants", "shadow")},
                                        row["version"])
        live = {str(r["id"]): r for r in self.queries.live_keys()}
        for key_id, row in live.items():
            self.state.apply_key(key_id, row["version"], row)
        for key_id, state in list(self.state.keys.items()):  # revoked while we were not listening
            if state.key_id not in live:
                self.state.apply_key(state.key_id, state.version + 1, None)

    def apply(self, e: _Event) -> None:
        """One event (blocking: may load ONNX sessions). ValueError/KeyError for a payload it cannot use."""
        p, version = e.payload, e.aggregate_version
        if e.aggregate == "deployment":
            name = p.get("name") or self.names.get(e.aggregate_id)
            if e.type == "deployment.created":
                self.names[e.aggregate_id] = name
            if name is None:
                raise ValueError(f"deployment {e.aggregate_id}: unknown name (its created event never came)")
            if e.type == "deployment.deactivated":
                self.state.apply_deployment({"name": name, "active": False}, version)
            elif e.type in ("deployment.created", "deployment.revised"):
                self.state.apply_deployment({"name": name, "revision": p["revision"], "active": True,
                                             "variants": p["variants"], "shadow": p.get("shadow")}, version)
        elif e.aggregate == "api_key":
            if e.type == "api_key.created":
                self.state.apply_key(str(e.aggregate_id), version, p)
            elif e.type == "api_key.revoked":
                self.state.apply_key(str(e.aggregate_id), version, None)

    async def follow(self, js: JetStreamContext, durable: str, stop: asyncio.Event) -> None:
        config = ConsumerConfig(durable_name=durable, filter_subjects=FEED_SUBJECTS, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=60, max_deliver=-1)
        await js.add_consumer(EVENTS_STREAM, config)
        sub = await js.pull_subscribe_bind(durable, stream=EVENTS_STREAM)
        async for msgs in pulled(sub, stop, 100, timeout=0.5):
            for msg in msgs:
                try:
                    if len(msg.data) > MAX_EVENT_BYTES:
                        raise ValueError(f"event of {len(msg.data):,} bytes")
                    event = _Event.model_validate_json(msg.data)
                    await asyncio.to_thread(self.apply, event)
                except (ValidationError, ValueError, KeyError, TypeError) as err:
                    reason = printable(f"{type(err).__name__}: {err}", 300)
                    log.warning("inference feed: %s dead-lettered: %s", msg.subject, reason)
                    with contextlib.suppress(Exception):
                        await dead_letter(js, msg.subject, msg.data, reason)
                    self.stage.poisoned_one(reason)
                await msg.ack()
                self.stage.progressed()

    async def reload_every(self, seconds: float, stop: asyncio.Event) -> None:
        while not await stopped_within(stop, seconds):
            try:
                await asyncio.to_thread(self.reload)
            except Exception as e:  # the database is away: the feed still runs
                self.stage.failed(e)


async def publish_telemetry(js: JetStreamContext, telemetry: Telemetry, stage: Stage, stop: asyncio.Event) -> None:
    """Every FLUSH_S, the buffered records as batches; a batch that fails is retried with the same id."""
    while True:
        stopping = stop.is_set()
        try:
            while (batch := telemetry.take()) is not None:
                data = batch.model_dump_json().encode()
                if len(data) > MAX_PAYLOAD and batch.size > 1:
                    telemetry.split_oldest()
                    continue
                await js.publish(TELEMETRY_PREDICTIONS, data, headers={"Nats-Msg-Id": batch.batch_id}, timeout=2)
                telemetry.published_one()
                stage.progressed()
        except Exception as e:
            stage.failed(e)
        if stopping:
            return
        await stopped_within(stop, FLUSH_S)
        stage.tick()


async def serve_inference(settings: Settings) -> None:
    database_url, nats_url = settings.require_urls()
    # A restarted server (same data dir and port) resumes its own durable consumer; other servers have theirs.
    server_id = f"inference-{settings.inference_port}-{hashlib.sha1(str(settings.data_dir.absolute()).encode()).hexdigest()[:8]}"
    health = Health()
    feed_stage = health.stage("deployment-feed", stuck_after_s=settings.stuck_after_s)
    telemetry_stage = health.stage("prediction-telemetry", stuck_after_s=settings.stuck_after_s, loops=True)
    pool = pg_pool(database_url)
    with pool.connection() as conn:
        conn.execute(DDL_LOCK)
        conn.execute(DEPLOYMENTS_DDL)
    artifacts = LocalArtifactStore(settings.artifacts)
    state = ServingState(ModelLoader(artifacts.get))
    telemetry = Telemetry(f"{server_id}-{os.getpid()}")
    feed = Feed(state, DeploymentQueries(pool), feed_stage)
    await asyncio.to_thread(feed.reload)
    nc, js = await connect(nats_url, server_id)
    await ensure_streams(js, settings)
    stop = asyncio.Event()
    app = InferenceApp(state, telemetry, health, test_delays=parse_test_delays(settings.inference_test_delay))
    tasks = [asyncio.create_task(feed.follow(js, server_id, stop), name="feed"),
             asyncio.create_task(feed.reload_every(RELOAD_S, stop), name="reload"),
             asyncio.create_task(publish_telemetry(js, telemetry, telemetry_stage, stop), name="telemetry"),
             asyncio.create_task(app.run_shadows(stop), name="shadows")]
    config = uvicorn.Config(app, host=settings.api_host, port=settings.inference_port, log_level="warning",
                            access_log=False, http="httptools", loop="none", lifespan="off")
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("inference server listening on http://%s:%d (%d deployments)", settings.api_host,
             settings.inference_port, len(state.deployments))
    try:
        await server.serve()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()
        pool.close()
        log.info("inference server stopped (%d prediction records dropped)", telemetry.dropped)


