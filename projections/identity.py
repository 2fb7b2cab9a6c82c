"""The identity read model (`principals`, `projects`, `memberships`, `api_tokens`, `sessions`) and the in-process
`IdentityCache` the request path reads: every API request is authenticated and authorized from memory (design
decision 15: no event-store read per request). The cache reloads the tables (small: people, projects, tokens)
whenever the identity projection records a new position — PostgreSQL NOTIFY on the applied channel
(projections/read_your_writes.py), so a revoked token stops working in every process within a fraction of a
second — and every `refresh_s` as a safety net. Rows are guarded by the aggregate version, so a replay rebuilds
the same tables."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import singledispatchmethod
from typing import Any

from eventsourcing.persistence import Tracking
from psycopg_pool import ConnectionPool

from domain.access import Principal
from domain.identity import ApiToken, Project, ServiceAccount, Session, User
from infra.postgres import fetch_dicts
from projections.tracking import TrackedProjection, TrackedView, topics_of

log = logging.getLogger("trainyard.identity")

IDENTITY_DDL = """
CREATE TABLE IF NOT EXISTS principals (
    id uuid PRIMARY KEY, name text NOT NULL UNIQUE, kind text NOT NULL, password_hash text,
    owner boolean NOT NULL DEFAULT false, disabled boolean NOT NULL DEFAULT false, description text,
    created_by text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, version int NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id uuid PRIMARY KEY, name text NOT NULL UNIQUE, description text, quotas jsonb NOT NULL DEFAULT '{}',
    created_by text, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, version int NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    project text NOT NULL, principal text NOT NULL, role text NOT NULL, set_by text, set_at timestamptz NOT NULL,
    PRIMARY KEY (project, principal)
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id uuid PRIMARY KEY, principal text NOT NULL, name text NOT NULL, prefix text NOT NULL,
    token_hash text NOT NULL UNIQUE, scopes jsonb NOT NULL, expires_at double precision,
    revoked_at timestamptz, revoked_reason text, created_by text, created_at timestamptz NOT NULL, version int NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id uuid PRIMARY KEY, principal text NOT NULL, expires_at double precision NOT NULL, ended boolean NOT NULL,
    started_at timestamptz NOT NULL, version int NOT NULL
);
"""


def _actor(e: Any) -> str:
    return (getattr(e, "metadata", None) or {}).get("actor") or "anonymous"


class IdentityView(TrackedView):
    DDL = IDENTITY_DDL


class IdentityProjection(TrackedProjection[IdentityView]):
    name = "identity"
    topics = topics_of(
        User.Created, User.PasswordSet, User.Disabled, User.Enabled, ServiceAccount.Created, ServiceAccount.Disabled,
        Project.Created, Project.MemberSet, Project.MemberRemoved, Project.QuotasSet, ApiToken.Created,
        ApiToken.Revoked, Session.Started, Session.Rotated, Session.Ended)

    @singledispatchmethod
    def apply(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    def _principal(self, e: Any, kind: str, tracking: Tracking, **extra: Any) -> None:
        self.view.insert_row("principals", {
            "id": e.originator_id, "name": e.name, "kind": kind, "owner": bool(getattr(e, "owner", False)),
            "created_by": _actor(e), "created_at": e.timestamp, "updated_at": e.timestamp,
            "version": e.originator_version, **extra}, tracking)

    def _update(self, table: str, e: Any, tracking: Tracking, **values: Any) -> None:
        self.view.update_row(table, e.originator_id, e.originator_version, values, tracking)

    @apply.register
    def _(self, e: User.Created, tracking: Tracking) -> None:
        self._principal(e, "user", tracking, password_hash=e.password_hash)

    @apply.register
    def _(self, e: ServiceAccount.Created, tracking: Tracking) -> None:
        self._principal(e, "service_account", tracking, description=e.description)

    @apply.register
    def _(self, e: User.PasswordSet, tracking: Tracking) -> None:
        self._update("principals", e, tracking, password_hash=e.password_hash, updated_at=e.timestamp)

    @apply.register(User.Disabled)
    @apply.register(ServiceAccount.Disabled)
    def _(self, e: Any, tracking: Tracking) -> None:
        self._update("principals", e, tracking, disabled=True, updated_at=e.timestamp)

    @apply.register
    def _(self, e: User.Enabled, tracking: Tracking) -> None:
        self._update("principals", e, tracking, disabled=False, updated_at=e.timestamp)

    @apply.register
    def _(self, e: Project.Created, tracking: Tracking) -> None:
        self.view.insert_row("projects", {
            "id": e.originator_id, "name": e.name, "description": e.description, "created_by": _actor(e),
            "created_at": e.timestamp, "updated_at": e.timestamp, "version": e.originator_version}, tracking)

    def _project_name(self, e: Any) -> str:
        with self.view.datastore.transaction(commit=False) as curs:
            curs.execute("SELECT name FROM projects WHERE id = %s", (e.originator_id,))
            row = curs.fetchone()
        return row["name"] if row else ""

    @apply.register
    def _(self, e: Project.MemberSet, tracking: Tracking) -> None:
        self.view.write(
            "WITH p AS (UPDATE projects SET version = %(_version)s, updated_at = %(at)s "
            "WHERE id = %(_id)s AND version < %(_version)s RETURNING name) "
            "INSERT INTO memberships (project, principal, role, set_by, set_at) "
            "SELECT name, %(principal)s, %(role)s, %(by)s, %(at)s FROM p "
            "ON CONFLICT (project, principal) DO UPDATE SET role = EXCLUDED.role, set_by = EXCLUDED.set_by, "
            "set_at = EXCLUDED.set_at",
            {"_id": e.originator_id, "_version": e.originator_version, "at": e.timestamp, "principal": e.principal,
             "role": e.role, "by": _actor(e)}, tracking)

    @apply.register
    def _(self, e: Project.MemberRemoved, tracking: Tracking) -> None:
        self.view.write(
            "WITH p AS (UPDATE projects SET version = %(_version)s, updated_at = %(at)s "
            "WHERE id = %(_id)s AND version < %(_version)s RETURNING name) "
            "DELETE FROM memberships m USING p WHERE m.project = p.name AND m.principal = %(principal)s",
            {"_id": e.originator_id, "_version": e.originator_version, "at": e.timestamp,
             "principal": e.principal}, tracking)

    @apply.register
    def _(self, e: Project.QuotasSet, tracking: Tracking) -> None:
        self._update("projects", e, tracking, quotas=e.quotas, updated_at=e.timestamp)

    @apply.register
    def _(self, e: ApiToken.Created, tracking: Tracking) -> None:
        self.view.insert_row("api_tokens", {
            "id": e.originator_id, "principal": e.principal, "name": e.name, "prefix": e.prefix,
            "token_hash": e.token_hash, "scopes": {"scopes": list(e.scopes)}, "expires_at": e.expires_at,
            "created_by": _actor(e), "created_at": e.timestamp, "version": e.originator_version}, tracking)

    @apply.register
    def _(self, e: ApiToken.Revoked, tracking: Tracking) -> None:
        self._update("api_tokens", e, tracking, revoked_at=e.timestamp, revoked_reason=e.reason)

    @apply.register
    def _(self, e: Session.Started, tracking: Tracking) -> None:
        self.view.insert_row("sessions", {
            "id": e.originator_id, "principal": e.principal, "expires_at": e.expires_at, "ended": False,
            "started_at": e.timestamp, "version": e.originator_version}, tracking)

    @apply.register
    def _(self, e: Session.Rotated, tracking: Tracking) -> None:
        self._update("sessions", e, tracking, expires_at=e.expires_at)

    @apply.register
    def _(self, e: Session.Ended, tracking: Tracking) -> None:
        self._update("sessions", e, tracking, ended=True)


@dataclass(frozen=True)
class Token:
    id: str
    principal: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    expires_at: float | None
    revoked: bool


@dataclass
class Snapshot:
    principals: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> row
    memberships: dict[str, dict[str, str]] = field(default_factory=dict)  # principal -> {project: role}
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> row
    tokens: dict[str, Token] = field(default_factory=dict)  # token_hash -> token
    ended_sessions: set[str] = field(default_factory=set)


class IdentityQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return fetch_dicts(self.pool, sql, params)

    def snapshot(self) -> Snapshot:
        s = Snapshot()
        for r in self._all("SELECT id, name, kind, owner, disabled, description, created_at FROM principals"):
            s.principals[r["name"]] = r
        for r in self._all("SELECT project, principal, role FROM memberships"):
            s.memberships.setdefault(r["principal"], {})[r["project"]] = r["role"]
        for r in self._all("SELECT id, name, description, quotas, created_by, created_at FROM projects"):
            s.projects[r["name"]] = r
        for r in self._all("SELECT id, principal, name, prefix, token_hash, scopes, expires_at, revoked_at "
                           "FROM api_tokens"):
            s.tokens[r["token_hash"]] = Token(str(r["id"]), r["principal"], r["name"], r["prefix"],
                                              tuple(r["scopes"]["scopes"]), r["expires_at"], r["revoked_at"] is not None)
        s.ended_sessions = {str(r["id"]) for r in self._all("SELECT id FROM sessions WHERE ended")}
        return s

    def tokens_of(self, principal: str | None) -> list[dict[str, Any]]:
        where, params = ("WHERE principal = %s", (principal,)) if principal else ("", ())
        return self._all("SELECT id, principal, name, prefix, scopes, expires_at, revoked_at, revoked_reason, "
                         f"created_by, created_at FROM api_tokens {where} ORDER BY created_at", params)

    def members(self, project: str) -> list[dict[str, Any]]:
        return self._all("SELECT principal, role, set_by, set_at FROM memberships WHERE project = %s "
                         "ORDER BY principal", (project,))

    def password_hash(self, name: str) -> str | None:
        rows = self._all("SELECT password_hash FROM principals WHERE name = %s", (name,))
        return rows[0]["password_hash"] if rows else None


class IdentityCache:
    """What the request path reads: an immutable `Snapshot` swapped whole on each reload. `start(applied)` keeps it
    fresh: a reload whenever the identity projection records a position (the process's one LISTEN connection,
    projections/read_your_writes.py), and every `refresh_s` whatever happens."""

    def __init__(self, queries: IdentityQueries, refresh_s: float = 5.0) -> None:
        self.queries, self.refresh_s = queries, refresh_s
        self.snapshot = queries.snapshot()
        self.loaded_at = time.monotonic()
        self._changed = threading.Event()
        self._stop = threading.Event()

    def start(self, applied: Any | None = None) -> None:
        if applied is not None:
            applied.watch(IdentityProjection.name, self._changed.set)
        threading.Thread(target=self._reloader, name="identity-reload", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._changed.set()

    def reload(self) -> None:
        self.snapshot = self.queries.snapshot()
        self.loaded_at = time.monotonic()

    def _reloader(self) -> None:
        while not self._stop.is_set():
            self._changed.wait(self.refresh_s)
            self._changed.clear()
            if self._stop.is_set():
                return
            try:
                self.reload()
            except Exception as e:  # the database is away: keep the last snapshot, try again
                log.warning("identity cache reload failed: %s", e)

    # ---- look-ups -----------------------------------------------------------------------------
    def principal(self, name: str, scopes: tuple[str, ...] | None = None) -> Principal | None:
        row = self.snapshot.principals.get(name)
        if row is None:
            return None
        return Principal(name=name, kind=row["kind"], owner=row["owner"], disabled=row["disabled"],
                         memberships=dict(self.snapshot.memberships.get(name, {})), scopes=scopes)

    def token(self, token_hash: str) -> Token | None:
        return self.snapshot.tokens.get(token_hash)

    def session_ended(self, session_id: str) -> bool:
        return session_id in self.snapshot.ended_sessions

    def project(self, name: str) -> dict[str, Any] | None:
        return self.snapshot.projects.get(name)
