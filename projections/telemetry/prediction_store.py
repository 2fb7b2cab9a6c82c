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
- `label_minutes` (SummingMergeTree; a materialized view on `label_effects` fills it): per the same key, with the
  minute of the *prediction*, for each metric the labelled count n, Σx and Σx² of the per-prediction metric value
  x (METRIC_SQL).
- `label_effects` (MergeTree, append only): what has been added to `label_minutes`, per copy (served or shadow) of
  a prediction. The sums for a copy are always settled the same way (`_SETTLE`): the contribution of its latest
  label (feedback FINAL) minus what `label_effects` already holds for it; only non-zero differences are written.
  Settling is exact whatever happened before: a correction cancels the earlier label, a repeat or an older label
  changes nothing, a label that came before its prediction counts once the prediction lands, and a settle that
  runs twice (a redelivery, a crash between a raw insert and its settle) writes nothing the second time.

Both writers settle the requests they touch: a feedback insert its request ids (after inserting the rows), a
prediction insert the request ids of every batch it was handed, landed or not (after inserting the rows). The
two are serialized by a lock (the prediction and feedback projectors of a process share one store): a settle reads
the sums it then corrects. Raw inserts are idempotent as for metric points: each carries its batch ids as the
deduplication token, and a redelivery that regroups batches (so the token differs) is caught before the insert:
batches whose rows already landed are left out (`_landed`).

Both aggregate tables are derived and can be rebuilt from the raw ones (`rebuild_minutes`; also done at start when
they are new).

Retention (`prediction_retention_days`, infra.clickhouse.apply_retention): `predictions` and `feedback` by their
ts, and `label_effects` by the prediction's minute, so a prediction and what it added leave together, and a label
arriving for an expired prediction settles to nothing (no prediction, no effect to correct). The per-minute
aggregates are kept: they are small, and the A/B report's history is theirs. A rebuild covers retained rows only.
"""
from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from domain.contract import MAX_FEEDBACK, FeedbackBatch, PredictionBatch
from domain.vocabulary import AbMetric
from infra.clickhouse import ClickHouse, apply_retention

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
ENGINE = SummingMergeTree ORDER BY (deployment, revision, variant, shadow, minute)""",
    # Two settles may write equal blocks (the same change for two requests of a minute): both count.
    "ALTER TABLE label_minutes MODIFY SETTING non_replicated_deduplication_window = 0",
    f"""CREATE TABLE IF NOT EXISTS label_effects ({_MINUTE_KEY}, request_id String,
    n Array(Int64), s Array(Float64), ss Array(Float64))
ENGINE = MergeTree ORDER BY (deployment, request_id, shadow)""",
    "DROP VIEW IF EXISTS label_minutes_mv",  # it read effects from `feedback` rows: label_effects replaces them
]
_PREDICTION_MINUTES = ("SELECT deployment, revision, variant, shadow, toStartOfMinute(ts) AS minute, "
                       "count() AS requests, countIf(status >= 500) AS errors, "
                       f"{LATENCY_SKETCH.replace('(', 'State(', 1)}(latency_us) AS latency "
                       "FROM {source} GROUP BY deployment, revision, variant, shadow, minute")
VIEWS_DDL = [
    "CREATE MATERIALIZED VIEW IF NOT EXISTS prediction_minutes_mv TO prediction_minutes AS "
    + _PREDICTION_MINUTES.format(source=TABLE),
    "CREATE MATERIALIZED VIEW IF NOT EXISTS label_effects_mv TO label_minutes AS "
    "SELECT deployment, revision, variant, shadow, minute, "
    + ", ".join(f"n[{i}] AS {m}_n, s[{i}] AS {m}_s, ss[{i}] AS {m}_ss" for i, m in enumerate(METRICS, 1))
    + " FROM label_effects",
]


def counted(metric: str, f: str) -> str:
    """SQL: prediction `p` counts as labelled for `metric` by feedback `f` (a served answer with usable truth)."""
    return f"(p.status < 400 AND {METRIC_SQL[metric][1].format(f=f)})"


def metric_value(metric: str, f: str) -> str:
    """SQL: the per-prediction metric value of `p` given feedback `f` (0 where it does not apply)."""
    return f"ifNull(toFloat64({METRIC_SQL[metric][0].format(f=f)}), 0)"


def _target(part: str) -> str:
    """SQL: the array, over METRICS, of what copy `p` contributes to one sum given its latest label `f` (none:
    f.request_id = '')."""
    if part == "n":
        return "[" + ", ".join(f"toInt64(f.request_id != '' AND {counted(m, 'f')})" for m in METRICS) + "]"
    power = 2 if part == "ss" else 1
    return "[" + ", ".join(f"if(f.request_id != '' AND {counted(m, 'f')}, pow({metric_value(m, 'f')}, {power}), 0)"
                           for m in METRICS) + "]"


_DIFFERENCE = ("arrayMap(i -> t_{part}[i] - c.{part}[i], range(1, {k} + 1))")
# Settle the label sums of the prediction copies selected by `{where}` (over deployment and request_id): per copy,
# what its latest label contributes minus what label_effects holds, where that differs (floating sums up to
# rounding).
_SETTLE = (
    "INSERT INTO label_effects (deployment, revision, variant, shadow, minute, request_id, n, s, ss) "
    "SELECT t.deployment, t.revision, t.variant, t.shadow, t.minute, t.request_id, "
    + ", ".join(f"{_DIFFERENCE.format(part=part, k=len(METRICS))} AS d_{part}" for part in ("n", "s", "ss"))
    + " FROM (SELECT p.deployment AS deployment, p.request_id AS request_id, p.revision AS revision, "
    "toString(p.variant) AS variant, p.shadow AS shadow, toStartOfMinute(p.ts) AS minute, "
    + ", ".join(f"{_target(part)} AS t_{part}" for part in ("n", "s", "ss"))
    + f" FROM (SELECT deployment, request_id, shadow, revision, variant, ts, status, prediction, probabilities, "
    f"classes, value FROM {TABLE} WHERE {{where}} LIMIT 1 BY deployment, request_id, shadow) AS p "
    f"LEFT JOIN (SELECT deployment, request_id, label, value FROM {FEEDBACK_TABLE} FINAL WHERE {{where}}) AS f "
    "ON f.deployment = p.deployment AND f.request_id = p.request_id) AS t "
    "LEFT JOIN (SELECT deployment, request_id, shadow, sumForEach(n) AS n, sumForEach(s) AS s, sumForEach(ss) AS ss "
    "FROM label_effects WHERE {where} GROUP BY deployment, request_id, shadow) AS c "
    "ON c.deployment = t.deployment AND c.request_id = t.request_id AND c.shadow = t.shadow "
    "WHERE arrayExists(x -> x != 0, d_n) OR arrayExists((x, y) -> abs(x) > 1e-9 * (1 + abs(y)), d_s, t_s) "
    "OR arrayExists((x, y) -> abs(x) > 1e-9 * (1 + abs(y)), d_ss, t_ss) "
    "SETTINGS join_use_nulls = 0, insert_deduplicate = 0")
_SETTLE_REQUESTS = _SETTLE.format(where="deployment = {d:String} AND request_id IN {ids:Array(String)}")
_SETTLE_ALL = _SETTLE.format(where="1 = 1")


class PredictionStore:
    def __init__(self, ch: ClickHouse, retention_days: int = 0) -> None:
        self.ch = ch
        self.retention_days = retention_days  # the raw tables' (module doc); 0: forever
        self._settling = threading.Lock()  # a raw insert and its settle, one writer at a time (module doc)

    def ensure_schema(self) -> None:
        self.ch.command(DDL)
        self.ch.command(FEEDBACK_DDL)
        new = not self.ch.query("EXISTS TABLE label_effects")[0][0]
        for sql in MINUTES_DDL + VIEWS_DDL:
            self.ch.command(sql)
        if new and self.ch.query(f"SELECT count() FROM {TABLE}")[0][0]:  # tables from before label_effects
            self.rebuild_minutes()
        for table, ts in ((TABLE, "ts"), (FEEDBACK_TABLE, "ts"), ("label_effects", "minute")):
            apply_retention(self.ch, table, ts, self.retention_days)

    def rebuild_minutes(self) -> None:
        """Recompute `prediction_minutes`, `label_effects` and `label_minutes` from the raw tables (the latest
        feedback per request). Not atomic: run it while no telemetry is inserted (at start, or with the projectors
        stopped)."""
        with self._settling:
            for table in ("prediction_minutes", "label_minutes", "label_effects"):
                self.ch.command(f"TRUNCATE TABLE {table}")
            self.ch.command("INSERT INTO prediction_minutes " + _PREDICTION_MINUTES.format(source=f"{TABLE} FINAL")
                            + " SETTINGS insert_deduplicate = 0")
            self.ch.command(_SETTLE_ALL)

    def _settle(self, deployment: str, request_ids: list[str]) -> None:
        self.ch.command(_SETTLE_REQUESTS, {"d": deployment, "ids": sorted(set(request_ids))})

    def _labelled(self, deployment: str, request_ids: list[str]) -> list[str]:
        rows = self.ch.query(f"SELECT DISTINCT request_id FROM {FEEDBACK_TABLE} WHERE deployment = {{d:String}} "
                             "AND request_id IN {ids:Array(String)}", {"d": deployment, "ids": request_ids})
        return [r[0] for r in rows]

    def insert_batches(self, batches: list[PredictionBatch], token: str) -> None:
        """Prediction batches into `predictions` (one insert, `token` its deduplication token), then the label sums
        of every request they carry settled: a label that came first counts now."""
        if not token:
            raise ValueError("a non-empty deduplication token is needed")
        batches = [b for b in batches if b.size]
        with self._settling:
            self._insert_predictions(batches, token)
            per_deployment: dict[str, list[str]] = {}
            for b in batches:
                for d, r in zip(b.deployment, b.request_id):
                    per_deployment.setdefault(d, []).append(r)
            for d, ids in per_deployment.items():
                for i in range(0, len(ids), MAX_FEEDBACK):
                    labelled = self._labelled(d, ids[i:i + MAX_FEEDBACK])  # most predictions have no label yet
                    if labelled:
                        self._settle(d, labelled)

    def _insert_predictions(self, batches: list[PredictionBatch], token: str) -> None:
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
        """Feedback batches, in order, into `feedback`, then the label sums of their requests settled: per
        deployment, up to MAX_FEEDBACK rows per insert, each with the ids of its batches as deduplication token,
        after leaving out batches that landed already (their requests are settled all the same)."""
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
                with self._settling:
                    landed = self._landed(FEEDBACK_TABLE, [(b.deployment, b.request_id[0], b.batch_id)
                                                           for b in chunk])
                    new = [b for b in chunk if b.batch_id not in landed]
                    if new:
                        self.ch.insert(FEEDBACK_TABLE, FEEDBACK_COLUMNS, {
                            "ts": pa.array([t for b in new for t in b.ts_ms], pa.int64()).cast(
                                pa.timestamp("ms", tz="UTC")),
                            "deployment": pa.array([deployment] * sum(b.size for b in new), pa.string()),
                            "request_id": pa.array([r for b in new for r in b.request_id], pa.string()),
                            "label": pa.array([x for b in new for x in b.label], pa.string()),
                            "value": pa.array([x for b in new for x in b.value], pa.float64()),
                            "batch_id": pa.array([b.batch_id for b in new for _ in range(b.size)], pa.string()),
                        }, dedup_token=",".join(b.batch_id for b in new))
                    self._settle(deployment, [r for b in chunk for r in b.request_id])

    def known_requests(self, deployment: str, request_ids: list[str]) -> set[str]:
        """Which of `request_ids` this deployment answered (any shadow copy excluded)."""
        if not request_ids:
            return set()
        rows = self.ch.query(f"SELECT DISTINCT request_id FROM {TABLE} WHERE deployment = {{d:String}} "
                             "AND NOT shadow AND request_id IN {ids:Array(String)}", {"d": deployment, "ids": request_ids})
        return {r[0] for r in rows}
