"""/api/v1/deployments/{name}/ab: the online comparison of a deployment's variants (and its shadow), from ClickHouse
sufficient statistics (projections/telemetry/ab_queries.py) and the always-valid statistics of domain/ab_stats.py.
The request's project's deployment only, its rows in ClickHouse keyed by `scoped(project, name)`."""
from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from api.auth import access_of, allow
from api.deps import Services, ServicesDep
from api.problems import Problem
from api.schemas.common import duration, problems
from api.schemas.deployments import DeploymentName
from commands.deployments import DeploymentNotFoundError
from domain.ab_policy import stats_of
from domain.ab_stats import compare, srm, summarize
from domain.contract import scoped
from domain.deployment_spec import control_of
from domain.vocabulary import TASK_AB_METRICS, AbMetric, Task
from projections.telemetry.ab_queries import shadow_agreement, timeseries, variant_stats

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
BucketS = duration("per bucket (whole minutes)", 60, 86400, multiple_of=60)
EpochMs = Annotated[int | None, Query(ge=0, le=2**53, description="Unix epoch milliseconds")]


def _window(since: int | None, until: int | None) -> tuple[int, int]:
    until = until if until is not None else int(time.time() * 1000) + 1
    since = since if since is not None else 0
    if since >= until:
        raise Problem(422, "Invalid request", "since: must be before until", "since")
    return since, until


def _deployment(s: Services, name: str, project: str) -> dict[str, Any]:
    row = s.deployments.get(name, project=project)
    if row is None:
        raise DeploymentNotFoundError(name)
    return row


def check_metric(row: dict[str, Any], metric: str) -> None:
    """A metric the deployment's task has (an rmse of class labels is no figure at all: the report would be empty)."""
    tasks = {(v.get("artifact") or {}).get("task") for v in row["variants"]}
    for task in tasks & set(TASK_AB_METRICS):
        allowed = [str(m) for m in TASK_AB_METRICS[Task(task)]]
        if metric not in allowed:
            raise Problem(422, "Invalid request", f"metric: {metric} does not apply to {row['name']!r}, a {task} "
                                                  f"deployment; its metrics: {', '.join(allowed)}", "metric")


def _weights_by_revision(s: Services, name: str, project: str) -> dict[int, dict[str, int]]:
    return {h["revision"]: {v["name"]: v["weight"] for v in h["variants"]}
            for h in s.deployments.history(name, project=project)}


def report(s: Services, name: str, metric: str, since: int | None = None, until: int | None = None,
           revision: int | None = None, alpha: float = 0.05, *, project: str) -> dict[str, Any]:
    """The A/B report of `project`'s `name` as data (the API's answer; the CLI and the policy read the same)."""
    row = _deployment(s, name, project)
    check_metric(row, metric)
    since_ms, until_ms = _window(since, until)
    key = scoped(project, name)
    rows, per_revision = variant_stats(s.clickhouse, key, metric, since_ms, until_ms,
                                       -1 if revision is None else revision)
    weights_at = _weights_by_revision(s, name, project)
    current = {v["name"]: v["weight"] for v in row["variants"]}
    names = [v["name"] for v in row["variants"]]
    served = {r["variant"]: r for r in rows if not r["shadow"]}
    for extra in sorted(set(served) - set(names)):  # variants of earlier revisions
        names.append(extra)
    control = control_of(row["variants"])
    stats = {n: stats_of(served.get(n), n, current.get(n, 0)) for n in names}
    variants = [{"name": n, "weight": current.get(n, 0), **summarize(stats[n], metric, alpha=alpha)} for n in names]
    comparisons = [{"challenger": n, **compare(stats[control], stats[n], metric, alpha=alpha)}
                   for n in names if n != control]
    checks = []
    for rev in sorted({r["revision"] for r in per_revision}):
        observed = {r["variant"]: r["requests"] for r in per_revision if r["revision"] == rev and not r["shadow"]}
        weights = weights_at.get(rev)
        if weights and sum(observed.values()):
            checks.append({"revision": rev, "observed": observed, "weights": weights, **srm(observed, weights)})
    shadow_row = next((r for r in rows if r["shadow"]), None)
    shadow = None
    if shadow_row is not None:
        agreement = shadow_agreement(s.clickhouse, key, since_ms, until_ms, -1 if revision is None else revision)
        compared = sum(a["compared"] for a in agreement)
        shadow_stats = stats_of(shadow_row, "shadow", 0)
        shadow = {**summarize(shadow_stats, metric, alpha=alpha), "compared": compared,
                  "agreement": (sum(a["agreed"] for a in agreement) / compared) if compared else None,
                  "versus_control": compare(stats[control], shadow_stats, metric, alpha=alpha),
                  "by_variant": agreement}
    return {"deployment": name, "metric": metric, "revision": row["revision"], "control": control,
            "window": {"since_ms": since_ms, "until_ms": until_ms, "revision": revision},
            "variants": variants, "comparisons": comparisons, "shadow": shadow,
            "srm": {"mismatch": any(c["mismatch"] for c in checks), "revisions": checks},
            "method": comparisons[0].get("method") if comparisons else None}


@router.get("/{name}/ab", dependencies=[allow("deployment.read")], responses=problems(404, 422))
def ab_report(name: Annotated[DeploymentName, Path()], request: Request, s: ServicesDep,
              metric: AbMetric = AbMetric.ACCURACY,
              since: EpochMs = None, until: EpochMs = None,
              revision: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> dict[str, Any]:
    """Per variant: requests, labelled requests, error rate, latency p50/p95/p99, the metric with its always-valid 95%
    confidence interval; per challenger against the control (the variant named `control`, else the first): the
    difference, its interval, an always-valid p-value (valid however often you look) and a decision; a
    sample-ratio-mismatch check per revision; the shadow's agreement with what was served. The window is whole
    minutes (`since` rounded down, `until` up), by the time of the prediction."""
    return report(s, name, metric, since, until, revision, project=access_of(request).project)


@router.get("/{name}/ab/timeseries", dependencies=[allow("deployment.read")], responses=problems(404, 422))
def ab_timeseries(name: Annotated[DeploymentName, Path()], request: Request, s: ServicesDep,
                  metric: AbMetric = AbMetric.ACCURACY,
                  bucket: BucketS = 60,
                  since: EpochMs = None, until: EpochMs = None,
                  revision: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> dict[str, Any]:
    """Per time bucket: each variant's figures in the bucket, and the comparison of each challenger with the control
    on everything up to the end of the bucket (the difference over time, as the report would have shown it)."""
    project = access_of(request).project
    row = _deployment(s, name, project)
    check_metric(row, metric)
    since_ms, until_ms = _window(since, until)
    rows = timeseries(s.clickhouse, scoped(project, name), metric, bucket, since_ms, until_ms, -1 if revision is None else revision)
    control = control_of(row["variants"])
    totals: dict[str, dict[str, float]] = {}
    points = []
    for t in sorted({r["t_ms"] for r in rows}):
        in_bucket = {r["variant"]: r for r in rows if r["t_ms"] == t}
        for v, r in in_bucket.items():
            acc = totals.setdefault(v, {"requests": 0, "errors": 0, "labelled": 0, "metric_sum": 0.0,
                                        "metric_sum_sq": 0.0})
            for k in acc:
                acc[k] += r[k]
        cumulative = {v: stats_of(dict(acc), v, 0) for v, acc in totals.items()}
        points.append({
            "t_ms": t,
            "variants": {v: summarize(stats_of(r, v, 0), metric) for v, r in in_bucket.items()},
            "comparisons": {v: compare(cumulative.get(control, stats_of(None, control, 0)), st, metric)
                            for v, st in cumulative.items() if v != control},
        })
    return {"deployment": name, "metric": metric, "bucket_s": bucket, "control": control, "points": points}
