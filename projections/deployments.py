"""The `deployments` (current revision), `deployment_revisions` (history) and `api_keys` read models, written with
their tracking position (projections/tracking.py), and their queries; and `policy_evaluations`, the last evaluation
of each deployment's policy (written by the policy engine, not from events: see commands/ab_policy.py). The inference server reloads from these on
start; the API answers from them. Rows are guarded by the aggregate version, so a replay rebuilds the same tables.

Projects: deployments and keys carry their project (from the creating event; the default one for what was made
before projects). A deployment's name is unique in its project. The API's queries take the caller's `project` and see
nothing else; `every` and `live_keys` (the inference server's feed, the policy engine) see all projects, each row
with its project. `policy_evaluations` is keyed by `scoped(project, name)`, the deployment's key in ClickHouse too.
"""
from __future__ import annotations

from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from domain.api_key import ApiKey
from domain.deployment import Deployment
from domain.retrain import Retrain
from infra.postgres import fetch_dicts
from projections.id_prefix import id_range
from projections.retrains import RETRAIN_TOPICS, RETRAINS_DDL, RetrainRows, apply_retrain
from projections.tracking import TrackedProjection, TrackedView, topics_of

DEPLOYMENTS_DDL = """
CREATE TABLE IF NOT EXISTS deployments (
    id uuid PRIMARY KEY, name text NOT NULL, revision int NOT NULL, active boolean NOT NULL,
    variants jsonb NOT NULL, shadow jsonb,
    created_by text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, version int NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_revisions (
    deployment_id uuid NOT NULL, revision int NOT NULL, PRIMARY KEY (deployment_id, revision),
    change text NOT NULL, reason text, variants jsonb NOT NULL, shadow jsonb, active boolean NOT NULL,
    rolled_back_to int, actor text, at timestamptz NOT NULL
);
ALTER TABLE deployments ADD COLUMN IF NOT EXISTS policy jsonb;
ALTER TABLE deployment_revisions ADD COLUMN IF NOT EXISTS figures jsonb;
-- names are unique per project (the table once had them unique overall)
ALTER TABLE deployments ADD COLUMN IF NOT EXISTS project text NOT NULL DEFAULT 'default';
ALTER TABLE deployments DROP CONSTRAINT IF EXISTS deployments_name_key;
CREATE UNIQUE INDEX IF NOT EXISTS deployments_project_name ON deployments (project, name);
CREATE TABLE IF NOT EXISTS policy_evaluations (
    deployment text PRIMARY KEY, at timestamptz NOT NULL, revision int NOT NULL, decision text NOT NULL,
    reason text, evaluation jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id uuid PRIMARY KEY, name text NOT NULL, prefix text NOT NULL, key_hash text NOT NULL UNIQUE,
    deployments text[] NOT NULL, rate_limit_per_s double precision,
    revoked_at timestamptz, revoked_reason text,
    created_by text, created_at timestamptz NOT NULL, version int NOT NULL
);
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS project text NOT NULL DEFAULT 'default';
CREATE INDEX IF NOT EXISTS api_keys_project_created ON api_keys (project, created_at);
"""


def _actor(e: Any) -> str:
    return (getattr(e, "metadata", None) or {}).get("actor") or "anonymous"


class DeploymentsView(RetrainRows, TrackedView):
    DDL = DEPLOYMENTS_DDL + RETRAINS_DDL

    def revise(self, e: Any, tracking: Tracking, change: str, active: bool, variants: Any, shadow: Any,
               rolled_back_to: int | None = None, figures: dict[str, Any] | None = None) -> None:
        """The deployment's current revision and one history row, in one statement."""
        params = {"_id": e.originator_id, "_version": e.originator_version, "revision": e.revision,
                  "active": active, "variants": variants, "shadow": shadow, "updated_at": e.timestamp,
                  "change": change, "reason": e.reason, "rolled_back_to": rolled_back_to, "actor": _actor(e),
                  "figures": figures}
        sql = ("WITH h AS (INSERT INTO deployment_revisions (deployment_id, revision, change, reason, variants, shadow, "
               "active, rolled_back_to, actor, at, figures) VALUES (%(_id)s, %(revision)s, %(change)s, %(reason)s, "
               "%(variants)s, %(shadow)s, %(active)s, %(rolled_back_to)s, %(actor)s, %(updated_at)s, %(figures)s) "
               "ON CONFLICT DO NOTHING) "
               "UPDATE deployments SET revision = %(revision)s, active = %(active)s, variants = %(variants)s, "
               "shadow = %(shadow)s, updated_at = %(updated_at)s, version = %(_version)s "
               "WHERE id = %(_id)s AND version < %(_version)s")
        self.write(sql, _json(params, "variants", "shadow", "figures"), tracking)

    def create(self, e: Any, tracking: Tracking) -> None:
        params = {"id": e.originator_id, "name": e.name, "revision": 1, "active": True, "variants": e.variants,
                  "shadow": e.shadow, "created_by": _actor(e), "at": e.timestamp, "version": e.originator_version,
                  "reason": e.reason, "policy": e.policy, "project": e.project}
        sql = ("WITH h AS (INSERT INTO deployment_revisions (deployment_id, revision, change, reason, variants, shadow, "
               "active, actor, at) VALUES (%(id)s, 1, 'created', %(reason)s, %(variants)s, %(shadow)s, true, "
               "%(created_by)s, %(at)s) ON CONFLICT DO NOTHING) "
               "INSERT INTO deployments (id, project, name, revision, active, variants, shadow, created_by, "
               "created_at, updated_at, version, policy) VALUES (%(id)s, %(project)s, %(name)s, 1, true, "
               "%(variants)s, %(shadow)s, %(created_by)s, %(at)s, %(at)s, %(version)s, %(policy)s) "
               "ON CONFLICT (id) DO NOTHING")
        self.write(sql, _json(params, "variants", "shadow", "policy"), tracking)


def _json(params: dict[str, Any], *keys: str) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    return {k: (Jsonb(v) if k in keys and v is not None else v) for k, v in params.items()}


class DeploymentsProjection(TrackedProjection[DeploymentsView]):
    name = "deployments"
    topics = topics_of(
        Deployment.Created, Deployment.Revised, Deployment.TrafficChanged, Deployment.Promoted, Deployment.Updated,
        Deployment.RolledBack, Deployment.PolicyStepped, Deployment.PolicyPromoted, Deployment.PolicyHalted,
        Deployment.Deactivated, Deployment.PolicySet, ApiKey.Created, ApiKey.Revoked) + RETRAIN_TOPICS

    @singledispatchmethod
    def apply(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @apply.register
    def _(self, e: Deployment.Created, tracking: Tracking) -> None:
        self.view.create(e, tracking)

    @apply.register
    def _(self, e: Retrain.Event, tracking: Tracking) -> None:
        apply_retrain(e, self.view, tracking)

    @apply.register
    def _(self, e: Deployment.Revision, tracking: Tracking) -> None:
        details = e.details()
        self.view.revise(e, tracking, e.change_name, True, e.variants, e.shadow, details["rolled_back_to"],
                         details["figures"])

    @apply.register
    def _(self, e: Deployment.Deactivated, tracking: Tracking) -> None:
        with self.view.datastore.transaction(commit=False) as curs:  # the last revision's variants, for history
            curs.execute("SELECT variants, shadow FROM deployments WHERE id = %s", (e.originator_id,))
            row = curs.fetchone()
        variants, shadow = (row["variants"], row["shadow"]) if row else ([], None)
        self.view.revise(e, tracking, "deactivate", False, variants, shadow)

    @apply.register
    def _(self, e: Deployment.PolicySet, tracking: Tracking) -> None:
        self.view.write("UPDATE deployments SET policy = %(policy)s, updated_at = %(at)s, version = %(_version)s "
                        "WHERE id = %(_id)s AND version < %(_version)s",
                        _json({"policy": e.policy, "at": e.timestamp, "_id": e.originator_id,
                               "_version": e.originator_version}, "policy"), tracking)

    @apply.register
    def _(self, e: ApiKey.Created, tracking: Tracking) -> None:
        self.view.insert_row("api_keys", {
            "id": e.originator_id, "project": e.project, "name": e.name, "prefix": e.prefix,
            "key_hash": e.key_hash,
            "deployments": list(e.deployments) if not isinstance(e.deployments, str) else [e.deployments],
            "rate_limit_per_s": e.rate_limit_per_s, "created_by": _actor(e), "created_at": e.timestamp,
            "version": e.originator_version}, tracking)

    @apply.register
    def _(self, e: ApiKey.Revoked, tracking: Tracking) -> None:
        self.view.update_row("api_keys", e.originator_id, e.originator_version,
                             {"revoked_at": e.timestamp, "revoked_reason": e.reason}, tracking)


# The deployment's key in ClickHouse and in policy_evaluations: domain.contract.scoped(project, name).
SCOPED_NAME = "CASE WHEN deployments.project = 'default' THEN deployments.name " \
              "ELSE deployments.project || '/' || deployments.name END"
_DEPLOYMENT = ("id, project, name, revision, active, variants, shadow, policy, created_by, created_at, updated_at, "
               "version, (SELECT e.evaluation || jsonb_build_object('at', e.at) FROM policy_evaluations e "
               f"WHERE e.deployment = {SCOPED_NAME}) AS last_evaluation")
_KEY = "id, name, prefix, deployments, rate_limit_per_s, revoked_at, revoked_reason, created_by, created_at"


class DeploymentQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return fetch_dicts(self.pool, sql, params)

    def list(self, *, project: str, active: bool | None = None) -> list[dict[str, Any]]:
        """`project`'s deployments by name."""
        where = "" if active is None else "AND active = %s"
        return self._all(f"SELECT {_DEPLOYMENT} FROM deployments WHERE project = %s {where} ORDER BY name",
                         (project,) if active is None else (project, active))

    def every(self, active: bool | None = None) -> list[dict[str, Any]]:
        """Every project's deployments, each row with its `project`: for the inference server's feed and the
        policy engine, never for an answer to a user."""
        where = "" if active is None else "WHERE active = %s"
        return self._all(f"SELECT {_DEPLOYMENT} FROM deployments {where} ORDER BY project, name",
                         () if active is None else (active,))

    def get(self, name: str, *, project: str) -> dict[str, Any] | None:
        rows = self._all(f"SELECT {_DEPLOYMENT} FROM deployments WHERE project = %s AND name = %s", (project, name))
        return rows[0] if rows else None

    def history(self, name: str, *, project: str) -> list[dict[str, Any]]:
        return self._all("SELECT r.revision, r.change, r.reason, r.variants, r.shadow, r.active, r.rolled_back_to, "
                         "r.actor, r.at, r.figures FROM deployment_revisions r JOIN deployments d ON d.id = r.deployment_id "
                         "WHERE d.project = %s AND d.name = %s ORDER BY r.revision", (project, name))

    def keys(self, *, project: str, id_prefix: str | None = None) -> list[dict[str, Any]]:
        """`project`'s keys, oldest first; `id_prefix`: those whose id starts with those hex digits."""
        if not id_prefix:
            return self._all(f"SELECT {_KEY} FROM api_keys WHERE project = %s ORDER BY created_at", (project,))
        low, high = id_range(id_prefix)
        return self._all(f"SELECT {_KEY} FROM api_keys WHERE project = %s AND id BETWEEN %s AND %s "
                         "ORDER BY created_at", (project, low, high))

    def key(self, key_id: UUID, *, project: str) -> dict[str, Any] | None:
        rows = self._all(f"SELECT {_KEY} FROM api_keys WHERE id = %s AND project = %s", (key_id, project))
        return rows[0] if rows else None

    def live_keys(self) -> list[dict[str, Any]]:
        """What the inference server needs: every unrevoked key's hash, project, scope, rate and version."""
        return self._all("SELECT id, project, name, key_hash, deployments, rate_limit_per_s, version FROM api_keys "
                         "WHERE revoked_at IS NULL")

    def aggregate_version(self, aggregate_id: UUID) -> int | None:
        """The version a deployment's or API key's row was last written from (the inference server checks an
        event it heard against it); None when there is no such row."""
        rows = self._all("SELECT version FROM deployments WHERE id = %(id)s UNION ALL "
                         "SELECT version FROM api_keys WHERE id = %(id)s", {"id": aggregate_id})
        return int(rows[0]["version"]) if rows else None


class PolicyEvaluations:
    """commands/ab_policy.py `Evaluations`: one row per deployment (by its scoped key), replaced by each evaluation (an UPSERT every
    `policy_interval_s` per deployment with a policy; its table is created with the deployments read model's)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def record(self, deployment: str, evaluation: dict[str, Any]) -> None:
        body = {k: v for k, v in evaluation.items() if k != "at"}
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO policy_evaluations (deployment, at, revision, decision, reason, evaluation) "
                         "VALUES (%s, to_timestamp(%s), %s, %s, %s, %s) ON CONFLICT (deployment) DO UPDATE SET "
                         "at = EXCLUDED.at, revision = EXCLUDED.revision, decision = EXCLUDED.decision, "
                         "reason = EXCLUDED.reason, evaluation = EXCLUDED.evaluation",
                         (deployment, evaluation["at"], evaluation["revision"], evaluation["decision"],
                          evaluation.get("reason"), Jsonb(body)))
