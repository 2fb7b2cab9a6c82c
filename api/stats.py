"""/api/v1/stats: the queue and its capacity, read from the read models (projections/stats.py).

Jobs and timings are the caller's project's; runners are the installation's, and their busy time is every project's
work (only this project's share and its own running job ids are told apart)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request

from api.auth import access_of, allow
from api.deps import ServicesDep
from api.schemas.common import duration, problems
from api.schemas.stats import (UTILISATION_WINDOW_S, JobCounts, PriorityCounts, RunnerStats, StatsPublic,
                               TimingStats, Utilisation)
from domain.vocabulary import PRIORITY_ORDER, JobStatus
from projections.stats import StatsQueries

router = APIRouter(prefix="/api/v1/stats", tags=["stats"])
WindowS = duration("how far back durations and queue waits look", 60, 90 * 86400)


@router.get("", dependencies=[allow("job.read")], response_model=StatsPublic, responses=problems(422))
def stats(request: Request, s: ServicesDep, window: WindowS = 7 * 86400) -> StatsPublic:
    """Jobs by status and priority, queued and running counts; the runners there in the last hour with what they
    have, what runs on them now and how busy they were; utilisation over the last hour; mean and p95 duration and
    queue wait per framework and task over `window` (default 7d)."""
    project = access_of(request).project
    queries, now = StatsQueries(s.pool), datetime.now(timezone.utc)
    hour_ago = now - timedelta(seconds=UTILISATION_WINDOW_S)
    rows = queries.runners(project, hour_ago, now, grace_s=s.settings.runner_hello_s)
    busy, present = sum(r["busy_s"] for r in rows), sum(r["present_s"] for r in rows)
    utilisation = Utilisation(since=hour_ago, until=now, runners=sum(r["present_s"] > 0 for r in rows),
                              busy_s=round(busy, 3), capacity_s=round(present, 3), utilisation=_ratio(busy, present),
                              project_busy_s=round(sum(r["project_busy_s"] for r in rows), 3))
    timings = queries.timings(project, now - timedelta(seconds=window))
    return StatsPublic(project=project, generated_at=now, window_s=window, jobs=_counts(queries.job_counts(project)),
                       runners=[_runner(r, now, s.settings.runner_seen_window_s) for r in rows],
                       utilisation=utilisation, timings=[TimingStats(**_rounded(t)) for t in timings])


def _counts(rows: list[dict[str, Any]]) -> JobCounts:
    per = {(r["priority"], r["status"]): r["n"] for r in rows}
    by_status = {st.value: sum(n for (_, status), n in per.items() if status == st) for st in JobStatus}
    by_priority = []
    for p in PRIORITY_ORDER:
        counts = {st.value: per.get((p.value, st.value), 0) for st in JobStatus}
        oldest = [r["oldest_queued_at"] for r in rows if r["priority"] == p and r["oldest_queued_at"] is not None]
        by_priority.append(PriorityCounts(priority=p.value, counts=counts, total=sum(counts.values()),
                                          oldest_queued_at=min(oldest, default=None)))
    return JobCounts(total=sum(per.values()), queued=by_status[JobStatus.QUEUED], running=by_status[JobStatus.RUNNING],
                     by_status=by_status, by_priority=by_priority)


def _runner(row: dict[str, Any], now: datetime, live_within_s: float) -> RunnerStats:
    seen = row["seen_at"]
    return RunnerStats(
        runner_id=row["runner_id"], cpus=row["cpus"], memory_mb=row["memory_mb"], gpus=row["gpus"],
        gpu_model=row["gpu_model"], accepts_code=row["accepts_code"], first_seen=row["first_seen"], seen_at=seen,
        live=seen is not None and (now - seen).total_seconds() <= live_within_s, running=row["running"],
        running_jobs=row["project_running"], busy_s=round(row["busy_s"], 3), present_s=round(row["present_s"], 3),
        utilisation=_ratio(row["busy_s"], row["present_s"]))


def _ratio(busy: float, present: float) -> float | None:
    """At most 1: busy time can exceed the time a runner was seen when some of its hellos were not recorded."""
    return None if present <= 0 else round(min(busy / present, 1.0), 4)


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(v), 3) if k.endswith("_s") and v is not None else v for k, v in row.items()}
