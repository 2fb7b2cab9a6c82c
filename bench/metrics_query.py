"""Reading a 1,000,000-point metric series: Trainyard's downsampled query vs MLflow's metric history.

Trainyard: the points go into chDB through MetricStore.insert (batches of --batch), then
`MetricStore.series(job, name, max_points=--max-points)` is timed (median of --repeats, after one warm-up).
Baseline: `MlflowClient().get_metric_history(run_id, key)` on the same points in MLflow's SQL store (SQLite
file). MLflow offers no server-side downsampling: its sampled API (get_metric_history_bulk_interval) reads the
full history first in the SQL store, so get_metric_history is the fastest way MLflow gives to draw a chart.

Loading 1M points with log_batch takes ~2 minutes here (~9k points/s), so by default the first --mlflow-logged
points go through log_batch and the rest are bulk-inserted into MLflow's `metrics` table as the same rows
log_batch writes (the query sees an identical table). `--mlflow-load log_batch` logs every point through
log_batch instead (slow). Both stores get equal point counts.

    .venv/bin/python -m bench.metrics_query [--points 1000000] [--max-points 1000]

Prints both timings and ends with `ratio=<mlflow time / trainyard time>` (> 1: Trainyard is faster).
Exits 2 when mlflow is not installed (pip install -e '.[bench]').
"""
from __future__ import annotations

import logging
import math
import sqlite3
import statistics
import sys
import time
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path


from bench.harness import parser, print_ratio, work_dir
from infra.clickhouse import connect as connect_clickhouse
from projections.telemetry.metric_store import MetricPoint, MetricStore

KEY = "train_loss"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def value(step: int, points: int) -> float:
    """A noisy decaying loss with a spike up and a dip down that downsampling must keep."""
    if step == points // 3:
        return 50.0
    if step == 2 * points // 3:
        return -1.0
    return 2.0 * math.exp(-step / (points / 5)) + 0.05 * math.sin(step * 0.37)


def trainyard(points: int, max_points: int, batch: int, repeats: int, work: Path) -> float:
    store = MetricStore(connect_clickhouse(None, work / "chdb"))
    store.ensure_schema()
    job = str(uuid.uuid4())
    data = [MetricPoint(job, 1, KEY, s, value(s, points), T0 + timedelta(milliseconds=s)) for s in range(points)]
    start = time.perf_counter()
    for i in range(0, points, batch):
        store.insert(data[i:i + batch], batch_id=f"{job}-{i}")
    load = time.perf_counter() - start
    print(f"trainyard: inserted {points:,} points in {load:.2f} s ({points / load:,.0f} points/s, "
          f"MetricStore.insert batches of {batch:,})")
    series = store.series(job, KEY, max_points=max_points)  # warm-up, and a check
    steps = {s for s, _, _ in series}
    assert len(series) <= max_points and {0, points - 1, points // 3, 2 * points // 3} <= steps, "downsample lost"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        store.series(job, KEY, max_points=max_points)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"trainyard: series(max_points={max_points}) over {points:,} points -> {len(series)} points: "
          f"median {median * 1000:.1f} ms of {repeats} (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
    store.ch.close()
    return median


def mlflow_baseline(points: int, logged: int, repeats: int, work: Path) -> float:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    db = work / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = client.create_run(client.create_experiment("bench", artifact_location=str(work / "mlruns")))
    run_id = run.info.run_id
    ms0 = int(T0.timestamp() * 1000)
    logged = min(logged, points)
    start = time.perf_counter()
    for i in range(0, logged, 1000):  # 1000 metrics per call: log_batch's documented limit
        client.log_batch(run_id, metrics=[Metric(KEY, value(s, points), ms0 + s, s)
                                          for s in range(i, min(i + 1000, logged))])
    took = time.perf_counter() - start
    rate = logged / took if took else float("nan")
    print(f"mlflow:    logged {logged:,} points with log_batch(1000) in {took:.1f} s ({rate:,.0f} points/s)")
    if logged < points:
        with sqlite3.connect(db) as conn:  # the rows log_batch writes: (key, value, timestamp, run_uuid, step, is_nan)
            conn.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                             "VALUES (?, ?, ?, ?, ?, 0)",
                             ((KEY, value(s, points), ms0 + s, run_id, s) for s in range(logged, points)))
        print(f"mlflow:    bulk-inserted the other {points - logged:,} points into MLflow's `metrics` table "
              f"(log_batch for all would take ~{points / rate:.0f} s)")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        history = client.get_metric_history(run_id, KEY)
        times.append(time.perf_counter() - start)
        assert len(history) == points, f"mlflow returned {len(history)} points"
    median = statistics.median(times)
    print(f"mlflow:    get_metric_history over {points:,} points -> {points:,} points: "
          f"median {median * 1000:.0f} ms of {repeats}")
    return median


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--max-points", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100_000, help="points per MetricStore.insert")
    ap.add_argument("--repeats", type=int, default=15, help="timed Trainyard queries")
    ap.add_argument("--mlflow-repeats", type=int, default=2, help="timed MLflow queries")
    ap.add_argument("--mlflow-load", choices=["sql", "log_batch"], default="sql")
    ap.add_argument("--mlflow-logged", type=int, default=50_000,
                    help="points logged through log_batch in --mlflow-load sql mode")
    args = ap.parse_args()
    try:
        import mlflow  # noqa: F401
    except ImportError:
        print("mlflow is not installed: pip install -e '.[bench]'", file=sys.stderr)
        sys.exit(2)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    with work_dir("trainyard-bench-query-") as work:
        ours = trainyard(args.points, args.max_points, args.batch, args.repeats, work)
        logged = args.points if args.mlflow_load == "log_batch" else args.mlflow_logged
        theirs = mlflow_baseline(args.points, logged, args.mlflow_repeats, work)
        print_ratio(theirs / ours, 1)


if __name__ == "__main__":
    main()
