"""What a project uses now, against its quotas (domain/quotas.py): counted from the read models, which the
projections rebuild from the events, so usage is itself a view of the log. GPU-hours count jobs that asked for
GPUs (none of the built-in trainers do)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from psycopg_pool import ConnectionPool

from domain.quotas import month_start

_JOBS = """
SELECT count(*) FILTER (WHERE status = 'running') AS running_jobs,
       count(*) FILTER (WHERE status = 'queued') AS queued_jobs,
       coalesce(sum(extract(epoch FROM (coalesce(finished_at, %(now)s) - greatest(started_at, %(month)s))))
                FILTER (WHERE started_at IS NOT NULL AND coalesce(finished_at, %(now)s) > %(month)s), 0) AS cpu_s
FROM jobs WHERE project = %(project)s AND status IN ('running', 'queued', 'completed', 'failed', 'cancelled')
"""


class UsageQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def jobs(self, project: str, now: datetime | None = None) -> dict[str, float]:
        now = now or datetime.now(timezone.utc)
        with self.pool.connection() as conn:
            row = conn.execute(_JOBS, {"project": project, "now": now, "month": month_start(now)}).fetchone()
        return {"running_jobs": row[0], "queued_jobs": row[1], "cpu_hours": float(row[2]) / 3600, "gpu_hours": 0.0}

    def running_studies(self, project: str) -> int:
        with self.pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM studies WHERE project = %s AND status = 'running'",
                                (project,)).fetchone()[0]

    def deployments(self, project: str) -> int:
        with self.pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM deployments WHERE active AND project = %s",
                                (project,)).fetchone()[0]

    def usage(self, project: str, upload_bytes: int) -> dict[str, Any]:
        jobs = self.jobs(project)
        return {"max_running_jobs": jobs["running_jobs"], "max_queued_jobs": jobs["queued_jobs"],
                "cpu_hours_per_month": round(jobs["cpu_hours"], 4), "gpu_hours_per_month": jobs["gpu_hours"],
                "upload_bytes": upload_bytes, "max_running_studies": self.running_studies(project),
                "max_deployments": self.deployments(project)}
