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
from collections.abc import Awaitable, Iterator
from typing import Any

import uvicorn
from nats.js import JetStreamContext
from pydantic import TypeAdapter

from api.app import create_app
from commands.ab_policy import PolicyEngine
from commands.reconciler import Reconciler
from commands.reports import ReportHandler, ReportServer
from commands.study_driver import MalformedEvent, StudyDriver
from entrypoints.bootstrap import build
from infra.consumer import Consumer
from infra.messaging import EVENTS_STREAM, STUDY_DRIVER_CONSUMER, WorkStream, connect, ensure_streams
from infra.settings import Settings
from projections.hosting import ProjectionProcess
from projections.relay import EagerWork, Relay
from projections.telemetry.projectors import FeedbackProjector, MetricsProjector, PredictionsProjector
from projections.work_queries import WorkQueries

log = logging.getLogger("trainyard.serve")
# The PostgreSQL read models, run in serve's projection process: (stage, application, projection, view).
READ_MODELS = [
    ("projection:jobs", "commands.training.TrainingApplication", "projections.jobs.JobsProjection",
     "projections.jobs.JobsView"),
    ("projection:studies", "commands.training.TrainingApplication", "projections.studies.StudiesProjection",
     "projections.studies.StudiesView"),
    ("projection:models", "commands.training.TrainingApplication", "projections.models.ModelsProjection",
     "projections.models.ModelsView"),
    ("projection:deployments", "commands.training.TrainingApplication",
     "projections.deployments.DeploymentsProjection", "projections.deployments.DeploymentsView"),
]


def follow_events(js: JetStreamContext, driver: StudyDriver, stop: asyncio.Event) -> Awaitable[None]:
    """The study driver's events: every domain event, one at a time (a lingering fetch of more waits for them all),
    each synced then acked; a malformed one dead-lettered at once, one whose sync keeps failing after 5 tries. The
    periodic refresh runs between fetches."""
    events: Consumer[dict[str, Any]] = Consumer(
        js, EVENTS_STREAM, STUDY_DRIVER_CONSUMER, TypeAdapter(dict[str, Any]), driver.stage, name="study driver",
        max_deliveries=5, retry_delay=lambda deliveries: 0.5 * deliveries, in_progress_s=10.0,
        poison=(MalformedEvent,))
    return events.run(driver.handle, stop, batch=1, timeout=0.2, between=driver.refresh)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after serving, which would skip our shutdown; we handle signals ourselves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings) -> None:
    database_url, nats_url = settings.require_urls()
    services = await asyncio.to_thread(build, settings)
    health, stuck = services.health, settings.stuck_after_s
    nc, js = await connect(nats_url, "trainyard-serve")
    await ensure_streams(js, settings)
    stop = asyncio.Event()
    projections = ProjectionProcess(READ_MODELS, database_url,
                                    {name: health.stage(name, stuck_after_s=stuck, loops=True)
                                     for name, *_ in READ_MODELS}, stuck)
    driver = StudyDriver(services.app, services.studies,
                         health.stage("study-driver", stuck_after_s=stuck, loops=True), metrics=services.metrics)
    relay = Relay(services.app, js, services.pool, health.stage("relay", stuck_after_s=stuck, loops=True))
    services.app.on_saved = EagerWork(js, asyncio.get_running_loop())  # work items out before the relay's round
    metrics = MetricsProjector(js, services.metrics, health.stage("metrics-projector", stuck_after_s=stuck, loops=True))
    predictions = PredictionsProjector(js, services.predictions,
                                       health.stage("predictions-projector", stuck_after_s=stuck, loops=True))
    feedback = FeedbackProjector(js, services.predictions,
                                 health.stage("feedback-projector", stuck_after_s=stuck, loops=True))
    policy = PolicyEngine(services.deployment_commands, services.deployments, services.clickhouse,
                          health.stage("policy", stuck_after_s=max(stuck, 5 * settings.policy_interval_s), loops=True),
                          settings.policy_interval_s)
    reconciler = Reconciler(services.app, services.leases, WorkQueries(services.pool), WorkStream(js),
                            health.stage("reconciler", stuck_after_s=max(stuck, 5 * settings.reconcile_interval_s),
                                         loops=True),
                            settings.reconcile_interval_s, settings.requeue_after_s)
    reports = ReportServer(ReportHandler(services.app, services.leases, health.stage("reports", stuck_after_s=stuck),
                                         studies=driver))
    tasks = [asyncio.create_task(part.run(stop), name=name) for name, part in
             (("projections", projections), ("relay", relay),
              ("metrics-projector", metrics), ("predictions-projector", predictions), ("feedback-projector", feedback),
              ("reconciler", reconciler), ("policy", policy))]
    tasks.append(asyncio.create_task(driver.run(follow_events(js, driver, stop)), name="study-driver"))
    await reports.start(nc)
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
        reports.close()
        services.close()
        log.info("serve stopped")
