"""Prediction records and feedback in ClickHouse, and the per-minute aggregates the A/B report reads.

Raw tables, inserted by the telemetry projectors (projections/telemetry/projectors.py):
- `predictions`: one row per answered request (and its shadow copy). Idempotent like `metric_points`: each insert
  carries the batch ids as its deduplication token, and the ReplacingMergeTree key (deployment, request_id, shadow)
  collapses a repeat once parts merge. A redelivery that regroups batches (so the token differs) is caught before
  the insert: batches whose rows already landed are left out (`_landed`).
- `feedback`: ground truth per request; ReplacingMergeTree(ts) keeps the latest per (deployment, request_id).

Per-minute aggregates, so that a report reads a few thousand rows instead of joining millions (bench/ab_report.py):
- `prediction_minutes` (AggregatingMergeTree; a materialized view on `predictions` fills it): per deployment,
  revision, variant, shadow and minute, the requests, errors (status >= 500) and a DDSketch of the latency.
- `label_minutes` (SummingMergeTree; a materialized view on `feedback` fills it): per the same key, with the
  minute of the *prediction*, for each metric the labelled count n, Σx and Σx² of the per-prediction metric value
  x (METRIC_SQL). Each feedback row is inserted with its `effects`: what it changes in those sums for every copy
  (served and shadow) of its prediction — its own contribution minus that of the feedback it replaces (a
  correction cancels the earlier label; a repeat of the same label changes nothing; an older one than what is
  stored changes nothing, as the table keeps the latest). The effects are computed by ClickHouse in the same
  INSERT … SELECT that writes the rows, so rows and effects land together. Redeliveries are dropped whole, effects
  included, as for predictions: the insert's deduplication token is its batch ids, and batches already landed are
  left out first (the views' target tables have deduplication windows too: that is what drops a view's part of a
  repeated insert).

Both aggregate tables are derived and can be rebuilt from the raw ones (`rebuild_minutes`; also done at start when
they are new). Feedback for a request whose prediction had not landed (the API reports such ids as unknown) is kept
in `feedback` but counts in the aggregates only after a rebuild.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from domain.contract import MAX_FEEDBACK, FeedbackBatch, PredictionBatch
from domain.vocabulary import AbMetric
from infra.clickhouse import ClickHouse

TABLE = "predictions"
COLUMNS = ["ts", "request_id", "deployment", "revision", "variant", "model", "version", "status", "latency_us",
           "n_rows", "shadow", "prediction", "value", "probabilities", "classes", "server_id", "batch_id"]
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    ts DateTime64(3, 'UTC'), request_id String, deployment LowCardinality(String), revision UInt32,
    variant LowCardinality(String), model LowCardinality(String), version UInt32, status UInt16,
    latency_us UInt32, n_rows UInt32, shadow Bool,
    prediction String, value Nullable(Float64), probabilities Array(Float32), classes Array(LowCardinality(String)),
    server_id LowCardinality(String), batch_id String)
ENGINE = ReplacingMergeTree
ORDER BY (deployment, request_id, shadow)
SETTINGS non_replicated_deduplication_window = 10000"""
FEEDBACK_TABLE = "feedback"
FEEDBACK_COLUMNS = ["ts", "deployment", "request_id", "label", "value", "batch_id"]
FEEDBACK_DDL = f"""
CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
    ts DateTime64(3, 'UTC'), deployment LowCardinality(String), request_id String, label String,
    value Nullable(Float64), batch_id String)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (deployment, request_id)
SETTINGS non_replicated_deduplication_window = 10000"""

# The metrics the report offers: per-prediction value x and when a prediction counts as labelled for it, as SQL over
# `p` (the prediction) and `{f}` (its feedback). The report takes the mean of x (rmse: the root of the mean).
# - accuracy: 1 if the feedback label equals the predicted label, else 0;
# - logloss: −log p(true label), p clipped at 1e-15 (a label the model does not know counts as p = 1e-15);
# - rmse: the squared error; mae: the absolute error.
METRICS: tuple[AbMetric, ...] = tuple(AbMetric)  # their order is the order of the aggregates' arrays
METRIC_SQL = {
    "accuracy": ("toFloat64({f}.label = p.prediction)", "{f}.label != '' AND p.prediction != ''"),
    "logloss": ("-log(greatest(toFloat64(arrayElement(p.probabilities, indexOf(p.classes, {f}.label))), 1e-15))",
                "{f}.label != '' AND length(p.probabilities) > 0"),
    "rmse": ("pow(p.value - {f}.value, 2)", "{f}.value IS NOT NULL AND p.value IS NOT NULL"),
    "mae": ("abs(p.value - {f}.value)", "{f}.value IS NOT NULL AND p.value IS NOT NULL"),
}
# Latency quantiles p50, p95, p99 by DDSketch: within 1% of the true value (relative), and its states merge faster
# than t-digests' (bench/RESULTS.md, issue 8).
LATENCY_SKETCH = "quantilesDD(0.01, 0.5, 0.95, 0.99)"
_MINUTE_KEY = ("deployment LowCardinality(String), revision UInt32, variant LowCardinality(String), shadow Bool, "
               "minute DateTime('UTC')")
MINUTES_DDL = [
    f"""CREATE TABLE IF NOT EXISTS prediction_minutes ({_MINUTE_KEY},
    requests SimpleAggregateFunction(sum, UInt64), errors SimpleAggregateFunction(sum, UInt64),
    latency AggregateFunction({LATENCY_SKETCH}, UInt32))
ENGINE = AggregatingMergeTree ORDER BY (deployment, revision, variant, shadow, minute)
SETTINGS non_replicated_deduplication_window = 10000""",
    f"""CREATE TABLE IF NOT EXISTS label_minutes ({_MINUTE_KEY}, """
    + ", ".join(f"{m}_n Int64, {m}_s Float64, {m}_ss Float64" for m in METRICS) + """)
ENGINE = SummingMergeTree ORDER BY (deployment, revision, variant, shadow, minute)
SETTINGS non_replicated_deduplication_window = 10000""",
    f"""ALTER TABLE {FEEDBACK_TABLE} ADD COLUMN IF NOT EXISTS effects Array(Tuple(revision UInt32, variant String,
    shadow Bool, minute DateTime('UTC'), n Array(Int64), s Array(Float64), ss Array(Float64)))""",
]
_PREDICTION_MINUTES = ("SELECT deployment, revision, variant, shadow, toStartOfMinute(ts) AS minute, "
                       "count() AS requests, countIf(status >= 500) AS errors, "
                       f"{LATENCY_SKETCH.replace('(', 'State(', 1)}(latency_us) AS latency "
                       "FROM {source} GROUP BY deployment, revision, variant, shadow, minute")
VIEWS_DDL = [
    "CREATE MATERIALIZED VIEW IF NOT EXISTS prediction_minutes_mv TO prediction_minutes AS "
    + _PREDICTION_MINUTES.format(source=TABLE),
    "CREATE MATERIALIZED VIEW IF NOT EXISTS label_minutes_mv TO label_minutes AS "
    "SELECT deployment, e.revision AS revision, e.variant AS variant, e.shadow AS shadow, e.minute AS minute, "
    + ", ".join(f"e.n[{i}] AS {m}_n, e.s[{i}] AS {m}_s, e.ss[{i}] AS {m}_ss" for i, m in enumerate(METRICS, 1))
    + f" FROM {FEEDBACK_TABLE} ARRAY JOIN effects AS e",
]


def counted(metric: str, f: str) -> str:
    """SQL: prediction `p` counts as labelled for `metric` by feedback `f` (a served answer with usable truth)."""
    return f"(p.status < 400 AND {METRIC_SQL[metric][1].format(f=f)})"


def metric_value(metric: str, f: str) -> str:
    """SQL: the per-prediction metric value of `p` given feedback `f` (0 where it does not apply)."""
    return f"ifNull(toFloat64({METRIC_SQL[metric][0].format(f=f)}), 0)"


def _delta(metric: str, part: str) -> str:
    """SQL: the change in one sum when feedback `n` replaces feedback `o` (absent: o.request_id = '')."""
    new, old = counted(metric, "n"), f"(o.request_id != '' AND {counted(metric, 'o')})"
    if part == "n":
        return f"toInt64({new}) - toInt64({old})"
    x_n, x_o = metric_value(metric, "n"), metric_value(metric, "o")
    if part == "ss":
        x_n, x_o = f"pow({x_n}, 2)", f"pow({x_o}, 2)"
    return f"if({new}, {x_n}, 0) - if({old}, {x_o}, 0)"


# Feedback rows of one deployment (array parameters, in order) with, per row, its effects on label_minutes. A row
# has effects only when it is the one the table will keep for its request (`win`: the last of the latest in the
# insert, and not older than what is stored), and then one per copy of the prediction.
_FEEDBACK_INSERT = (
    f"INSERT INTO {FEEDBACK_TABLE} (ts, deployment, request_id, label, value, batch_id, effects) "
    "SETTINGS insert_deduplication_token = {token:String} "
    "SELECT any(n.ts), {d:String}, n.request_id, any(n.label), any(n.value), any(n.batch_id), "
    "groupArrayIf((p.revision, toString(p.variant), p.shadow, toStartOfMinute(p.ts), "
    + ", ".join("[" + ", ".join(_delta(m, part) for m in METRICS) + "]" for part in ("n", "s", "ss"))
    + "), n.win AND p.request_id != '' AND (o.request_id = '' OR n.ts >= o.ts)) "
    "FROM (SELECT i, {ids:Array(String)}[i] AS request_id, fromUnixTimestamp64Milli({ts:Array(Int64)}[i], 'UTC') AS ts, "
    "{labels:Array(String)}[i] AS label, {values:Array(Nullable(Float64))}[i] AS value, {wins:Array(UInt8)}[i] AS win, "
    "{batches:Array(String)}[i] AS batch_id "
    "FROM (SELECT arrayJoin(range(1, length({ids:Array(String)}) + 1)) AS i)) AS n "
    "LEFT JOIN (SELECT request_id, shadow, revision, variant, ts, status, prediction, probabilities, classes, value "
    f"FROM {TABLE} WHERE deployment = {{d:String}} AND request_id IN {{ids:Array(String)}} "
    "LIMIT 1 BY request_id, shadow) AS p ON p.request_id = n.request_id "
    f"LEFT JOIN (SELECT request_id, ts, label, value FROM {FEEDBACK_TABLE} FINAL "
    "WHERE deployment = {d:String} AND request_id IN {ids:Array(String)}) AS o ON o.request_id = n.request_id "
    "GROUP BY n.i, n.request_id ORDER BY n.i "
    "SETTINGS join_use_nulls = 0")
_LABEL_MINUTES = (
    "INSERT INTO label_minutes SELECT p.deployment, p.revision, p.variant, p.shadow, toStartOfMinute(p.ts) AS minute, "
    + ", ".join(f"countIf({counted(m, 'f')}), sumIf({metric_value(m, 'f')}, {counted(m, 'f')}), "
                f"sumIf(pow({metric_value(m, 'f')}, 2), {counted(m, 'f')})" for m in METRICS)
    + f" FROM {TABLE} AS p FINAL INNER JOIN (SELECT deployment, request_id, label, value FROM {FEEDBACK_TABLE} FINAL) "
    "AS f ON p.deployment = f.deployment AND p.request_id = f.request_id "
    "GROUP BY p.deployment, p.revision, p.variant, p.shadow, minute SETTINGS insert_deduplicate = 0")


def winners(request_ids: list[str], ts_ms: list[int]) -> list[int]:
    """Per row, 1 if it is the row a ReplacingMergeTree(ts) keeps for its request among these (the latest ts; of
    equal ones, the last), else 0."""
    best: dict[str, int] = {}
    for i, (r, t) in enumerate(zip(request_ids, ts_ms)):
        if r not in best or t >= ts_ms[best[r]]:
            best[r] = i
    keep = set(best.values())
    return [1 if i in keep else 0 for i in range(len(request_ids))]


class PredictionStore:
    def __init__(self, ch: ClickHouse) -> None:
        self.ch = ch

    def ensure_schema(self) -> None:
        self.ch.command(DDL)
        self.ch.command(FEEDBACK_DDL)
        new = not self.ch.query("EXISTS TABLE prediction_minutes")[0][0]
        for sql in MINUTES_DDL + VIEWS_DDL:
            self.ch.command(sql)
        if new and self.ch.query(f"SELECT count() FROM {TABLE}")[0][0]:  # tables from before the aggregates
            self.rebuild_minutes()

    def rebuild_minutes(self) -> None:
        """Recompute `prediction_minutes` and `label_minutes` from the raw tables (the latest feedback per
        request). Not atomic: run it while no telemetry is inserted (at start, or with the projectors stopped)."""
        for table in ("prediction_minutes", "label_minutes"):
            self.ch.command(f"TRUNCATE TABLE {table}")
        self.ch.command("INSERT INTO prediction_minutes " + _PREDICTION_MINUTES.format(source=f"{TABLE} FINAL")
                        + " SETTINGS insert_deduplicate = 0")
        self.ch.command(_LABEL_MINUTES)

    def insert_batches(self, batches: list[PredictionBatch], token: str) -> None:
        if not token:
            raise ValueError("a non-empty deduplication token is needed")
        batches = [b for b in batches if b.size]
        landed = self._landed(TABLE, [(b.deployment[0], b.request_id[0], b.batch_id) for b in batches])
        batches = [b for b in batches if b.batch_id not in landed]
        if not batches:
            return
        if landed:  # a regrouped redelivery: the rest is new, and so is its token
            token = ",".join(b.batch_id for b in batches)

        def col(name: str) -> list[Any]:
            return [v for b in batches for v in getattr(b, name)]

        def outputs(name: str, empty: Any) -> list[Any]:  # a batch without outputs (none were answered)
            return [v for b in batches for v in (getattr(b, name) or [empty] * b.size)]

        columns = {
            "ts": pa.array(col("ts_ms"), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "request_id": pa.array(col("request_id"), pa.string()),
            "deployment": pa.array(col("deployment"), pa.string()),
            "revision": pa.array(col("revision"), pa.uint32()),
            "variant": pa.array(col("variant"), pa.string()),
            "model": pa.array(col("model"), pa.string()),
            "version": pa.array(col("version"), pa.uint32()),
            "status": pa.array(col("status"), pa.uint16()),
            "latency_us": pa.array(col("latency_us"), pa.uint32()),
            "n_rows": pa.array(col("n_rows"), pa.uint32()),
            "shadow": pa.array(col("shadow"), pa.bool_()),
            "prediction": pa.array(outputs("prediction", ""), pa.string()),
            "value": pa.array(outputs("value", None), pa.float64()),
            "probabilities": pa.array(outputs("probabilities", []), pa.list_(pa.float32())),
            "classes": pa.array(outputs("classes", []), pa.list_(pa.string())),
            "server_id": pa.array([b.server_id for b in batches for _ in range(b.size)], pa.string()),
            "batch_id": pa.array([b.batch_id for b in batches for _ in range(b.size)], pa.string()),
        }
        self.ch.insert(TABLE, COLUMNS, columns, dedup_token=token)

    def _landed(self, table: str, batches: list[tuple[str, str, str]]) -> set[str]:
        """Which of these batches, given as (deployment, first request id, batch id), are in `table` already. A
        batch lands whole (one insert), so its first row tells; the lookup is by primary key."""
        if not batches:
            return set()
        deployments, first_ids, batch_ids = (sorted(set(x)) for x in zip(*batches))
        rows = self.ch.query(
            f"SELECT DISTINCT batch_id FROM {table} WHERE deployment IN {{d:Array(String)}} "
            "AND request_id IN {r:Array(String)} AND batch_id IN {b:Array(String)}",
            {"d": deployments, "r": first_ids, "b": batch_ids})
        return {r[0] for r in rows}

    def summary(self, deployment: str, since_ms: int = 0) -> list[dict[str, Any]]:
        """Per (revision, variant, shadow): requests, errors, latency p50/p95/p99 (µs) since `since_ms`."""
        rows = self.ch.query(
            f"SELECT revision, variant, model, version, shadow, count(), countIf(status >= 400), "
            "quantile(0.5)(latency_us), quantile(0.95)(latency_us), quantile(0.99)(latency_us) "
            f"FROM {TABLE} FINAL WHERE deployment = {{d:String}} AND ts >= fromUnixTimestamp64Milli({{s:Int64}}) "
            "GROUP BY revision, variant, model, version, shadow ORDER BY revision, variant, shadow",
            {"d": deployment, "s": since_ms})
        keys = ("revision", "variant", "model", "version", "shadow", "requests", "errors", "p50_us", "p95_us",
                "p99_us")
        return [dict(zip(keys, r)) for r in rows]

    def insert_feedback(self, batches: list[FeedbackBatch]) -> None:
        """Feedback batches, in order, into `feedback` with their effects on `label_minutes`: per deployment, up to
        MAX_FEEDBACK rows per INSERT … SELECT (one pass over `predictions` per insert, whatever its size), each
        with the ids of its batches as deduplication token, after leaving out batches that landed already."""
        groups: dict[str, list[list[FeedbackBatch]]] = {}
        rows_in_last: dict[str, int] = {}  # rows in each deployment's last chunk
        for b in batches:
            if not b.size:
                continue
            chunks = groups.setdefault(b.deployment, [[]])
            if rows_in_last.get(b.deployment, 0) + b.size > MAX_FEEDBACK:
                chunks.append([])
                rows_in_last[b.deployment] = 0
            chunks[-1].append(b)
            rows_in_last[b.deployment] = rows_in_last.get(b.deployment, 0) + b.size
        for deployment, chunks in groups.items():
            for chunk in chunks:
                landed = self._landed(FEEDBACK_TABLE, [(b.deployment, b.request_id[0], b.batch_id) for b in chunk])
                chunk = [b for b in chunk if b.batch_id not in landed]
                if not chunk:
                    continue
                ids = [r for b in chunk for r in b.request_id]
                ts = [t for b in chunk for t in b.ts_ms]
                self.ch.command(_FEEDBACK_INSERT, {
                    "token": ",".join(b.batch_id for b in chunk), "d": deployment, "ids": ids, "ts": ts,
                    "labels": [x for b in chunk for x in b.label], "values": [x for b in chunk for x in b.value],
                    "batches": [b.batch_id for b in chunk for _ in range(b.size)], "wins": winners(ids, ts)})

    def known_requests(self, deployment: str, request_ids: list[str]) -> set[str]:
        """Which of `request_ids` this deployment answered (any shadow copy excluded)."""
        if not request_ids:
            return set()
        rows = self.ch.query(f"SELECT DISTINCT request_id FROM {TABLE} WHERE deployment = {{d:String}} "
                             "AND NOT shadow AND request_id IN {ids:Array(String)}", {"d": deployment, "ids": request_ids})
        return {r[0] for r in rows}
