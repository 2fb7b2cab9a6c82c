"""Quota checks on the requests that add to a project's use (domain/quotas.py): submit, study, upload, deployment;
and the runners' claim (a job over the running-jobs quota stays queued). A project without a quota of the kind
costs no query."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from domain.quotas import check, seconds_to_next_month


def quotas_of(s: Any, project: str) -> dict[str, float]:
    row = s.auth.cache.project(project) if s.auth is not None else None
    return dict((row or {}).get("quotas") or {})


def admit_job(s: Any, project: str) -> None:
    """A new job: the queued-jobs quota (429, retry when one starts) and this month's CPU/GPU hours (429 until
    the month ends)."""
    q = quotas_of(s, project)
    if not q.keys() & {"max_queued_jobs", "cpu_hours_per_month", "gpu_hours_per_month"}:
        return
    use = s.usage.jobs(project)
    check(q, "max_queued_jobs", use["queued_jobs"], retry_after_s=30)
    month_left = seconds_to_next_month(datetime.now(timezone.utc))
    check(q, "cpu_hours_per_month", use["cpu_hours"], adding=0, retry_after_s=month_left)
    check(q, "gpu_hours_per_month", use["gpu_hours"], adding=0, retry_after_s=month_left)


def admit_study(s: Any, project: str) -> None:
    q = quotas_of(s, project)
    if "max_running_studies" in q:
        check(q, "max_running_studies", s.usage.running_studies(project), retry_after_s=60)
    admit_job(s, project)


def admit_upload(s: Any, project: str, used_bytes: int, adding_bytes: int) -> None:
    check(quotas_of(s, project), "upload_bytes", used_bytes, adding=adding_bytes)


def admit_deployment(s: Any, project: str) -> None:
    q = quotas_of(s, project)
    if "max_deployments" in q:
        check(q, "max_deployments", s.usage.deployments(project))


def may_start(s: Any, project: str) -> bool:
    """Whether a runner may claim a job of `project` now (its running-jobs quota)."""
    q = quotas_of(s, project)
    return "max_running_jobs" not in q or s.usage.jobs(project)["running_jobs"] < q["max_running_jobs"]
