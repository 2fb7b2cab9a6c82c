"""Wiring: build Trainyard's command and query parts from Settings. Tests build the same things with other settings."""
from __future__ import annotations

from psycopg_pool import ConnectionPool

from api.deps import Services
from commands.deployments import DeploymentCommands
from infra.leases import LeaseStore
from commands.models import ModelCommands
from commands.studies import StudyCommands
from commands.training import TrainingApplication
from infra.clickhouse import ClickHouse, connect as connect_clickhouse
from infra.health import Health
from infra.postgres import DDL_LOCK, eventsourcing_env, pool as pg_pool
from infra.settings import Settings
from projections.deployments import DEPLOYMENTS_DDL, DeploymentQueries
from projections.job_queries import JobQueries
from projections.jobs import JOBS_DDL
from projections.telemetry.metric_store import MetricStore
from projections.models import MODELS_DDL, ModelQueries
from projections.telemetry.prediction_store import PredictionStore
from projections.read_your_writes import AppliedPositions
from projections.studies import STUDIES_DDL, StudyQueries
from projections.tracking import POISONED_DDL


def build(settings: Settings) -> Services:
    database_url, _ = settings.require_urls()
    app = TrainingApplication(env=eventsourcing_env(database_url))
    pool = pg_pool(database_url)
    leases = LeaseStore(database_url, settings.lease_ttl_s)  # before the queries: they read live progress from it
    with pool.connection() as conn:
        conn.execute(DDL_LOCK)
        conn.execute(JOBS_DDL)  # queries may run before the projections' first events
        conn.execute(STUDIES_DDL)
        conn.execute(MODELS_DDL)
        conn.execute(DEPLOYMENTS_DDL)
        conn.execute(POISONED_DDL)  # shared by every view: made here, not by concurrently starting projections
    ch = connect_clickhouse(settings.clickhouse_url, settings.chdb_path)
    metrics = MetricStore(ch)
    metrics.ensure_schema()
    predictions = PredictionStore(ch)
    predictions.ensure_schema()
    return Services(settings, app, pool, JobQueries(pool), ch, metrics, leases, StudyQueries(pool), StudyCommands(app),
                    ModelQueries(pool), ModelCommands(app), predictions, DeploymentQueries(pool),
                    DeploymentCommands(app), AppliedPositions(database_url))
