"""`trainyard serve`: the API with the relay, the projectors, the report handlers, the reconciler and the study
driver.

They share a process because chDB is in-process and single-owner: the process that owns it runs the ClickHouse
projections and the queries that read them (design decision 6). With an external ClickHouse each part could run
alone; they are independent asyncio tasks and threads here, each reporting its health to `/readyz`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from api.app import create_app
from entrypoints.bootstrap import build_serve, build_services, wind_down
from entrypoints.http_server import server_config
from infra.messaging import connect, credentials, ensure_streams
from infra.settings import Settings

log = logging.getLogger("trainyard.serve")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after serving, which would skip our shutdown; we handle signals ourselves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings) -> None:
    database_url, nats_url = settings.require_urls()
    services = await asyncio.to_thread(build_services, settings)
    nc, js = await connect(nats_url, "trainyard-serve", credentials(settings))
    await ensure_streams(js, settings)
    stop = asyncio.Event()
    parts = build_serve(settings, services, js)
    tasks = [asyncio.create_task(run(stop), name=name) for name, run in parts.tasks.items()]
    reports = parts.reports
    await reports.start(nc)
    await services.runners.listen(nc)  # what each runner has: a job no runner can hold is refused at submit
    config = server_config(create_app(services, nc), settings, settings.api_port, log_level="warning")
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("API listening on http://%s:%d", settings.api_host, settings.api_port)
    try:
        await server.serve()  # returns on SIGINT/SIGTERM
    finally:
        stop.set()
        await wind_down(tasks, services.close)
        with contextlib.suppress(Exception):
            await nc.close()
        reports.close()
        log.info("serve stopped")
