"""Reading a metric series of 1,000,000 and 10,000,000 points downsampled to --max-points: the rollup-backed query
vs the same query on the raw points, right after the points land (unmerged parts) and after OPTIMIZE FINAL.

Each size gets a fresh chDB store; the points go in through MetricStore.insert_columns (batches of --batch, the
projector's path, so the rollup's materialized view fills as in the service). Then `MetricStore.series(job, name,
max_points)` is timed (median of --repeats, after one warm-up), with the rollup and with `rollup_reads=False`, and the two
answers are checked equal. (MLflow, without server-side downsampling, is timed in the issue 2 record of
bench/RESULTS.md.)

    .venv/bin/python -m bench.metrics_query [--sizes 1000000 10000000] [--max-points 1000]

Ends with `ratio=<raw time / rollup time>` for the largest size after merges (> 1: the rollup is faster).
"""
from __future__ import annotations

import math
import statistics
import time
import uuid
from pathlib import Path

import numpy as np

from bench.harness import parser, print_ratio, work_dir
from infra.clickhouse import connect as connect_clickhouse
from projections.telemetry.metric_store import MetricColumns, MetricStore

KEY = "train_loss"
T0_MS = 1_735_689_600_000  # 2025-01-01 UTC


def values(lo: int, hi: int, points: int) -> np.ndarray:
    """A noisy decaying loss with a spike up and a dip down that downsampling must keep."""
    steps = np.arange(lo, hi, dtype=np.float64)
    v = 2.0 * np.exp(-steps / (points / 5)) + 0.05 * np.sin(steps * 0.37)
    v[steps == points // 3] = 50.0
    v[steps == 2 * points // 3] = -1.0
    return v


def load(store: MetricStore, job: str, points: int, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, points, batch):
        j = min(points, i + batch)
        cols = MetricColumns()
        cols.extend(job, 1, KEY, np.arange(i, j, dtype=np.uint64).tolist(), values(i, j, points).tolist(),
                    np.arange(T0_MS + i, T0_MS + j, dtype=np.int64).tolist())
        store.insert_columns(cols, f"{job}-{i}")
    return time.perf_counter() - start


def timed(store: MetricStore, job: str, max_points: int, repeats: int, rollup: bool) -> tuple[float, list]:
    got = store.series(job, KEY, max_points=max_points, rollup_reads=rollup)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        store.series(job, KEY, max_points=max_points, rollup_reads=rollup)
        times.append(time.perf_counter() - start)
    return statistics.median(times), got


def measure(points: int, max_points: int, batch: int, repeats: int, work: Path) -> float:
    store = MetricStore(connect_clickhouse(None, work / f"chdb-{points}"))
    store.ensure_schema()
    job = str(uuid.uuid4())
    took = load(store, job, points, batch)
    print(f"{points:>10,} points: inserted in {took:.1f} s ({points / took:,.0f} points/s, batches of {batch:,})")
    ratio = math.nan
    for state in ("fresh", "merged"):
        if state == "merged":
            start = time.perf_counter()
            for table in ("metric_points", "metric_rollup"):
                store.ch.command(f"OPTIMIZE TABLE {table} FINAL")
            print(f"{points:>10,} points: OPTIMIZE FINAL took {time.perf_counter() - start:.1f} s")
        parts = store.ch.query("SELECT table, count() FROM system.parts WHERE active AND database = currentDatabase() "
                               "GROUP BY table ORDER BY table")
        fast, got = timed(store, job, max_points, repeats, rollup=True)
        slow, want = timed(store, job, max_points, repeats, rollup=False)
        steps = {s for s, _, _ in got}
        assert got == want, "rollup and raw answers differ"
        assert len(got) <= max_points and {0, points - 1, points // 3, 2 * points // 3} <= steps, "downsample lost"
        ratio = slow / fast
        print(f"{points:>10,} points, {state:6} (parts {dict(parts)}): rollup {fast * 1000:6.1f} ms, "
              f"raw {slow * 1000:7.1f} ms, raw/rollup {ratio:5.1f}x  ({len(got)} points, median of {repeats})")
    store.ch.close()
    return ratio


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--max-points", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500_000, help="points per insert")
    ap.add_argument("--repeats", type=int, default=15, help="timed queries per variant")
    args = ap.parse_args()
    with work_dir("trainyard-bench-query-") as work:
        ratio = math.nan
        for points in args.sizes:
            ratio = measure(points, args.max_points, args.batch, args.repeats, work)
        print_ratio(ratio, 1)


if __name__ == "__main__":
    main()
