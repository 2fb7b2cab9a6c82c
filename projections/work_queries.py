"""What the reconciler reads to find repair candidates (commands/reconciler.py `RepairCandidates`): leased work in
the `jobs` and `model_exports` read models, against the live leases (`job_leases`, infra/leases.py).

Only candidates: the aggregate decides each repair, so a stale read costs a refused command, nothing more.
"""
from __future__ import annotations

from uuid import UUID

from psycopg_pool import ConnectionPool

from domain.vocabulary import JobStatus

_LIMIT = 1000  # per table and pass: the next pass takes the rest


class WorkQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def orphaned_leases(self, older_than_s: float) -> list[tuple[UUID, str]]:
        """(job id, lease id) of running jobs whose lease has no row in `job_leases` and that have not moved for
        `older_than_s` (the row was lost between the claim and its write)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, lease_id FROM jobs WHERE status = %s AND lease_id IS NOT NULL "
                "AND updated_at < now() - make_interval(secs => %s) "
                "AND NOT EXISTS (SELECT 1 FROM job_leases l WHERE l.job_id = jobs.id) LIMIT 500",
                (JobStatus.RUNNING.value, older_than_s)).fetchall()
        return [(job_id, lease_id) for job_id, lease_id in rows]

    def queued_since(self, older_than_s: float) -> list[UUID]:
        """Jobs and model exports queued, and unchanged, for more than `older_than_s`, oldest first per table."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "(SELECT id, updated_at FROM jobs WHERE status = %(queued)s "
                "AND updated_at < now() - make_interval(secs => %(s)s) ORDER BY updated_at LIMIT %(n)s) UNION ALL "
                "(SELECT id, updated_at FROM model_exports WHERE status = %(queued)s "
                "AND updated_at < now() - make_interval(secs => %(s)s) ORDER BY updated_at LIMIT %(n)s)",
                {"s": older_than_s, "queued": JobStatus.QUEUED.value, "n": _LIMIT}).fetchall()
        return [r[0] for r in rows]
