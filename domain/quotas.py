"""Per-project quotas: what a project may hold or use, and the check a request over one fails (HTTP 429).

A quota absent from a project's set is unlimited. Usage is counted from the read models (rebuilt from the events):
jobs running and queued now, CPU- and GPU-hours of this calendar month (UTC) from the jobs' start and end times,
studies running, deployments, upload bytes. No I/O here."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from domain.contract import FieldError

QUOTAS: dict[str, str] = {
    "max_running_jobs": "jobs running at once (more wait in the queue: the runners do not claim them)",
    "max_queued_jobs": "jobs queued at once (a submit over it: 429)",
    "cpu_hours_per_month": "CPU-hours of job running time this calendar month, UTC (a submit over it: 429)",
    "gpu_hours_per_month": "GPU-hours of jobs that asked for GPUs this calendar month, UTC (a submit over it: 429)",
    "upload_bytes": "bytes of uploaded datasets (an upload over it: 429)",
    "max_running_studies": "studies running at once (a new one over it: 429)",
    "max_deployments": "active deployments (a new one over it: 429)",
}
MAX_QUOTA = 1e15


class QuotaSpecError(FieldError):
    pass


def check_quotas(quotas: Any) -> dict[str, float]:
    """Known names only, each a finite number ≥ 0 (or null: unlimited, left out)."""
    if not isinstance(quotas, dict):
        raise QuotaSpecError("quotas", "must be an object of quota name → limit")
    out: dict[str, float] = {}
    for name, limit in quotas.items():
        if name not in QUOTAS:
            raise QuotaSpecError(f"quotas.{str(name)[:64]}", f"unknown quota; one of {', '.join(QUOTAS)}")
        if limit is None:
            continue
        if (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit)
                or not 0 <= limit <= MAX_QUOTA):
            raise QuotaSpecError(f"quotas.{name}", f"must be a number from 0 to {MAX_QUOTA:g}, or null (unlimited)")
        out[name] = float(limit)
    return out


@dataclass(frozen=True)
class OverQuota(Exception):
    """A request that would take `name` past its limit."""
    name: str
    limit: float
    used: float
    retry_after_s: int | None  # when waiting helps: the soonest it could fit

    def __str__(self) -> str:
        return (f"quota {self.name} is {self.limit:g} and {self.used:g} is in use: {QUOTAS[self.name]}")


def check(quotas: dict[str, float], name: str, used: float, adding: float = 1.0,
          retry_after_s: int | None = None) -> None:
    """Raise OverQuota if `used + adding` would pass the project's `name` quota (no quota: no limit)."""
    limit = quotas.get(name)
    if limit is not None and used + adding > limit + 1e-9:
        raise OverQuota(name, limit, used, retry_after_s)


def month_start(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def seconds_to_next_month(now: datetime) -> int:
    start = month_start(now)
    following = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return max(1, int((following - now.astimezone(timezone.utc)).total_seconds()))
