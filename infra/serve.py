"""`trainyard serve`: the API with the relay, the projectors and the runner-report handlers.

They share a process because chDB is in-process and single-owner: the process that owns it runs
the ClickHouse projections and the queries that read them (design decision 6). With an external
ClickHouse each part could run alone; they are independent asyncio tasks and threads here.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from eventsourcing.projection import ProjectionRunner

from api.app import create_app
from commands.runner_reports import serve_dead_work, serve_reports
from commands.training import TrainingApplication
from infra.bootstrap import build
from infra.messaging import connect, ensure_streams
from infra.postgres import eventsourcing_env
from infra.settings import Settings
from projections.jobs import JobsProjection, JobsView
from projections.metrics import MetricsProjector
from projections.relay import Relay

log = logging.getLogger("trainyard.serve")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after serving, which would skip our shutdown; we handle signals ourselves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class JobsProjector:
    """Runs the jobs projection (eventsourcing's ProjectionRunner, threads) and restarts it if it dies."""

    def __init__(self, database_url: str) -> None:
        self.env = eventsourcing_env(database_url)
        self.runner: ProjectionRunner | None = None

    def _start(self) -> None:
        runner = ProjectionRunner(application_class=TrainingApplication, projection_class=JobsProjection,
                                  view_class=JobsView, env=self.env)
        self.runner = runner.__enter__()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self._start)
                while not stop.is_set() and not self.runner.is_interrupted.is_set():  # type: ignore[union-attr]
                    await asyncio.sleep(0.5)
                if not stop.is_set():
                    log.error("jobs projection stopped: %r; restarting", self.runner._thread_error)  # type: ignore[union-attr]
            except Exception:
                log.exception("jobs projection failed to start; retrying")
            finally:
                self.close()
            if not stop.is_set():
                await asyncio.sleep(1.0)

    def close(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            runner.stop()
            try:
                runner.__exit__(None, None, None)
            except Exception as e:
                log.warning("jobs projection ended with %r", e)


async def serve(settings: Settings) -> None:
    database_url, nats_url = settings.require_urls()
    services = await asyncio.to_thread(build, settings)
    nc, js = await connect(nats_url, "trainyard-serve")
    await ensure_streams(js, settings)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(JobsProjector(database_url).run(stop), name="jobs-projection"),
        asyncio.create_task(Relay(services.app, js, services.pool).run(stop), name="relay"),
        asyncio.create_task(MetricsProjector(js, services.metrics).run(stop), name="metrics-projector"),
    ]
    await serve_reports(nc, services.app)
    await serve_dead_work(nc, js, services.app)
    config = uvicorn.Config(create_app(services, nc), host=settings.api_host, port=settings.api_port,
                            log_level="warning", lifespan="off")
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("API listening on http://%s:%d", settings.api_host, settings.api_port)
    try:
        await server.serve()  # returns on SIGINT/SIGTERM
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()
        services.close()
        log.info("serve stopped")
