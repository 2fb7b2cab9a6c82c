"""The `retrains` read model: one row per retrain (its request, status, the gate's verdict and figures, the version,
export and challenger it led to), written by the deployments projection with its tracking position
(projections/deployments.py); and the queries the API and the retrain driver read. Updates are guarded by the
retrain's version, so an event processed twice changes nothing and a replay from zero rebuilds the same table.
"""
from __future__ import annotations

from functools import singledispatch
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from domain.retrain import Retrain, RetrainStatus
from projections.id_prefix import filtered_page
from projections.tracking import topics_of

RETRAINS_DDL = """
CREATE TABLE IF NOT EXISTS retrains (
    id uuid PRIMARY KEY, project text NOT NULL, deployment text NOT NULL, variant text NOT NULL,
    model text NOT NULL, model_version int NOT NULL, job_id uuid NOT NULL,
    gate jsonb, register_as text, challenger jsonb,
    status text NOT NULL, pending boolean NOT NULL,  -- pending: the retrain driver has a step left to take
    reason text, figures jsonb, registered_version int, export_id uuid, challenger_variant text, error text,
    created_by text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, version int NOT NULL
);
CREATE INDEX IF NOT EXISTS retrains_deployment ON retrains (project, deployment, created_at DESC);
CREATE INDEX IF NOT EXISTS retrains_pending ON retrains (pending) WHERE pending;
"""


# Whether the driver has a step left after each status (domain/retrain.py `still_open`), over the row's request.
OPEN_WHEN = {RetrainStatus.PASSED: "register_as IS NOT NULL", RetrainStatus.REGISTERED: "challenger IS NOT NULL",
             RetrainStatus.EXPORTING: "true"}


class RetrainRows:
    """The `retrains` rows, written by the deployments read model's view (a retrain is its deployment's: one
    projection runner less, and each runner holds PostgreSQL connections of its own)."""

    def insert_retrain(self, row: dict[str, Any], tracking: Tracking) -> None:
        self.insert_row("retrains", row, tracking)  # type: ignore[attr-defined]

    def update_retrain(self, retrain_id: UUID, version: int, changes: dict[str, Any], open_when: str,
                       tracking: Tracking) -> None:
        """`changes`, and `pending` set to `open_when`: an SQL condition over the row (one of OPEN_WHEN's)."""
        assert open_when in (*OPEN_WHEN.values(), "false")
        sets = ", ".join(f"{c} = %({c})s" for c in changes)
        sql = (f"UPDATE retrains SET {sets}, pending = {open_when}, version = %(_version)s "
               "WHERE id = %(_id)s AND version < %(_version)s")
        self.write(sql,  # type: ignore[attr-defined]
                   {**changes, "_id": retrain_id, "_version": version}, tracking)


RETRAIN_TOPICS = topics_of(Retrain.Requested, Retrain.JobFailed, Retrain.GatePassed, Retrain.GateFailed,
                           Retrain.VersionRegistered, Retrain.ExportRequested, Retrain.ChallengerAdded,
                           Retrain.ChallengerFailed)


@singledispatch
def apply_retrain(e: Any, view: RetrainRows, tracking: Tracking) -> None:
    raise TypeError(f"not a retrain event: {type(e).__qualname__}")


@apply_retrain.register
def _(e: Retrain.Requested, view: RetrainRows, tracking: Tracking) -> None:
    meta = getattr(e, "metadata", None) or {}
    view.insert_retrain({
        "id": e.originator_id, "project": e.project, "deployment": e.deployment, "variant": e.variant,
        "model": e.model, "model_version": e.version, "job_id": e.job_id, "gate": e.gate,
        "register_as": e.register_as, "challenger": e.challenger, "status": RetrainStatus.TRAINING, "pending": True,
        "created_by": meta.get("actor") or "anonymous", "created_at": e.timestamp, "updated_at": e.timestamp,
        "version": e.originator_version}, tracking)


def _status(e: Any, view: RetrainRows, tracking: Tracking, status: str, **changes: Any) -> None:
    # `pending` may hang on the request's register_as and challenger: the row has them, so SQL decides it
    view.update_retrain(e.originator_id, e.originator_version, {"status": status, "updated_at": e.timestamp, **changes},
                        OPEN_WHEN.get(status, "false"), tracking)


@apply_retrain.register
def _(e: Retrain.JobFailed, view: RetrainRows, tracking: Tracking) -> None:
    _status(e, view, tracking, RetrainStatus.JOB_FAILED, reason=f"the job {e.status}" + (f": {e.error}" if e.error
                                                                                          else ""))


@apply_retrain.register
def _(e: Retrain.GatePassed, view: RetrainRows, tracking: Tracking) -> None:
    _status(e, view, tracking, RetrainStatus.PASSED, reason=e.reason, figures=e.figures)


@apply_retrain.register
def _(e: Retrain.GateFailed, view: RetrainRows, tracking: Tracking) -> None:
    _status(e, view, tracking, RetrainStatus.GATE_FAILED, reason=e.reason, figures=e.figures)


@apply_retrain.register
def _(e: Retrain.VersionRegistered, view: RetrainRows, tracking: Tracking) -> None:
    _status(e, view, tracking, RetrainStatus.REGISTERED, registered_version=e.version)


@apply_retrain.register
def _(e: Retrain.ExportRequested, view: RetrainRows, tracking: Tracking) -> None:
    _status(e, view, tracking, RetrainStatus.EXPORTING, export_id=e.export_id)


@apply_retrain.register
def _(e: Retrain.ChallengerAdded, view: RetrainRows, tracking: Tracking) -> None:
    _status(e, view, tracking, RetrainStatus.CHALLENGER_ADDED, challenger_variant=e.variant)


@apply_retrain.register
def _(e: Retrain.ChallengerFailed, view: RetrainRows, tracking: Tracking) -> None:
    _status(e, view, tracking, RetrainStatus.CHALLENGER_FAILED, error=e.reason)


_COLUMNS = ("id, project, deployment, variant, model, model_version, job_id, gate, register_as, challenger, status, "
            "reason, figures, registered_version, export_id, challenger_variant, error, created_by, created_at, "
            "updated_at")


class RetrainQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def get(self, deployment: str, retrain_id: UUID, *, project: str) -> dict[str, Any] | None:
        """The retrain of `project`'s `deployment` (None for another project's or deployment's, or a missing one)."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM retrains WHERE id = %s AND project = %s AND deployment = %s",
                        (retrain_id, project, deployment))
            return cur.fetchone()

    def list(self, deployment: str, *, project: str, status: list[str] | None = None, limit: int = 50,
             offset: int = 0, id_prefix: str | None = None) -> tuple[list[dict[str, Any]], int]:
        return filtered_page(self.pool, "retrains", _COLUMNS,
                             ["project = %(project)s", "deployment = %(deployment)s"],
                             {"project": project, "deployment": deployment}, status=status, id_prefix=id_prefix,
                             limit=limit, offset=offset)

    def open(self) -> list[UUID]:
        """Every retrain with a step left, every project: the retrain driver's candidates (it decides on the
        aggregate)."""
        with self.pool.connection() as conn:
            return [r[0] for r in conn.execute("SELECT id FROM retrains WHERE pending ORDER BY created_at").fetchall()]
