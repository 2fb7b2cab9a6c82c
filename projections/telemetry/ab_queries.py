"""The A/B report's sufficient statistics, read from the per-minute aggregates (prediction_store.py):
per variant (and per revision, for the sample-ratio check and the policy's current-revision figures) the requests,
errors, latency quantiles (merged DDSketches: within 1%), labelled requests and the sum and sum of squares of the
per-prediction metric (METRIC_SQL). The statistics (domain/ab_stats.py) need nothing more.

Windows are whole minutes: `since` is rounded down and `until` up to the minute, by the minute of the prediction
(feedback counts at the minute of the prediction it labels).
"""
from __future__ import annotations

from typing import Any

from infra.clickhouse import ClickHouse
from projections.telemetry.prediction_store import LATENCY_SKETCH, METRICS

_WINDOW = ("deployment = {d:String} AND toUnixTimestamp(minute) >= intDiv({since:Int64}, 60000) * 60 "
           "AND toUnixTimestamp(minute) < intDiv({until:Int64} + 59999, 60000) * 60 "
           "AND ({revision:Int64} < 0 OR revision = {revision:Int64})")
_RAW_WINDOW = ("p.deployment = {d:String} AND p.ts >= fromUnixTimestamp64Milli({since:Int64}) "
               "AND p.ts < fromUnixTimestamp64Milli({until:Int64}) "
               "AND ({revision:Int64} < 0 OR p.revision = {revision:Int64})")
_MERGE = LATENCY_SKETCH.replace("(", "Merge(", 1)  # latency states -> quantiles
_MERGE_STATE = LATENCY_SKETCH.replace("(", "MergeState(", 1)  # latency states -> one state


def _joined(metric: str, keys: dict[str, str], where: str = "") -> str:
    """Per `keys` (alias: expression over the aggregates' columns): requests, errors and the latency digest (a
    state, to merge further) from prediction_minutes, LEFT JOIN the metric's labelled count and sums from
    label_minutes."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    select = ", ".join(f"{expr} AS {alias}" for alias, expr in keys.items())
    group = ", ".join(keys)
    where = f"{_WINDOW}{where}"
    return (f"SELECT * FROM (SELECT {select}, sum(requests) AS requests, sum(errors) AS errors, "
            f"{_MERGE_STATE}(latency) AS latency_state FROM prediction_minutes "
            f"WHERE {where} GROUP BY {group}) AS a LEFT JOIN (SELECT {select}, sum({metric}_n) AS labelled, "
            f"sum({metric}_s) AS metric_sum, sum({metric}_ss) AS metric_sum_sq FROM label_minutes "
            f"WHERE {where} GROUP BY {group}) AS b USING ({group})")


_FIGURES = (f"sum(requests), sum(errors), {_MERGE}(latency_state), sum(labelled), sum(metric_sum), "
            "sum(metric_sum_sq)")
_KEYS = ("requests", "errors", "latency", "labelled", "metric_sum", "metric_sum_sq")


def variant_stats(ch: ClickHouse, deployment: str, metric: str, since_ms: int, until_ms: int,
                  revision: int = -1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per (variant, shadow) over the window: the sufficient statistics; per (revision, variant, shadow): the same,
    for the sample-ratio check and the policy's current-revision figures), in one query."""
    # merge the minutes per (revision, variant, shadow) first, then the few rows per grouping set (grouping sets
    # over the minutes would merge every latency sketch twice)
    sql = (f"SELECT rev, v, sh, grouping(rev), {_FIGURES} FROM ("
           + _joined(metric, {"rev": "revision", "v": "variant", "sh": "shadow"})
           + ") GROUP BY GROUPING SETS ((v, sh), (rev, v, sh)) SETTINGS join_use_nulls = 0")
    rows = ch.query(sql, {"d": deployment, "since": since_ms, "until": until_ms, "revision": revision})
    variants, revisions = [], []
    for row in rows:
        revision_, variant, shadow, whole, *figures = row
        r = {"revision": revision_, "variant": variant, "shadow": shadow, **dict(zip(_KEYS, figures))}
        if whole:  # revision aggregated away: the whole window per variant
            r.pop("revision")
            variants.append(r)
        else:
            revisions.append(r)
    return variants, revisions


def shadow_agreement(ch: ClickHouse, deployment: str, since_ms: int, until_ms: int,
                     revision: int = -1) -> list[dict[str, Any]]:
    """Per served variant: how many of its requests the shadow also answered, and how often identically (the same
    label; regression: within 1e-6 relative) and the shadow's latency p50/p95/p99 in ms on those requests. From the
    raw table (a self-join by request), to the millisecond."""
    sql = ("SELECT p.variant, count() AS compared, "
           "countIf(if(p.prediction != '', p.prediction = s.prediction, "
           "abs(p.value - s.value) <= 1e-6 * greatest(abs(p.value), 1))) AS agreed, "
           "quantiles(0.5, 0.95, 0.99)(s.latency_us / 1000) AS shadow_latency_ms "
           "FROM predictions AS p INNER JOIN (SELECT request_id, prediction, value, latency_us FROM predictions "
           "WHERE deployment = {d:String} AND shadow AND status < 400) AS s ON p.request_id = s.request_id "
           f"WHERE {_RAW_WINDOW} AND NOT p.shadow AND p.status < 400 GROUP BY p.variant ORDER BY p.variant")
    rows = ch.query(sql, {"d": deployment, "since": since_ms, "until": until_ms, "revision": revision})
    # the shadow's latency in ms, named per quantile, like the variants' latency_p50_ms… of the report
    return [{"variant": variant, "compared": compared, "agreed": agreed,
             **{f"shadow_latency_{q}_ms": ms for q, ms in zip(("p50", "p95", "p99"), latency_ms)}}
            for variant, compared, agreed, latency_ms in rows]


def timeseries(ch: ClickHouse, deployment: str, metric: str, bucket_s: int, since_ms: int, until_ms: int,
               revision: int = -1) -> list[dict[str, Any]]:
    """Per time bucket (a whole number of minutes) and variant (no shadow): the same sufficient statistics."""
    if bucket_s % 60:
        raise ValueError("the bucket must be a whole number of minutes")
    t = "toInt64(toUnixTimestamp(toStartOfInterval(minute, toIntervalSecond({bucket:UInt32})))) * 1000"
    sql = (f"SELECT t, v, {_FIGURES} FROM (" + _joined(metric, {"t": t, "v": "variant"}, " AND NOT shadow")
           + ") GROUP BY t, v ORDER BY t, v SETTINGS join_use_nulls = 0")
    rows = ch.query(sql, {"d": deployment, "since": since_ms, "until": until_ms, "revision": revision,
                          "bucket": bucket_s})
    return [dict(zip(("t_ms", "variant", *_KEYS), r)) for r in rows]
