"""Queries on the `jobs` read model (projections/jobs.py). Reads never touch the event store."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from psycopg.errors import UndefinedTable
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

_COLUMNS = (
    "id, name, framework, task, dataset, params, priority, tags, status, attempt, runner_id, current_step, "
    "total_steps, cancel_requested, final_metrics, artifact, error, created_at, updated_at, started_at, "
    "progress_at, finished_at, version"
)


def progress(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Progress as the API shows it: elapsed since the current attempt started, ETA from the rate so far."""
    current, total = row["current_step"], row["total_steps"]
    if row["status"] == "completed" and total:
        current = total
    started, end = row["started_at"], row["finished_at"] or now
    elapsed = max((end - started).total_seconds(), 0.0) if started else None
    eta = None
    if row["status"] == "running" and started and total and current:
        rate = max((row["progress_at"] - started).total_seconds(), 0.0) / current
        eta = round(rate * (total - current), 3)
    return {
        "current_step": current,
        "total_steps": total,
        "percentage_complete": round(100.0 * current / total, 2) if total else 0.0,
        "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
        "eta_s": eta,
    }


class JobQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def get(self, job_id: UUID) -> dict[str, Any] | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
            row = cur.fetchone()
        return self._public(row) if row else None

    def list(
        self,
        status: str | None = None,
        framework: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        where, params = ["TRUE"], {"limit": limit, "offset": offset}
        if status:
            where.append("status = %(status)s")
            params["status"] = status
        if framework:
            where.append("framework = %(framework)s")
            params["framework"] = framework
        if tag:
            where.append("%(tag)s = ANY(tags)")
            params["tag"] = tag
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

    def wait_for(self, application_name: str, position: int, timeout_s: float) -> bool:
        """Block until the projection has applied `position` (read-your-writes); False on timeout."""
        deadline, delay = time.monotonic() + timeout_s, 0.002
        while True:
            try:
                with self.pool.connection() as conn:
                    row = conn.execute("SELECT max(notification_id) FROM jobs_tracking WHERE application_name = %s",
                                       (application_name,)).fetchone()
            except UndefinedTable:
                row = None
            if row and row[0] is not None and row[0] >= position:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["job_id"] = out.pop("id")
        out["progress"] = progress(row, datetime.now(timezone.utc))
        for k in ("current_step", "total_steps", "progress_at"):
            out.pop(k)
        return out
