"""The composition root: every process kind's parts, built from Settings. Tests build the same things with other
settings.

- `build_services(settings)`: the application, its command services and the query objects the API reads.
- `build_serve(settings, services, js)`: what `trainyard serve` runs beside the API (relay, projectors, report
  handling, reconciler, scheduler, study driver, policy), each with its health stage.
- `build_runner(settings, nc, js)`: one runner.
- `build_inference(settings, server_id)`: the inference server's state, feed and ASGI app.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
import logging
from typing import TYPE_CHECKING, Any

from infra.settings import Settings

# Each build_* imports its own parts: a runner or inference process must not load the API and the read models.
if TYPE_CHECKING:
    from api.deps import Services
    from commands.study_driver import StudyDriver
    from infra.report_server import ReportServer
    from runners.runner import Runner


log = logging.getLogger("trainyard.bootstrap")

STOP_GRACE_S = 3.0


async def wind_down(tasks: list[asyncio.Task], close: Callable[[], None], grace_s: float = STOP_GRACE_S) -> None:
    """A stopping process's last step, after its stop event is set: wait `grace_s` for `tasks` to finish, then
    `close` (its pools fail whatever waits on them: a task blocked on a PostgreSQL that is down, say) and cancel
    what is left, so a SIGTERM ends the process in seconds whatever state its engines are in."""
    pending = set(tasks)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace_s)
    if pending:
        log.warning("stop: %s still busy after %.0f s; closing the connections under them",
                    ", ".join(sorted(t.get_name() for t in pending)), grace_s)
    await asyncio.to_thread(close)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=grace_s)
    for task in tasks:  # what a task raised was logged by its stage; retrieve it so asyncio does not warn again
        if task.done() and not task.cancelled():
            task.exception()


def build_services(settings: Settings) -> Services:
    from api.deps import Services
    from commands.deployments import DeploymentCommands
    from commands.models import ModelCommands
    from commands.retrains import RetrainCommands
    from commands.schedules import ScheduleCommands
    from commands.studies import StudyCommands
    from commands.training import TrainingApplication
    from infra.clickhouse import connect as connect_clickhouse
    from infra.clock import clock_from
    from infra.fanout import Fanout
    from infra.leases import LeaseStore
    from infra.runner_registry import RUNNERS_DDL, RunnerRegistry
    from infra.postgres import DDL_LOCK, eventsourcing_env, pool as pg_pool
    from projections.deployments import DeploymentQueries
    from projections.job_queries import JobQueries
    from projections.models import ModelQueries
    from projections.read_models import READ_MODELS
    from projections.read_your_writes import AppliedPositions
    from projections.retrains import RetrainQueries
    from projections.schedules import ScheduleQueries
    from projections.usage import UsageQueries
    from projections.studies import StudyQueries
    from projections.telemetry.log_store import LogStore
    from projections.telemetry.metric_store import MetricStore
    from projections.telemetry.prediction_store import PredictionStore
    from projections.tracking import POISONED_DDL

    database_url, _ = settings.require_urls()
    app = TrainingApplication(env=eventsourcing_env(database_url))
    pool = pg_pool(database_url)
    leases = LeaseStore(database_url, settings.lease_ttl_s)  # before the queries: they read live progress from it
    with pool.connection() as conn:
        conn.execute(DDL_LOCK)
        for read_model in READ_MODELS:
            conn.execute(read_model.ddl)
        conn.execute(POISONED_DDL)  # shared by every view: made here, not by concurrently starting projections
        conn.execute(RUNNERS_DDL)
    ch = connect_clickhouse(settings.clickhouse_url, settings.chdb_path)
    metrics = MetricStore(ch, settings.metric_retention_days)
    metrics.ensure_schema()
    predictions = PredictionStore(ch, settings.prediction_retention_days)
    predictions.ensure_schema()
    logs = LogStore(ch, settings.log_retention_days)
    logs.ensure_schema()
    applied = AppliedPositions(database_url)
    identity, queries, auth = build_identity(settings, app, pool, applied)
    fanout = Fanout()
    for read_model in ("jobs", "studies", "deployments"):  # the live streams wake when their read model commits
        applied.watch(read_model, lambda name=read_model: fanout.notify(f"read-model:{name}"))
    deployment_commands = DeploymentCommands(app)
    retrain_commands = RetrainCommands(app, deployment_commands)
    schedule_commands = ScheduleCommands(app, clock_from(settings.scheduler_clock), settings.scheduler_grace_s,
                                         retrains=retrain_commands)
    return Services(settings, app, pool, JobQueries(pool), ch, metrics, logs, leases, StudyQueries(pool),
                    StudyCommands(app), ModelQueries(pool), ModelCommands(app), predictions, DeploymentQueries(pool),
                    deployment_commands, applied, identity, queries, auth, UsageQueries(pool), fanout=fanout,
                    runners=RunnerRegistry(pool), schedules=ScheduleQueries(pool), schedule_commands=schedule_commands,
                    retrains=RetrainQueries(pool), retrain_commands=retrain_commands)


ADMIN_TOKEN_FILE = "admin-token"


def access_tokens(settings: Settings) -> Any:
    """The access-token signer every process of a data dir shares (its secret: settings or a 0600 file)."""
    from commands.credentials import AccessTokens
    from infra.secret_files import read_or_create

    secret = settings.jwt_secret or read_or_create(settings.data_dir / "jwt-secret")
    return AccessTokens(secret.encode(), ttl_s=settings.access_token_ttl_s)


def build_identity(settings: Settings, app: Any, pool: Any, applied: Any) -> tuple[Any, Any, Any]:
    """Identity commands, queries and the request path's authenticator. On a store without users yet, the first
    owner and the default project are made and the owner's token written to <data_dir>/admin-token (0600)."""
    from api.auth import Authenticator
    from commands.context import SYSTEM
    from commands.identity import IdentityCommands
    from infra.secret_files import write_private
    from projections.identity import IdentityCache, IdentityQueries

    signer = access_tokens(settings)
    identity = IdentityCommands(app, signer)
    token = identity.first_start(SYSTEM)
    if token is not None:
        path = settings.data_dir / ADMIN_TOKEN_FILE
        write_private(path, token + "\n")
        log.warning("first start: owner 'admin' and project 'default' created; the owner's API token is in %s",
                    path.absolute())
    queries = IdentityQueries(pool)
    cache = IdentityCache(queries)
    cache.start(applied)
    oidc = None
    if settings.oidc_issuer and settings.oidc_jwks_url:
        from commands.credentials import OidcTokens

        oidc = OidcTokens(settings.oidc_issuer, settings.oidc_jwks_url, settings.oidc_audience,
                          settings.oidc_user_claim)
    return identity, queries, Authenticator(cache, signer, oidc)


@dataclass
class ServeParts:
    """What serve runs beside the API: `tasks` (name → `run(stop)`, each an asyncio task until `stop` is set) and
    the report server (started on the NATS connection)."""
    tasks: dict[str, Callable[[asyncio.Event], Awaitable[None]]]
    reports: ReportServer


def follow_events(js: Any, driver: StudyDriver, stop: asyncio.Event) -> Awaitable[None]:
    """The study driver's events: every domain event, one at a time (a lingering fetch of more waits for them all),
    each synced then acked; a malformed one dead-lettered at once, one whose sync keeps failing after 5 tries. The
    periodic refresh runs between fetches."""
    from pydantic import TypeAdapter

    from commands.study_driver import MalformedEvent
    from infra.consumer import Consumer
    from infra.messaging import EVENTS_STREAM, STUDY_DRIVER_CONSUMER

    events: Consumer[dict[str, Any]] = Consumer(
        js, EVENTS_STREAM, STUDY_DRIVER_CONSUMER, TypeAdapter(dict[str, Any]), driver.stage, name="study driver",
        max_deliveries=5, retry_delay=lambda deliveries: 0.5 * deliveries, in_progress_s=10.0,
        poison=(MalformedEvent,))
    return events.run(driver.handle, stop, batch=1, timeout=0.2, between=driver.refresh)


def build_serve(settings: Settings, services: Services, js: Any) -> ServeParts:
    from commands.ab_policy import PolicyEngine
    from projections.deployments import PolicyEvaluations
    from commands.reconciler import Reconciler
    from commands.reports import ReportHandler
    from commands.retrain_driver import RetrainDriver
    from commands.scheduler import Scheduler
    from commands.study_driver import StudyDriver
    from commands.training import TrainingApplication
    from infra.messaging import StreamKeeper, WorkStream
    from infra.report_server import ReportServer
    from projections.hosting import ProjectionProcess
    from projections.read_models import process_specs
    from projections.relay import EagerWork, Relay
    from projections.telemetry.ab_queries import variant_stats
    from projections.telemetry.projectors import (FeedbackProjector, LogsProjector, MetricsProjector,
                                                  PredictionsProjector)
    from projections.work_queries import WorkQueries

    database_url, _ = settings.require_urls()
    health, stuck = services.health, settings.stuck_after_s

    def stage(name: str, after: float = stuck, loops: bool = True) -> Any:
        return health.stage(name, stuck_after_s=after, loops=loops)

    specs = process_specs(TrainingApplication)
    projections = ProjectionProcess(specs, database_url, {name: stage(name) for name, *_ in specs}, stuck)
    driver = StudyDriver(services.app, services.studies, stage("study-driver"), metrics=services.metrics)
    services.app.on_saved = EagerWork(js, asyncio.get_running_loop())  # work items out before the relay's round
    tasks = {
        "streams": StreamKeeper(js, settings, stage("streams", max(stuck, 5 * settings.stream_check_s))),
        "projections": projections,
        "relay": Relay(services.app, js, services.pool, stage("relay")),
        "metrics-projector": MetricsProjector(js, services.metrics, stage("metrics-projector"),
                                              fanout=services.fanout),
        "logs-projector": LogsProjector(js, services.logs, stage("logs-projector"), fanout=services.fanout),
        "predictions-projector": PredictionsProjector(js, services.predictions, stage("predictions-projector")),
        "feedback-projector": FeedbackProjector(js, services.predictions, stage("feedback-projector")),
        "policy": PolicyEngine(services.deployment_commands, services.deployments,
                               lambda name, metric, since, until: variant_stats(services.clickhouse, name, metric,
                                                                                since, until),
                               stage("policy", max(stuck, 5 * settings.policy_interval_s)),
                               PolicyEvaluations(services.pool), settings.policy_interval_s),
        "scheduler": Scheduler(services.schedule_commands, services.schedules, services.schedule_commands.clock,
                               stage("scheduler")),
        "retrain-driver": RetrainDriver(services.retrain_commands, services.retrains, stage("retrain-driver")),
        "reconciler": Reconciler(services.app, services.leases, WorkQueries(services.pool), WorkStream(js),
                                 stage("reconciler", max(stuck, 5 * settings.reconcile_interval_s)),
                                 settings.reconcile_interval_s, settings.requeue_after_s),
    }
    from api.quotas import may_start

    reports = ReportServer(ReportHandler(services.app, services.leases, stage("reports", loops=False), studies=driver,
                                         may_start=lambda project: may_start(services, project)))
    runs = {name: part.run for name, part in tasks.items()}
    runs["study-driver"] = lambda stop: driver.run(follow_events(js, driver, stop))
    return ServeParts(runs, reports)


@dataclass
class InferenceParts:
    health: Any
    telemetry_stage: Any
    pool: Any
    state: Any
    telemetry: Any
    feed: Any
    app: Any


def build_inference(settings: Settings, server_id: str) -> InferenceParts:
    """The inference server's parts: serving state over the artifact store, the prediction telemetry buffer, the
    deployment feed (reads the deployments read model) and the ASGI app, with their health stages."""
    import os

    from infra.health import Health
    from infra.postgres import DDL_LOCK, pool as pg_pool
    from projections.deployments import DEPLOYMENTS_DDL, DeploymentQueries
    from runners.artifacts import LocalArtifactStore
    from serving.app import InferenceApp, parse_test_delays
    from serving.feed import Feed
    from serving.state import ModelLoader, ServingState, Telemetry

    database_url, _ = settings.require_urls()
    health = Health()
    feed_stage = health.stage("deployment-feed", stuck_after_s=settings.stuck_after_s)
    telemetry_stage = health.stage("prediction-telemetry", stuck_after_s=settings.stuck_after_s, loops=True)
    pool = pg_pool(database_url)
    with pool.connection() as conn:
        conn.execute(DDL_LOCK)
        conn.execute(DEPLOYMENTS_DDL)
    state = ServingState(ModelLoader(LocalArtifactStore(settings.artifacts).get))
    telemetry = Telemetry(f"{server_id}-{os.getpid()}")
    feed = Feed(state, DeploymentQueries(pool), feed_stage)
    app = InferenceApp(state, telemetry, health, test_delays=parse_test_delays(settings.inference_test_delay))
    return InferenceParts(health, telemetry_stage, pool, state, telemetry, feed, app)


def build_runner(settings: Settings, nc: Any, js: Any) -> Runner:
    from runners.artifacts import LocalArtifactStore
    from runners.checkpoints import CheckpointStore
    from runners.capabilities import detect
    from runners.runner import Runner

    from infra.code_bundles import BundleLimits

    roots = getattr(settings, "dataset_root_paths", ())
    limits = BundleLimits(max_bytes=settings.max_code_bytes, max_files=settings.max_code_files,
                          max_unpacked_bytes=settings.max_code_unpacked_bytes)
    return Runner(nc, js, LocalArtifactStore(settings.artifacts), settings.lease_ttl_s, dataset_roots=roots,
                  accepts_code=settings.runner_accepts == "all", code_root=settings.code_root, bundle_limits=limits,
                  checkpoints=CheckpointStore(settings.artifacts, keep=settings.checkpoint_keep),
                  checkpoint_every=(settings.checkpoint_every_steps, settings.checkpoint_every_s),
                  capabilities=detect(settings), hello_s=settings.runner_hello_s)
