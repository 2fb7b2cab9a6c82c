"""Metric ingestion: points per second from runner publish to queryable in ClickHouse, vs MLflow log_batch.

Trainyard path (what a runner and the serve process do): MetricBatch messages of --batch points published
on JetStream (`Nats-Msg-Id` per batch) → MetricsProjector (the real one) → chDB `metric_points`; the clock
stops when a query sees every point. Baseline: MLflow `MlflowClient.log_batch` (1000 metrics per call, its
documented limit) into its own SQL store (SQLite file) on this machine, in the same run.

    python -m bench.metrics_ingest [--points 500000] [--mlflow-points 100000] [--batch 1000]

The chDB store gets one warm-up insert before the clock starts (a running service has paid that once).
Prints both rates and ends with `ratio=<trainyard points/s ÷ mlflow points/s>` (> 1: Trainyard is faster).
"""
from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path


from bench.harness import parser, print_ratio, work_dir
from domain.contract import TELEMETRY_METRICS, MetricBatch, SeriesChunk
from infra.clickhouse import connect as connect_clickhouse
from infra.embedded import EmbeddedNats
from infra.messaging import connect, ensure_streams
from infra.settings import Settings
from projections.telemetry.metric_store import MetricColumns, MetricStore
from projections.telemetry.projectors import MetricsProjector

NAMES = ("train_loss", "valid_loss", "valid_auc", "lr")


def batches(job_id: str, points: int, size: int) -> list[bytes]:
    """What runners publish: batches of `size` points, 4 metrics a step (steps run on across batches)."""
    now_ms = time.time_ns() // 1_000_000
    per_name = size // len(NAMES)
    out = []
    for b in range(points // size):
        steps = list(range(b * per_name + 1, (b + 1) * per_name + 1))
        series = {n: SeriesChunk(steps=steps, values=[1.0 / s for s in steps], ts_ms=[now_ms] * per_name)
                  for n in NAMES}
        out.append(MetricBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=1, runner_id="bench:1",
                               series=series).model_dump_json().encode())
    return out


async def trainyard(points: int, size: int, work: Path) -> float:
    server = EmbeddedNats(work / "nats", accounts=False)
    url = server.start()
    store = MetricStore(connect_clickhouse(None, work / "chdb"))
    store.ensure_schema()
    try:
        nc, js = await connect(url, "bench")
        await ensure_streams(js, Settings())
        job_id = str(uuid.uuid4())
        payloads = batches(job_id, points, size)  # encoding is the runner's work, outside the clock
        # The service is long-running: its first chDB insert (~0.2 s of one-time setup) happens outside the clock.
        store.insert_columns(MetricColumns(job_id=[str(uuid.uuid4())], attempt=[1], name=["warmup"], step=[0],
                                           value=[0.0], ts_ms=[0], batch_id=["warmup"]), "warmup")
        stop = asyncio.Event()
        start = time.perf_counter()
        projector = asyncio.create_task(MetricsProjector(js, store).run(stop))
        acks = [js.publish(TELEMETRY_METRICS, p, headers={"Nats-Msg-Id": str(i)}) for i, p in enumerate(payloads)]
        for i in range(0, len(acks), 64):
            await asyncio.gather(*acks[i:i + 64])
        while await asyncio.to_thread(store.count, job_id) < points:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        stop.set()
        await projector
        await nc.close()
        return points / elapsed
    finally:
        server.stop()


def mlflow_rate(points: int, work: Path) -> float:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.create_experiment("bench", artifact_location=str(work / "mlruns"))
    run = client.create_run(exp)
    ts = int(time.time() * 1000)
    metrics = [Metric(NAMES[i % 4], 1.0 / (i + 1), ts, i // 4 + 1) for i in range(points)]
    start = time.perf_counter()
    for i in range(0, points, 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
    return points / (time.perf_counter() - start)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--points", type=int, default=500_000)
    ap.add_argument("--mlflow-points", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    if args.batch % len(NAMES) or args.points % args.batch:
        ap.error(f"--batch must be a multiple of {len(NAMES)} and divide --points")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        print("mlflow is not installed: pip install -e '.[bench]'", file=sys.stderr)
        sys.exit(2)
    with work_dir() as work:
        ours = asyncio.run(trainyard(args.points, args.batch, work))
        print(f"trainyard: {args.points} points publish→queryable at {ours:,.0f} points/s "
              f"(batches of {args.batch}, JetStream → MetricsProjector → chDB)")
        base = mlflow_rate(args.mlflow_points, work)
        print(f"mlflow:    {args.mlflow_points} points log_batch(1000) into SQLite at {base:,.0f} points/s")
        print_ratio(ours / base)


if __name__ == "__main__":
    main()
