"""The model registry's read models: `models` (with their aliases), `model_versions` (lineage, ONNX artifact,
parity) and `model_exports` (each export's lifecycle), written with their tracking position
(projections/tracking.py), and the queries the API reads them with.

Rows are guarded by the aggregate version that last wrote them (a version row keeps its model's version), so
processing an event twice is a no-op and a replay from zero rebuilds the same tables.

Projects: a model and an export carry their project (from the creating event; what was made before projects is the
default project's); a model's name is unique in its project, and every query takes the caller's `project` and sees
nothing else (another project's model or export is None, as a missing one is).
"""
from __future__ import annotations

from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from psycopg_pool import ConnectionPool

from domain.models import ModelExport, RegisteredModel
from infra.postgres import fetch_dicts
from projections.tracking import TrackedProjection, TrackedView, topics_of

MODELS_DDL = """
CREATE TABLE IF NOT EXISTS models (
    id uuid PRIMARY KEY, name text NOT NULL, description text NOT NULL, tags text[] NOT NULL,
    aliases jsonb NOT NULL DEFAULT '{}',  -- alias → version number
    latest_version int NOT NULL DEFAULT 0,
    created_by text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, version int NOT NULL
);
CREATE INDEX IF NOT EXISTS models_created ON models (created_at DESC);
-- names are unique per project (the table once had them unique overall)
ALTER TABLE models ADD COLUMN IF NOT EXISTS project text NOT NULL DEFAULT 'default';
ALTER TABLE models DROP CONSTRAINT IF EXISTS models_name_key;
CREATE UNIQUE INDEX IF NOT EXISTS models_project_name ON models (project, name);
CREATE INDEX IF NOT EXISTS models_project_created ON models (project, created_at DESC);
CREATE TABLE IF NOT EXISTS model_versions (
    model_id uuid NOT NULL, number int NOT NULL, PRIMARY KEY (model_id, number),
    job_id uuid NOT NULL, lineage jsonb NOT NULL,
    onnx jsonb, parity jsonb, export_id uuid,
    created_by text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
    version int NOT NULL  -- the model version that last wrote the row
);
CREATE TABLE IF NOT EXISTS model_exports (
    id uuid PRIMARY KEY, model_name text NOT NULL, model_version int NOT NULL, format text NOT NULL,
    tolerance double precision NOT NULL,
    status text NOT NULL,  -- queued | running | completed | failed | cancelled
    attempt int NOT NULL DEFAULT 0, runner_id text, artifact jsonb, parity jsonb, error text,
    created_by text, created_at timestamptz NOT NULL, started_at timestamptz, finished_at timestamptz,
    updated_at timestamptz NOT NULL, version int NOT NULL
);
CREATE INDEX IF NOT EXISTS model_exports_version ON model_exports (model_name, model_version, created_at);
ALTER TABLE model_exports ADD COLUMN IF NOT EXISTS project text NOT NULL DEFAULT 'default';
"""
_TOUCH = "UPDATE models SET updated_at = %(_at)s, version = %(_version)s WHERE id = %(_id)s AND version < %(_version)s"


class ModelsView(TrackedView):
    DDL = MODELS_DDL

    def insert_version(self, row: dict[str, Any], tracking: Tracking) -> None:
        cols = list(row)
        sql = (f"WITH v AS (INSERT INTO model_versions ({', '.join(cols)}) VALUES "
               f"({', '.join('%(' + c + ')s' for c in cols)}) ON CONFLICT (model_id, number) DO NOTHING) "
               "UPDATE models SET latest_version = GREATEST(latest_version, %(number)s), updated_at = %(_at)s, "
               "version = %(_version)s WHERE id = %(_id)s AND version < %(_version)s")
        self.write(sql, {**row, "_id": row["model_id"], "_version": row["version"], "_at": row["created_at"]},
                   tracking)

    def update_version(self, model: UUID, number: int, version: int, changes: dict[str, Any], at: Any,
                       tracking: Tracking) -> None:
        sets = ", ".join(f"{c} = %({c})s" for c in changes)
        sql = (f"WITH v AS (UPDATE model_versions SET {sets}, updated_at = %(_at)s, version = %(_version)s "
               "WHERE model_id = %(_id)s AND number = %(_number)s AND version < %(_version)s) " + _TOUCH)
        self.write(sql, {**changes, "_id": model, "_number": number, "_version": version, "_at": at}, tracking)

    def set_alias(self, model: UUID, alias: str, number: int | None, version: int, at: Any,
                  tracking: Tracking) -> None:
        """Point `alias` at `number` (None: remove it)."""
        value = ("aliases || jsonb_build_object(%(_alias)s::text, %(_number)s::int)" if number is not None
                 else "aliases - %(_alias)s::text")
        sql = (f"UPDATE models SET aliases = {value}, updated_at = %(_at)s, version = %(_version)s "
               "WHERE id = %(_id)s AND version < %(_version)s")
        self.write(sql, {"_alias": alias, "_number": number, "_id": model, "_version": version, "_at": at}, tracking)


def _actor(e: Any) -> str:
    return (getattr(e, "metadata", None) or {}).get("actor") or "anonymous"


class ModelsProjection(TrackedProjection[ModelsView]):
    name = "models"
    topics = topics_of(
        RegisteredModel.Created, RegisteredModel.VersionRegistered, RegisteredModel.OnnxAttached,
        RegisteredModel.AliasSet, RegisteredModel.AliasRemoved,
        # an export's progress, cancel request and lost lease reach only the fallback `apply`: a tracking position
        ModelExport.Requested, ModelExport.Started, ModelExport.Requeued, ModelExport.LeaseLost,
        ModelExport.ProgressReported, ModelExport.Completed, ModelExport.Failed, ModelExport.CancelRequested,
        ModelExport.Cancelled)

    @singledispatchmethod
    def apply(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @apply.register
    def _(self, e: RegisteredModel.Created, tracking: Tracking) -> None:
        self.view.insert_row("models", {
            "id": e.originator_id, "project": e.project, "name": e.name, "description": e.description,
            "tags": list(e.tags),
            "created_by": _actor(e), "created_at": e.timestamp, "updated_at": e.timestamp,
            "version": e.originator_version}, tracking)

    @apply.register
    def _(self, e: RegisteredModel.VersionRegistered, tracking: Tracking) -> None:
        self.view.insert_version({
            "model_id": e.originator_id, "number": e.version, "job_id": e.job_id, "lineage": e.lineage, "created_by": _actor(e), "created_at": e.timestamp,
            "updated_at": e.timestamp, "version": e.originator_version}, tracking)

    @apply.register
    def _(self, e: RegisteredModel.OnnxAttached, tracking: Tracking) -> None:
        self.view.update_version(e.originator_id, e.version, e.originator_version,
                                 {"onnx": e.onnx, "parity": e.parity, "export_id": e.export_id}, e.timestamp, tracking)

    @apply.register
    def _(self, e: RegisteredModel.AliasSet, tracking: Tracking) -> None:
        self.view.set_alias(e.originator_id, e.alias, e.version, e.originator_version, e.timestamp, tracking)

    @apply.register
    def _(self, e: RegisteredModel.AliasRemoved, tracking: Tracking) -> None:
        self.view.set_alias(e.originator_id, e.alias, None, e.originator_version, e.timestamp, tracking)

    @apply.register
    def _(self, e: ModelExport.Requested, tracking: Tracking) -> None:
        self.view.insert_row("model_exports", {
            "id": e.originator_id, "project": e.project, "model_name": e.model_name, "model_version": e.model_version, "format": e.format,
            "tolerance": e.tolerance, "status": "queued", "created_by": _actor(e), "created_at": e.timestamp,
            "updated_at": e.timestamp, "version": e.originator_version}, tracking)

    @apply.register
    def _(self, e: ModelExport.Started, tracking: Tracking) -> None:
        self._export(e, tracking, status="running", attempt=e.attempt, runner_id=e.runner_id, started_at=e.timestamp)

    @apply.register
    def _(self, e: ModelExport.Requeued, tracking: Tracking) -> None:
        self._export(e, tracking, status="queued")

    @apply.register
    def _(self, e: ModelExport.Completed, tracking: Tracking) -> None:
        parity = {**e.final_metrics, "metric": e.artifact.get("parity_metric"), "passed": True}
        self._export(e, tracking, status="completed", artifact=e.artifact, parity=parity, finished_at=e.timestamp)

    @apply.register
    def _(self, e: ModelExport.Failed, tracking: Tracking) -> None:
        self._export(e, tracking, status="failed", error=e.error, finished_at=e.timestamp)

    @apply.register
    def _(self, e: ModelExport.Cancelled, tracking: Tracking) -> None:
        self._export(e, tracking, status="cancelled", finished_at=e.timestamp)

    def _export(self, e: Any, tracking: Tracking, **changes: Any) -> None:
        changes.setdefault("updated_at", e.timestamp)
        self.view.update_row("model_exports", e.originator_id, e.originator_version, changes, tracking)


_MODEL = "id, name, description, tags, aliases, latest_version, created_by, created_at, updated_at"
_VERSION = ("v.number, m.name AS model_name, v.job_id, v.lineage, v.onnx, v.parity, v.export_id, v.created_by, v.created_at, "
            "v.updated_at, m.aliases")
_EXPORT = ("id, model_name, model_version, format, tolerance, status, attempt, runner_id, artifact, parity, error, "
           "created_by, created_at, started_at, finished_at")


class ModelQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _all(self, sql: str, params: Any) -> list[dict[str, Any]]:
        return fetch_dicts(self.pool, sql, params)

    def list(self, *, project: str, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """`project`'s models, newest first, and how many it has."""
        with self.pool.connection() as conn:
            total = conn.execute("SELECT count(*) FROM models WHERE project = %s",  # type: ignore[index]
                                 (project,)).fetchone()[0]
        return self._all(f"SELECT {_MODEL} FROM models WHERE project = %s ORDER BY created_at DESC, id "
                         "LIMIT %s OFFSET %s", (project, limit, offset)), total

    def get(self, name: str, *, project: str) -> dict[str, Any] | None:
        rows = self._all(f"SELECT {_MODEL} FROM models WHERE project = %s AND name = %s", (project, name))
        return rows[0] if rows else None

    def versions(self, name: str, *, project: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return [_version(r) for r in self._all(
            f"SELECT {_VERSION} FROM model_versions v JOIN models m ON m.id = v.model_id "
            "WHERE m.project = %s AND m.name = %s ORDER BY v.number LIMIT %s OFFSET %s",
            (project, name, limit, offset))]

    def version(self, name: str, number: int, *, project: str) -> dict[str, Any] | None:
        rows = self._all(f"SELECT {_VERSION} FROM model_versions v JOIN models m ON m.id = v.model_id "
                         "WHERE m.project = %s AND m.name = %s AND v.number = %s", (project, name, number))
        if not rows:
            return None
        out = _version(rows[0])
        out["exports"] = self.exports(name, number, project=project)
        return out

    def exports(self, name: str, number: int, *, project: str) -> list[dict[str, Any]]:
        return self._all(f"SELECT {_EXPORT} FROM model_exports WHERE project = %s AND model_name = %s "
                         "AND model_version = %s ORDER BY created_at", (project, name, number))

    def export(self, export_id: UUID, *, project: str) -> dict[str, Any] | None:
        rows = self._all(f"SELECT {_EXPORT} FROM model_exports WHERE id = %s AND project = %s", (export_id, project))
        return rows[0] if rows else None


def _version(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    aliases = out.pop("aliases") or {}
    out["aliases"] = sorted(a for a, v in aliases.items() if v == out["number"])
    if out.get("onnx"):
        onnx = out["onnx"]
        out["onnx"] = {**onnx, "input_shape": [None, onnx.get("n_features")]}
    return out
