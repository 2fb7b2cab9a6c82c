"""The `studies` and `trials` read models: one row per hyperparameter study and one per trial, written with their
tracking position (projections/tracking.py), and the queries the API reads them with (never the event store).

Every update is guarded by the study's version (a trial row keeps the version that last wrote it), so processing
an event twice is a no-op and a replay from zero rebuilds the same tables. A trial event also moves the study's
`updated_at` and `version`, in the same statement. One command may emit several events (TrialFinished,
BestTrialImproved, Completed): each is its own position and its own transaction.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from domain.study import Study
from domain.vocabulary import StudyStatus, TrialState
from projections.id_prefix import id_range
from projections.tracking import TrackedProjection, TrackedView, topics_of

STUDIES_DDL = """
CREATE TABLE IF NOT EXISTS studies (
    id uuid PRIMARY KEY,
    name text NOT NULL, framework text NOT NULL, task text NOT NULL,
    dataset jsonb NOT NULL, objective jsonb NOT NULL, search_space jsonb NOT NULL, fixed_params jsonb NOT NULL,
    sampler jsonb NOT NULL, pruner jsonb NOT NULL,
    n_trials int NOT NULL, max_parallel int NOT NULL, timeout_s int, priority text NOT NULL, tags text[] NOT NULL,
    status text NOT NULL,  -- running | cancelling | completed | cancelled | failed
    best_trial jsonb,  -- number, params, value, job_id
    reason text,  -- why it was cancelled or ended
    created_by text, correlation_id text,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, finished_at timestamptz,
    version int NOT NULL
);
ALTER TABLE studies ADD COLUMN IF NOT EXISTS project text NOT NULL DEFAULT 'default';
CREATE INDEX IF NOT EXISTS studies_created ON studies (created_at DESC);
CREATE INDEX IF NOT EXISTS studies_project_created ON studies (project, created_at DESC);
CREATE INDEX IF NOT EXISTS studies_status_created ON studies (status, created_at DESC);
CREATE INDEX IF NOT EXISTS studies_tags ON studies USING gin (tags);
CREATE TABLE IF NOT EXISTS trials (
    study_id uuid NOT NULL, number int NOT NULL, PRIMARY KEY (study_id, number),
    job_id uuid NOT NULL UNIQUE,
    state text NOT NULL,  -- queued | running | completed | pruned | failed
    params jsonb NOT NULL,
    value double precision, pruned_at_step bigint, prune_requested_at_step bigint, error text,
    asked_at timestamptz NOT NULL, started_at timestamptz, finished_at timestamptz,
    version int NOT NULL  -- the study version that last wrote the row
);
CREATE INDEX IF NOT EXISTS trials_study_state ON trials (study_id, state);
"""
# A trial event moves its study's updated_at and version too (the tail of a data-modifying WITH).
_TOUCH = "UPDATE studies SET updated_at = %(_at)s, version = %(_version)s WHERE id = %(_id)s AND version < %(_version)s"


class StudiesView(TrackedView):
    """The studies and trials tables. Every mutating method takes the tracking record of the event it applies."""

    DDL = STUDIES_DDL

    def insert_study(self, row: dict[str, Any], tracking: Tracking) -> None:
        self.insert_row("studies", row, tracking)

    def update_study(self, study_id: UUID, version: int, changes: dict[str, Any], tracking: Tracking) -> None:
        self.update_row("studies", study_id, version, changes, tracking)

    def insert_trial(self, row: dict[str, Any], tracking: Tracking) -> None:
        """`row` has study_id, number, job_id, state, params, asked_at and version (the study's)."""
        cols = list(row)
        sql = (f"WITH t AS (INSERT INTO trials ({', '.join(cols)}) VALUES ({', '.join('%(' + c + ')s' for c in cols)}) "
               f"ON CONFLICT (study_id, number) DO NOTHING) {_TOUCH}")
        self.write(sql, {**row, "_id": row["study_id"], "_version": row["version"], "_at": row["asked_at"]}, tracking)

    def update_trial(self, study_id: UUID, number: int, version: int, changes: dict[str, Any], at: Any,
                     tracking: Tracking, only_state: str | None = None) -> None:
        """Change trial `number` (only while it is in `only_state`, when given) and touch its study at `at`."""
        sets = ", ".join(f"{c} = %({c})s" for c in changes)
        guard = " AND state = %(_only)s" if only_state else ""
        sql = (f"WITH t AS (UPDATE trials SET {sets}, version = %(_version)s WHERE study_id = %(_id)s "
               f"AND number = %(_number)s AND version < %(_version)s{guard}) {_TOUCH}")
        params = {**changes, "_id": study_id, "_number": number, "_version": version, "_at": at, "_only": only_state}
        self.write(sql, params, tracking)


def _finite(value: Any) -> float | None:
    """A NaN or an infinity never reaches PostgreSQL as such: NULL."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


class StudiesProjection(TrackedProjection[StudiesView]):
    name = "studies"
    topics = topics_of(Study.Created, Study.TrialAsked, Study.TrialStarted, Study.TrialPruneRequested,
                       Study.TrialFinished, Study.BestTrialImproved, Study.CancelRequested, Study.Cancelled,
                       Study.Completed, Study.Failed)

    @singledispatchmethod
    def apply(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)  # an event this read model does not show

    @apply.register
    def _(self, e: Study.Created, tracking: Tracking) -> None:
        meta = getattr(e, "metadata", None) or {}
        row = {
            "id": e.originator_id, "project": e.project, "name": e.name, "framework": e.framework, "task": e.task,
            "dataset": e.dataset,
            "objective": e.objective, "search_space": e.search_space, "fixed_params": e.fixed_params,
            "sampler": e.sampler, "pruner": e.pruner, "n_trials": e.n_trials, "max_parallel": e.max_parallel,
            "timeout_s": e.timeout_s, "priority": e.priority, "tags": list(e.tags), "status": "running",
            "created_by": meta.get("actor") or "anonymous", "correlation_id": meta.get("correlation_id"),
            "created_at": e.timestamp, "updated_at": e.timestamp, "version": e.originator_version,
        }
        self.view.insert_study(row, tracking)

    @apply.register
    def _(self, e: Study.TrialAsked, tracking: Tracking) -> None:
        self.view.insert_trial({"study_id": e.originator_id, "number": e.number, "job_id": e.job_id,
                                "state": "queued", "params": e.params, "asked_at": e.timestamp,
                                "version": e.originator_version}, tracking)

    @apply.register
    def _(self, e: Study.TrialStarted, tracking: Tracking) -> None:
        self._trial(e, tracking, {"state": "running", "started_at": e.timestamp}, only_state="queued")

    @apply.register
    def _(self, e: Study.TrialPruneRequested, tracking: Tracking) -> None:
        self._trial(e, tracking, {"prune_requested_at_step": e.step})

    @apply.register
    def _(self, e: Study.TrialFinished, tracking: Tracking) -> None:
        self._trial(e, tracking, {"state": e.state, "value": _finite(e.value), "pruned_at_step": e.pruned_at_step,
                                  "error": e.error, "finished_at": e.timestamp})

    @apply.register
    def _(self, e: Study.BestTrialImproved, tracking: Tracking) -> None:
        best = {"number": e.number, "params": e.params, "value": _finite(e.value), "job_id": str(e.job_id)}
        self._study(e, tracking, best_trial=best)

    @apply.register
    def _(self, e: Study.CancelRequested, tracking: Tracking) -> None:
        self._study(e, tracking, status="cancelling", reason=e.reason)

    @apply.register
    def _(self, e: Study.Cancelled, tracking: Tracking) -> None:
        self._study(e, tracking, status="cancelled", reason=e.reason, finished_at=e.timestamp)

    @apply.register
    def _(self, e: Study.Completed, tracking: Tracking) -> None:
        self._study(e, tracking, status="completed", reason=e.reason, finished_at=e.timestamp)

    @apply.register
    def _(self, e: Study.Failed, tracking: Tracking) -> None:
        self._study(e, tracking, status="failed", reason=e.reason, finished_at=e.timestamp)

    def _study(self, e: Any, tracking: Tracking, **changes: Any) -> None:
        changes.setdefault("updated_at", e.timestamp)
        self.view.update_study(e.originator_id, e.originator_version, changes, tracking)

    def _trial(self, e: Any, tracking: Tracking, changes: dict[str, Any], only_state: str | None = None) -> None:
        self.view.update_trial(e.originator_id, e.number, e.originator_version, changes, e.timestamp, tracking,
                               only_state)


_STUDY = ("s.id AS study_id, s.name, s.framework, s.task, s.dataset, s.objective, s.search_space, s.fixed_params, "
          "s.sampler, s.pruner, s.n_trials, s.max_parallel, s.timeout_s, s.priority, s.tags, s.status, s.reason, "
          "s.best_trial, c.counts, s.created_by, s.created_at, s.finished_at")
_COUNTS = ("CROSS JOIN LATERAL (SELECT jsonb_build_object("
           + ", ".join(f"'{k}', count(*) FILTER (WHERE t.state = '{k}')" for k in TrialState)
           + ") AS counts FROM trials t WHERE t.study_id = s.id) c")
_TRIAL = "number, state, params, value, job_id, started_at, finished_at, pruned_at_step, asked_at"


def _values(v: str | Sequence[str] | None) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)


class StudyQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def get(self, study_id: UUID, *, project: str) -> dict[str, Any] | None:
        """The study, if it belongs to `project` (another project's study is None, as a missing one is). Its
        trials, history and importances are read by study id once this has found it."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_STUDY} FROM studies s {_COUNTS} WHERE s.id = %s AND s.project = %s",
                        (study_id, project))
            row = cur.fetchone()
        return self._public(row) if row else None

    def running_ids(self) -> list[UUID]:
        """The studies going on (running, or cancelling their trials): the study driver's round."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT id FROM studies WHERE status = ANY(%s)",
                                ([StudyStatus.RUNNING.value, StudyStatus.CANCELLING.value],)).fetchall()
        return [r[0] for r in rows]

    def list(self, *, project: str, status: str | Sequence[str] | None = None,
             tag: str | Sequence[str] | None = None, limit: int = 50, offset: int = 0,
             id_prefix: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """`project`'s studies newest first, and how many match. `status`: any of the values; `tag`: all of them; `id_prefix`:
        ids starting with those hex digits."""
        where, params = ["s.project = %(project)s"], {"project": project, "limit": limit, "offset": offset}
        status, tag = _values(status), _values(tag)
        if status:
            where.append("s.status = ANY(%(status)s)")
            params["status"] = status
        if tag:
            where.append("s.tags @> %(tag)s::text[]")
            params["tag"] = tag
        if id_prefix:
            where.append("s.id BETWEEN %(id_low)s AND %(id_high)s")
            params["id_low"], params["id_high"] = id_range(id_prefix)
        cond = " AND ".join(where)
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT count(*) AS n FROM studies s WHERE {cond}", params)
            total = cur.fetchone()["n"]  # type: ignore[index]
            cur.execute(f"SELECT {_STUDY} FROM studies s {_COUNTS} WHERE {cond} ORDER BY s.created_at DESC, s.id "
                        "LIMIT %(limit)s OFFSET %(offset)s", params)
            rows = cur.fetchall()
        return [self._public(r) for r in rows], total

    def trials(self, study_id: UUID, state: str | Sequence[str] | None = None, limit: int = 100,
               offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The study's trials by number, and how many match; `state`: any of the values."""
        where, params = ["study_id = %(id)s"], {"id": study_id, "limit": limit, "offset": offset}
        if states := _values(state):
            where.append("state = ANY(%(state)s)")
            params["state"] = states
        cond = " AND ".join(where)
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT count(*) AS n FROM trials WHERE {cond}", params)
            total = cur.fetchone()["n"]  # type: ignore[index]
            cur.execute(f"SELECT {_TRIAL} FROM trials WHERE {cond} ORDER BY number LIMIT %(limit)s OFFSET %(offset)s",
                        params)
            return cur.fetchall(), total

    def version(self, study_id: UUID) -> int | None:
        """The study's read-model version (it moves with every study and trial event); None: no such study."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT version FROM studies WHERE id = %s", (study_id,)).fetchone()
        return row[0] if row else None

    def trials_after(self, study_id: UUID, version: int, number: int, limit: int = 500) -> list[dict[str, Any]]:
        """Trials last written after (`version`, `number`), in (version, number) order, each with its `version`:
        what a live stream at that cursor has not seen (a trial shows its latest state once)."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_TRIAL}, version FROM trials WHERE study_id = %s AND (version, number) > (%s, %s) "
                        "ORDER BY version, number LIMIT %s", (study_id, version, number, limit))
            return cur.fetchall()

    def history(self, study_id: UUID) -> list[dict[str, Any]]:
        """The completed trials in number order, each with the best value so far by the objective's direction."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT t.number, t.value, CASE WHEN s.objective->>'direction' = 'minimize' "
                        "THEN min(t.value) OVER w ELSE max(t.value) OVER w END AS best_so_far "
                        "FROM trials t JOIN studies s ON s.id = t.study_id "
                        "WHERE t.study_id = %s AND t.state = 'completed' AND t.value IS NOT NULL "
                        "WINDOW w AS (ORDER BY t.number ROWS UNBOUNDED PRECEDING) ORDER BY t.number", (study_id,))
            return cur.fetchall()

    def completed_trials(self, study_id: UUID) -> list[tuple[dict[str, Any], float]]:
        """(params, value) of the completed trials in number order (for parameter importances)."""
        with self.pool.connection() as conn:
            return [(p, v) for p, v in conn.execute(
                "SELECT params, value FROM trials WHERE study_id = %s AND state = 'completed' AND value IS NOT NULL "
                "ORDER BY number",
                (study_id,)).fetchall()]

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        if out["best_trial"] is not None:  # stored as text in jsonb; a UUID, like the trials' job_id
            out["best_trial"] = {**out["best_trial"], "job_id": UUID(out["best_trial"]["job_id"])}
        return out
