"""What the routes depend on: the `Services` the composition root (entrypoints/bootstrap.py) builds for the API,
and the FastAPI dependency aliases that hand them to a route."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from commands.deployments import DeploymentCommands
from commands.models import ModelCommands
from commands.studies import StudyCommands
from commands.training import TrainingApplication
from infra.clickhouse import ClickHouse
from infra.fanout import Fanout
from infra.health import Health
from infra.leases import LeaseStore
from infra.settings import Settings
from projections.deployments import DeploymentQueries
from projections.job_queries import JobQueries
from projections.telemetry.log_store import LogStore
from projections.telemetry.metric_store import MetricStore
from projections.models import ModelQueries
from projections.telemetry.prediction_store import PredictionStore
from projections.read_your_writes import AppliedPositions
from projections.studies import StudyQueries

READ_YOUR_WRITES_TIMEOUT_S = 5.0


@dataclass
class Services:
    settings: Settings
    app: TrainingApplication
    pool: ConnectionPool
    jobs: JobQueries
    clickhouse: ClickHouse
    metrics: MetricStore
    logs: LogStore  # training log lines (ClickHouse)
    leases: LeaseStore
    studies: StudyQueries
    study_commands: StudyCommands
    models: ModelQueries
    model_commands: ModelCommands
    predictions: PredictionStore
    deployments: DeploymentQueries
    deployment_commands: DeploymentCommands
    applied: AppliedPositions  # read-your-writes: how far each read model has got
    identity: Any = None  # commands.identity.IdentityCommands
    identity_queries: Any = None  # projections.identity.IdentityQueries
    auth: Any = None  # api.auth.Authenticator (the identity cache and the access-token signer)
    usage: Any = None  # projections.usage.UsageQueries (quotas)
    runners: Any = None  # infra.runner_registry.RunnerRegistry: the runners heard from and what they have
    schedules: Any = None  # projections.schedules.ScheduleQueries
    schedule_commands: Any = None  # commands.schedules.ScheduleCommands
    retrains: Any = None  # projections.retrains.RetrainQueries
    retrain_commands: Any = None  # commands.retrains.RetrainCommands
    health: Health = field(default_factory=Health)
    fanout: Fanout = field(default_factory=Fanout)  # wakes the live streams (api/streams.py)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.cache.close()
        self.applied.close()
        self.pool.close()
        self.leases.close()
        self.clickhouse.close()
        self.app.close()


def services(request: Request) -> Services:
    return request.app.state.services


async def get_services(request: Request) -> Services:  # async: no I/O, so no hop to the threadpool
    return services(request)


ServicesDep = Annotated[Services, Depends(get_services)]
