"""The queue and its capacity, from the read models only: jobs by status and priority, runners seen and what they
run, utilisation over a window, and duration and queue wait per framework and task (GET /api/v1/stats).

Jobs are a project's; runners are the installation's, so what keeps them busy is every project's work (training
jobs and model exports), of which only the caller's project's share and job ids are told apart. A runner runs one
work item at a time (runners/runner.py), so it is one slot: utilisation is busy runner-seconds over the
runner-seconds the runners were there. Each row of `jobs` holds its latest attempt only, so a job's busy time is
that attempt's (from `started_at` to its end, or now while it runs); a requeued job's earlier attempts are lost.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

_COUNTS = """
SELECT status, priority, count(*) AS n, min(created_at) FILTER (WHERE status = 'queued') AS oldest_queued_at
FROM jobs WHERE project = %(project)s GROUP BY status, priority
"""

# The first start: a row projected before first_started_at existed knows it only while it is on its first attempt.
_FIRST_START = "coalesce(first_started_at, CASE WHEN attempt = 1 THEN started_at END)"
_TIMINGS = f"""
WITH j AS (
    SELECT framework, task,
           CASE WHEN status = 'completed' AND finished_at >= %(since)s
                THEN extract(epoch FROM finished_at - started_at) END AS duration_s,
           CASE WHEN {_FIRST_START} >= %(since)s THEN extract(epoch FROM {_FIRST_START} - created_at) END AS wait_s
    FROM jobs
    WHERE project = %(project)s AND started_at IS NOT NULL
      AND (finished_at >= %(since)s OR {_FIRST_START} >= %(since)s)
)
SELECT framework, task,
       count(duration_s) AS completed, avg(duration_s) AS duration_mean_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_s) AS duration_p95_s,
       count(wait_s) AS started, avg(wait_s) AS queue_wait_mean_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_s) AS queue_wait_p95_s
FROM j GROUP BY framework, task HAVING count(duration_s) + count(wait_s) > 0 ORDER BY framework, task
"""

# Every project's leased work that ran in [since, now] on a runner: its attempt's overlap with the window.
_WORK = """
SELECT runner_id, project, id, status, '{kind}' AS kind,
       extract(epoch FROM least(coalesce(finished_at, %(now)s), %(now)s) - greatest(started_at, %(since)s)) AS busy_s
FROM {table}
WHERE runner_id IS NOT NULL AND started_at IS NOT NULL AND started_at < %(now)s
  AND (status = 'running' OR (status IN ('completed', 'failed', 'cancelled') AND finished_at > %(since)s))
"""
_RUNNERS = f"""
WITH work AS ({_WORK.format(table='jobs', kind='job')}
              UNION ALL {_WORK.format(table='model_exports', kind='export')}),
per_runner AS (
    SELECT runner_id, sum(busy_s) AS busy_s,
           sum(busy_s) FILTER (WHERE project = %(project)s) AS project_busy_s,
           count(*) FILTER (WHERE status = 'running') AS running,
           array_agg(id ORDER BY id) FILTER (WHERE status = 'running' AND kind = 'job' AND project = %(project)s)
               AS project_running
    FROM work GROUP BY runner_id
)
SELECT coalesce(r.runner_id, w.runner_id) AS runner_id, r.cpus, r.memory_mb, r.gpus, r.gpu_model, r.accepts_code,
       r.first_seen, r.seen_at,
       coalesce(extract(epoch FROM least(%(now)s, r.seen_at + make_interval(secs => %(grace_s)s))
                                   - greatest(%(since)s, r.first_seen)), 0) AS present_s,
       coalesce(w.busy_s, 0) AS busy_s, coalesce(w.project_busy_s, 0) AS project_busy_s,
       coalesce(w.running, 0) AS running, coalesce(w.project_running, '{{}}') AS project_running
FROM (SELECT * FROM runners_seen WHERE seen_at > %(since)s - make_interval(secs => %(grace_s)s)) r
FULL JOIN per_runner w ON w.runner_id = r.runner_id
ORDER BY 1
"""


class StatsQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def job_counts(self, project: str) -> list[dict[str, Any]]:
        """[{status, priority, n, oldest_queued_at}] for `project`'s jobs, one per pair that has any."""
        return self._rows(_COUNTS, {"project": project})

    def timings(self, project: str, since: datetime) -> list[dict[str, Any]]:
        """Per (framework, task) of `project`: duration (finished_at - started_at, of jobs completed since `since`)
        and queue wait (first start - created_at, of jobs first started since `since`): counts, means, p95s
        (percentile_cont: numpy's linear interpolation)."""
        return self._rows(_TIMINGS, {"project": project, "since": since})

    def runners(self, project: str, since: datetime, now: datetime, grace_s: float) -> list[dict[str, Any]]:
        """Each runner heard from in [since, now] (a runner is there from its first hello to `grace_s` after its
        last), and each runner that ran work then though it is no longer in runners_seen (capabilities None):
        `present_s` (its seconds there in the window), `busy_s` (every project's work), `project_busy_s`,
        `running` (work items running on it now) and `project_running` (those that are `project`'s jobs)."""
        rows = self._rows(_RUNNERS, {"project": project, "since": since, "now": now, "grace_s": grace_s})
        for row in rows:
            for key in ("present_s", "busy_s", "project_busy_s"):
                row[key] = max(float(row[key]), 0.0)
        return rows

    def _rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()
