"""The PostgreSQL read models, listed once: serve runs each in its projection process, the bootstrap creates their
tables before any query runs, and the replay tooling rebuilds them. A new read model plugs in here."""
from __future__ import annotations

from dataclasses import dataclass

from projections.identity import IDENTITY_DDL, IdentityProjection, IdentityView
from projections.deployments import DEPLOYMENTS_DDL, DeploymentsProjection, DeploymentsView
from projections.jobs import JOBS_DDL, JobsProjection, JobsView
from projections.models import MODELS_DDL, ModelsProjection, ModelsView
from projections.retrains import RETRAINS_DDL
from projections.schedules import SCHEDULES_DDL, SchedulesProjection, SchedulesView
from projections.studies import STUDIES_DDL, StudiesProjection, StudiesView


@dataclass(frozen=True)
class ReadModel:
    projection: type
    view: type
    ddl: str  # its tables, made by the bootstrap: queries may run before the projection's first event

    @property
    def name(self) -> str:
        return self.projection.name

    @property
    def stage(self) -> str:
        """Its health stage in /readyz."""
        return f"projection:{self.name}"


READ_MODELS: tuple[ReadModel, ...] = (
    ReadModel(JobsProjection, JobsView, JOBS_DDL),
    ReadModel(StudiesProjection, StudiesView, STUDIES_DDL),
    ReadModel(ModelsProjection, ModelsView, MODELS_DDL),
    ReadModel(DeploymentsProjection, DeploymentsView, DEPLOYMENTS_DDL + RETRAINS_DDL),  # with its retrains
    ReadModel(IdentityProjection, IdentityView, IDENTITY_DDL),
    ReadModel(SchedulesProjection, SchedulesView, SCHEDULES_DDL),
)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def process_specs(application_class: type) -> list[tuple[str, str, str, str]]:
    """(stage, application, projection, view) as importable paths, for the projection process's child."""
    return [(rm.stage, _path(application_class), _path(rm.projection), _path(rm.view)) for rm in READ_MODELS]
