"""`trainyard serve-inference`: the inference server process (serving/app.py over serving/state.py).

On start it loads every active deployment and live API key from the read models (PostgreSQL), then follows
`trainyard.v1.deployment.*` and `trainyard.v1.api_key.*` on its own durable JetStream consumer
(`inference-<port>-<data dir digest>`), reloading from the read models when one says something changed (an event
is a hint, never a state: serving/feed.py). Prediction records are
published in batches to `trainyard.v1.telemetry.predictions` off the request path; while NATS is away they wait in
a bounded buffer (what overflows is dropped and counted in /readyz), and predictions go on.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn
from nats.js import JetStreamContext

from domain.contract import TELEMETRY_PREDICTIONS
from entrypoints.bootstrap import build_inference, wind_down
from entrypoints.http_server import server_config
from infra.health import Stage, stopped_within
from infra.http_edge import EdgeGuard
from infra.messaging import EVENTS_STREAM, TELEMETRY_STREAM, connect, credentials, ensure_streams, wait_for
from infra.settings import Settings
from serving.feed import RELOAD_S
from serving.state import Telemetry

log = logging.getLogger("trainyard.inference")
FLUSH_S = 1.0  # prediction records go out once a second (fewer, larger ClickHouse inserts downstream)
MAX_PAYLOAD = 900_000  # under NATS' default max_payload (1 MB): a bigger batch is split


class _Server(uvicorn.Server):
    """Signals are ours (below): uvicorn's own handling would re-raise SIGTERM and skip the shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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


def edge_app(app: Any, settings: Settings) -> EdgeGuard:
    """The inference app behind the shared HTTP edge: trusted hosts, one credential per request, and no
    form-encoded predict (infra/http_edge.py)."""
    return EdgeGuard(app, settings.allowed_host_list)


async def serve_inference(settings: Settings) -> None:
    _, nats_url = settings.require_urls()
    # A restarted server (same data dir and port) resumes its own durable consumer; other servers have theirs.
    server_id = f"inference-{settings.inference_port}-{hashlib.sha1(str(settings.data_dir.absolute()).encode()).hexdigest()[:8]}"
    parts = build_inference(settings, server_id)
    pool, state, telemetry, feed = parts.pool, parts.state, parts.telemetry, parts.feed
    await asyncio.to_thread(feed.reload)
    creds = credentials(settings)
    nc, js = await connect(nats_url, server_id, creds)
    if creds is None:  # an open bus: whoever starts first creates the streams
        await ensure_streams(js, settings)
    else:  # the inference server's NATS user may not administer streams: the service makes them
        await wait_for(js, EVENTS_STREAM)
        await wait_for(js, TELEMETRY_STREAM)
    stop = asyncio.Event()
    app = parts.app
    tasks = [asyncio.create_task(feed.follow(js, server_id, stop), name="feed"),
             asyncio.create_task(feed.reload_every(RELOAD_S, stop), name="reload"),
             asyncio.create_task(publish_telemetry(js, telemetry, parts.telemetry_stage, stop), name="telemetry"),
             asyncio.create_task(app.run_shadows(stop), name="shadows")]
    config = server_config(edge_app(app, settings), settings, settings.inference_port, log_level="warning",
                           access_log=False, loop="none")
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
        await wind_down(tasks, pool.close)
        with contextlib.suppress(Exception):
            await nc.close()
        log.info("inference server stopped (%d prediction records dropped)", telemetry.dropped)


