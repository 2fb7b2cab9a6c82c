"""Prediction records in ClickHouse (`predictions`), inserted by the telemetry projector, read by the API.

Idempotent like `metric_points`: each insert carries the batch ids as its deduplication token, and the
ReplacingMergeTree key (deployment, request_id, shadow) collapses a repeat the token missed once parts merge. The
summary here reads FINAL; the A/B report (projections/ab_queries.py) does not, for speed (FINAL cost 1.7x at 1M
rows), so a repeat the token missed counts there until the merge.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from domain.contract import FeedbackBatch, PredictionBatch
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


class PredictionStore:
    def __init__(self, ch: ClickHouse) -> None:
        self.ch = ch

    def ensure_schema(self) -> None:
        self.ch.command(DDL)
        self.ch.command(FEEDBACK_DDL)

    def insert_batches(self, batches: list[PredictionBatch], token: str) -> None:
        if not token:
            raise ValueError("a non-empty deduplication token is needed")
        batches = [b for b in batches if b.size]
        if not batches:
            return

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

    def insert_feedback(self, batches: list[FeedbackBatch], token: str) -> None:
        batches = [b for b in batches if b.size]
        if not batches:
            return
        columns = {
            "ts": pa.array([t for b in batches for t in b.ts_ms], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "deployment": pa.array([b.deployment for b in batches for _ in range(b.size)], pa.string()),
            "request_id": pa.array([r for b in batches for r in b.request_id], pa.string()),
            "label": pa.array([x for b in batches for x in b.label], pa.string()),
            "value": pa.array([x for b in batches for x in b.value], pa.float64()),
            "batch_id": pa.array([b.batch_id for b in batches for _ in range(b.size)], pa.string()),
        }
        self.ch.insert(FEEDBACK_TABLE, FEEDBACK_COLUMNS, columns, dedup_token=token)

    def known_requests(self, deployment: str, request_ids: list[str]) -> set[str]:
        """Which of `request_ids` this deployment answered (any shadow copy excluded)."""
        if not request_ids:
            return set()
        rows = self.ch.query(f"SELECT DISTINCT request_id FROM {TABLE} WHERE deployment = {{d:String}} "
                             "AND NOT shadow AND request_id IN {ids:Array(String)}", {"d": deployment, "ids": request_ids})
        return {r[0] for r in rows}
