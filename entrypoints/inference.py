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

import uvicorn
from nats.js import JetStreamContext

from domain.contract import TELEMETRY_PREDICTIONS
from entrypoints.bootstrap import build_inference
from infra.health import Stage, stopped_within
from infra.messaging import connect, ensure_streams
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


async def serve_inference(settings: Settings) -> None:
    _, nats_url = settings.require_urls()
    # A restarted server (same data dir and port) resumes its own durable consumer; other servers have theirs.
    server_id = f"inference-{settings.inference_port}-{hashlib.sha1(str(settings.data_dir.absolute()).encode()).hexdigest()[:8]}"
    parts = build_inference(settings, server_id)
    pool, state, telemetry, feed = parts.pool, parts.state, parts.telemetry, parts.feed
    await asyncio.to_thread(feed.reload)
    nc, js = await connect(nats_url, server_id)
    await ensure_streams(js, settings)
    stop = asyncio.Event()
    app = parts.app
    tasks = [asyncio.create_task(feed.follow(js, server_id, stop), name="feed"),
             asyncio.create_task(feed.reload_every(RELOAD_S, stop), name="reload"),
             asyncio.create_task(publish_telemetry(js, telemetry, parts.telemetry_stage, stop), name="telemetry"),
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


