"""Queries on the `jobs` read model (projections/jobs.py). Reads never touch the event store."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from projections.id_prefix import id_range


_LIVE = "(SELECT l.{col} FROM job_leases l WHERE l.job_id = jobs.id AND l.lease_id = jobs.lease_id)"
# Live progress of a running job comes from its lease row (heartbeats); the row's own figures are milestones.
_COLUMNS = (
    "id, name, framework, task, dataset, params, priority, tags, timeout_s, max_attempts, status, attempt, "
    "lost_leases, hand_backs, requeue_reason, runner_id, cancel_requested, final_metrics, artifact, artifacts, error, created_by, correlation_id, "
    "study_id, trial_number, retry_of, from_checkpoint, code, resources, validation, resumed_from_step, "
    "ARRAY(SELECT r.id FROM jobs r WHERE r.retry_of = jobs.id AND r.project = jobs.project "
    "ORDER BY r.created_at, r.id) AS retries, "
    "created_at, updated_at, started_at, finished_at, version, "
    f"GREATEST(current_step, COALESCE({_LIVE.format(col='current_step')}, 0)) AS current_step, "
    f"COALESCE({_LIVE.format(col='total_steps')}, total_steps) AS total_steps, "
    f"GREATEST(progress_at, {_LIVE.format(col='progress_at')}) AS progress_at"
)


def progress(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Progress as the API shows it: elapsed since the current attempt started, ETA from the rate so far."""
    current, total = row["current_step"], row["total_steps"]
    if row["status"] == "completed" and total:
        current = total
    started, end = row["started_at"], row["finished_at"] or now
    elapsed = max((end - started).total_seconds(), 0.0) if started else None
    eta = None
    done = current - (row.get("resumed_from_step") or 0)  # the steps this attempt ran (a resumed one skipped some)
    if row["status"] == "running" and started and total and done > 0:
        rate = max((row["progress_at"] - started).total_seconds(), 0.0) / done
        eta = round(rate * (total - current), 3)
    return {
        "current_step": current,
        "total_steps": total,
        "percentage_complete": round(100.0 * current / total, 2) if total else 0.0,
        "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
        "eta_s": eta,
    }


def _values(v: str | Sequence[str] | None) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)


class JobQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def get(self, job_id: UUID, *, project: str) -> dict[str, Any] | None:
        """The job, if it belongs to `project` (another project's job is None, as a missing one is)."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s AND project = %s", (job_id, project))
            row = cur.fetchone()
        return self._public(row) if row else None

    def list(
        self,
        *,
        project: str,
        status: str | Sequence[str] | None = None,
        framework: str | Sequence[str] | None = None,
        tag: str | Sequence[str] | None = None,
        limit: int = 50,
        offset: int = 0,
        study_id: UUID | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """`project`'s jobs newest first, and how many match. `status` / `framework`: any of the values; `tag`: all of them;
        `study_id`: that study's trials; `id_prefix`: ids starting with those hex digits. A single string is one
        value; None or empty means no filter."""
        where, params = ["project = %(project)s"], {"project": project, "limit": limit, "offset": offset}
        status, framework, tag = _values(status), _values(framework), _values(tag)
        if status:
            where.append("status = ANY(%(status)s)")
            params["status"] = status
        if framework:
            where.append("framework = ANY(%(framework)s)")
            params["framework"] = framework
        if tag:
            where.append("tags @> %(tag)s::text[]")
            params["tag"] = tag
        if study_id is not None:
            where.append("study_id = %(study_id)s")
            params["study_id"] = study_id
        if id_prefix:
            where.append("id BETWEEN %(id_low)s AND %(id_high)s")
            params["id_low"], params["id_high"] = id_range(id_prefix)
        cond = " AND ".join(where)
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT count(*) AS n FROM jobs WHERE {cond}", params)
            total = cur.fetchone()["n"]  # type: ignore[index]
            cur.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE {cond} ORDER BY created_at DESC, id "
                "LIMIT %(limit)s OFFSET %(offset)s",
                params,
            )
            rows = cur.fetchall()
        return [self._public(r) for r in rows], total

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["job_id"] = out.pop("id")
        out["progress"] = progress(row, datetime.now(timezone.utc))
        out["retried_by"] = out["retries"][-1] if out["retries"] else None
        for k in ("current_step", "total_steps", "progress_at"):
            out.pop(k)
        return out
