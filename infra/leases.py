"""Live leases: one row per running job, kept fresh by runner heartbeats (table `job_leases`).

The aggregate decides who holds a job (its `Started` event names the lease); this table only says how alive
that lease is and how far its runner got. A heartbeat is one UPDATE with no event and no aggregate load, so
handling it costs the same at step 10 and step 100,000, and it is ONE round trip: the store has its own pool of
autocommit connections configured once with `synchronous_commit = off` and no check query on checkout (a broken
connection surfaces as an `error` reply, which the runner retries; the pool replaces it). A PostgreSQL crash can
at worst lose the last heartbeats, which makes a lease look older, never newer. `expires_at` has no index, so a
heartbeat is a HOT update (no index churn); the reconciler's scan reads one row per running job.

Writers: the report handler (claim → `hold`, heartbeat → `beat`, the end of an attempt → `drop`) and the cancel
command (`flag_cancel`). Readers: the reconciler (`expired`), the job queries (live progress).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

LEASES_DDL = """
CREATE TABLE IF NOT EXISTS job_leases (
    job_id uuid PRIMARY KEY,
    lease_id text NOT NULL,
    runner_id text NOT NULL,
    attempt int NOT NULL,
    expires_at timestamptz NOT NULL,
    current_step bigint NOT NULL DEFAULT 0,
    total_steps bigint,
    progress_at timestamptz,
    milestone int NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false
);
DROP INDEX IF EXISTS job_leases_expires;
"""


@dataclass(frozen=True)
class Beat:
    cancel_requested: bool
    milestone: int  # the last milestone recorded on the aggregate (0..10: tenths of total_steps)


@dataclass(frozen=True)
class ExpiredLease:
    job_id: UUID
    lease_id: str
    runner_id: str
    seconds_over: float


def _configure(conn: Any) -> None:
    conn.execute("SET synchronous_commit = off")


class LeaseStore:
    def __init__(self, database_url: str, ttl_s: float, max_size: int = 8) -> None:
        self.ttl_s = ttl_s
        self.pool = ConnectionPool(database_url, min_size=2, max_size=max_size, open=False,
                                   kwargs={"autocommit": True}, configure=_configure)
        self.pool.open(wait=True, timeout=30)
        self._run(LEASES_DDL, ())

    def close(self) -> None:
        self.pool.close()

    def _run(self, sql: str, params: tuple) -> list[tuple]:
        with self.pool.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def hold(self, job_id: UUID, lease_id: str, runner_id: str, attempt: int, cancel_requested: bool) -> None:
        """The lease the aggregate just granted (or re-granted to the same runner) is alive for ttl_s."""
        self._run(
            "INSERT INTO job_leases (job_id, lease_id, runner_id, attempt, expires_at, cancel_requested) "
            "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s), %s) "
            "ON CONFLICT (job_id) DO UPDATE SET lease_id = excluded.lease_id, runner_id = excluded.runner_id, "
            "attempt = excluded.attempt, expires_at = excluded.expires_at, "
            "cancel_requested = excluded.cancel_requested, "
            "current_step = CASE WHEN job_leases.lease_id = excluded.lease_id THEN job_leases.current_step ELSE 0 END, "
            "milestone = CASE WHEN job_leases.lease_id = excluded.lease_id THEN job_leases.milestone ELSE 0 END",
            (job_id, lease_id, runner_id, attempt, self.ttl_s, cancel_requested))

    def beat(self, job_id: UUID, lease_id: str, current_step: int | None, total_steps: int | None) -> Beat | None:
        """Extend the lease and record progress; None if `lease_id` does not hold the job (stale or ended)."""
        rows = self._run(
            "UPDATE job_leases SET expires_at = now() + make_interval(secs => %s), "
            "current_step = GREATEST(current_step, COALESCE(%s, current_step)), "
            "total_steps = COALESCE(%s, total_steps), progress_at = CASE WHEN %s::bigint IS NULL THEN progress_at "
            "ELSE now() END WHERE job_id = %s AND lease_id = %s RETURNING cancel_requested, milestone",
            (self.ttl_s, current_step, total_steps, current_step, job_id, lease_id))
        return Beat(rows[0][0], rows[0][1]) if rows else None

    def set_milestone(self, job_id: UUID, lease_id: str, milestone: int) -> None:
        self._run("UPDATE job_leases SET milestone = GREATEST(milestone, %s) WHERE job_id = %s AND lease_id = %s",
                  (milestone, job_id, lease_id))

    def drop(self, job_id: UUID, lease_id: str | None = None) -> None:
        """The attempt ended (or the lease was lost): forget it. With no lease_id, whatever lease is there."""
        if lease_id is None:
            self._run("DELETE FROM job_leases WHERE job_id = %s", (job_id,))
        else:
            self._run("DELETE FROM job_leases WHERE job_id = %s AND lease_id = %s", (job_id, lease_id))

    def flag_cancel(self, job_id: UUID) -> None:
        self._run("UPDATE job_leases SET cancel_requested = true WHERE job_id = %s", (job_id,))

    def sync_cancel_flags(self) -> int:
        """Flag the leases of jobs whose cancel the read model shows but the lease row missed (a lost write)."""
        rows = self._run("UPDATE job_leases l SET cancel_requested = true FROM jobs j WHERE j.id = l.job_id "
                         "AND j.cancel_requested AND NOT l.cancel_requested RETURNING l.job_id", ())
        return len(rows)

    def expired(self, limit: int = 500) -> list[ExpiredLease]:
        rows = self._run(
            "SELECT job_id, lease_id, runner_id, extract(epoch FROM now() - expires_at) FROM job_leases "
            "WHERE expires_at < now() ORDER BY expires_at LIMIT %s", (limit,))
        return [ExpiredLease(r[0], r[1], r[2], float(r[3])) for r in rows]



def milestone_of(current_step: int | None, total_steps: int | None) -> int:
    """Tenths of the way through: progress events are recorded when this grows (at most 10 per attempt)."""
    if not current_step or not total_steps:
        return 0
    return min(10, current_step * 10 // total_steps)
