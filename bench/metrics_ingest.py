"""Metric ingestion: points per second from runner publish to queryable in ClickHouse, vs MLflow log_batch.

Trainyard path (what a runner and the serve process do): MetricBatch messages of --batch points published
on JetStream (`Nats-Msg-Id` per batch) by a process of their own (a runner) → MetricsProjector (the real one,
already subscribed, as in a running service) → chDB `metric_points`; the clock starts when the publisher is told
to go and stops when a query sees every point. Baseline: MLflow `MlflowClient.log_batch` (1000 metrics per call, its
documented limit) into its own SQL store (SQLite file) on this machine, in the same run.

    python -m bench.metrics_ingest [--points 2000000] [--mlflow-points 100000] [--batch 1000] [--runs 3]
                                   [--mlflow-python /path/to/a/venv/bin/python]

2,000,000 points are about two seconds of sustained ingest; at 500,000 a run lasts half a second, most of it the
pipeline filling (the first groups hold a few batches each) and draining, so the figure says more about start-up
than about throughput (bench/RESULTS.md has both).

The chDB store gets one warm-up insert before the clock starts (a running service has paid that once), and the
batches are encoded before it (the runner's work as training goes). Each run
measures both sides back to back (a fresh chDB, NATS and SQLite file each); prints every run's rates and ratio and
ends with `ratio=<median of the runs' trainyard points/s ÷ mlflow points/s>` (> 1: Trainyard is faster).
MLflow runs in this interpreter when it has mlflow (`pip install -e '.[bench]'`), else in `--mlflow-python` (a
virtualenv of its own, so MLflow's dependencies never change Trainyard's).
"""
from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import parser, print_ratio, work_dir
from domain.contract import TELEMETRY_METRICS, MetricBatch, SeriesChunk
from infra.clickhouse import connect as connect_clickhouse
from infra.embedded import EmbeddedNats
from infra.messaging import METRICS_CONSUMER, TELEMETRY_STREAM, connect, ensure_streams
from infra.settings import Settings
from projections.telemetry.metric_store import MetricColumns, MetricStore
from projections.telemetry.projectors import MetricsProjector

POLL_S = 0.005
NAMES = ("train_loss", "valid_loss", "valid_auc", "lr")


def batches(job_id: str, points: int, size: int) -> list[bytes]:
    """What runners publish: batches of `size` points, 4 metrics a step (steps run on across batches)."""
    now_ms = time.time_ns() // 1_000_000
    per_name = size // len(NAMES)
    out = []
    for b in range(points // size):
        steps = list(range(b * per_name + 1, (b + 1) * per_name + 1))
        series = {n: SeriesChunk.packed(steps, [1.0 / s for s in steps], [now_ms] * per_name)
                  for n in NAMES}
        out.append(MetricBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=1, runner_id="bench:1",
                               series=series).model_dump_json().encode())
    return out


def landed(store: MetricStore, job_id: str) -> int:
    return store.ch.query("SELECT count() FROM metric_points WHERE job_id = {job_id:UUID}", {"job_id": job_id})[0][0]


def publisher(url: str, job_id: str, points: int, size: int, ready: Any, go: Any, errors: Any) -> None:
    """The runner's side, in a process of its own as runners are: encode the batches (outside the clock), connect,
    say `ready`, then on `go` publish them all on JetStream, each awaiting its ack (64 in flight)."""
    payloads = batches(job_id, points, size)

    async def publish() -> None:
        nc, js = await connect(url, "bench-runner")
        ready.set()
        await asyncio.to_thread(go.wait)
        acks = [js.publish(TELEMETRY_METRICS, p, headers={"Nats-Msg-Id": f"{job_id}-{i}"})
                for i, p in enumerate(payloads)]
        for i in range(0, len(acks), 64):
            for result in await asyncio.gather(*acks[i:i + 64], return_exceptions=True):
                if isinstance(result, BaseException):
                    errors.value += 1
        await nc.close()

    asyncio.run(publish())


async def trainyard(points: int, size: int, work: Path) -> float:
    server = EmbeddedNats(work / "nats", accounts=False)
    url = server.start()
    store = MetricStore(connect_clickhouse(None, work / "chdb"))
    store.ensure_schema()
    spawn = multiprocessing.get_context("spawn")
    ready, go, errors = spawn.Event(), spawn.Event(), spawn.Value("i", 0)
    runner = None
    try:
        nc, js = await connect(url, "bench")
        await ensure_streams(js, Settings())
        job_id = str(uuid.uuid4())
        # The service is long-running: its first chDB insert (~0.2 s of one-time setup) and its projector's
        # subscription are in place before a runner publishes.
        warmup = MetricColumns()
        warmup.extend(str(uuid.uuid4()), 1, "warmup", [0], [0.0], [0])
        store.insert_columns(warmup, "warmup")
        stop = asyncio.Event()
        projector = asyncio.create_task(MetricsProjector(js, store).run(stop))
        runner = spawn.Process(target=publisher, args=(url, job_id, points, size, ready, go, errors))
        runner.start()
        while not await asyncio.to_thread(ready.wait, 0.5):
            if not runner.is_alive():
                raise RuntimeError("the publishing process died before it was ready")
        await asyncio.sleep(0.5)  # the projector is subscribed and waiting in a fetch
        start = time.perf_counter()
        go.set()
        # The projector acks a batch once its insert has returned, so the metrics consumer's ack floor says when
        # everything may be queryable (asking NATS every 5 ms costs the 2 cores nothing; a count every 10 ms scanned
        # the growing table on chDB while the projector wrote); then the clock stops when a query sees every point.
        # The probe counts stored rows without FINAL: no point is sent twice here.
        sent = points // size
        while (await js.consumer_info(TELEMETRY_STREAM, METRICS_CONSUMER)).ack_floor.stream_seq < sent:
            await asyncio.sleep(POLL_S)
        while await asyncio.to_thread(landed, store, job_id) < points:
            await asyncio.sleep(POLL_S)
        elapsed = time.perf_counter() - start
        await asyncio.to_thread(runner.join, 30)
        assert errors.value == 0, f"{errors.value} publishes failed"
        assert store.count(job_id) == points  # and a query through FINAL sees each point once
        stop.set()
        await projector
        await nc.close()
        return points / elapsed
    finally:
        if runner is not None and runner.is_alive():
            runner.kill()
        server.stop()


MLFLOW_SNIPPET = """
import sys, time
from pathlib import Path
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
points, work = int(sys.argv[1]), Path(sys.argv[2])
names = ("train_loss", "valid_loss", "valid_auc", "lr")
client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
exp = client.create_experiment("bench", artifact_location=str(work / "mlruns"))
run = client.create_run(exp)
ts = int(time.time() * 1000)
metrics = [Metric(names[i % 4], 1.0 / (i + 1), ts, i // 4 + 1) for i in range(points)]
start = time.perf_counter()
for i in range(0, points, 1000):
    client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
print(points / (time.perf_counter() - start))
"""


def mlflow_rate(points: int, work: Path, python: str | None) -> float:
    """MLflow's log_batch(1000) into SQLite, in `python` (None: this interpreter), on a fresh store in `work`."""
    import subprocess

    out = subprocess.run([python or sys.executable, "-c", MLFLOW_SNIPPET, str(points), str(work)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--points", type=int, default=2_000_000)
    ap.add_argument("--mlflow-points", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mlflow-python", default=None, help="a python with mlflow (default: this one)")
    args = ap.parse_args()
    if args.batch % len(NAMES) or args.points % args.batch:
        ap.error(f"--batch must be a multiple of {len(NAMES)} and divide --points")
    if args.mlflow_python is None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            print("mlflow is not installed: pip install -e '.[bench]', or give --mlflow-python", file=sys.stderr)
            sys.exit(2)
    ratios = []
    for run in range(1, args.runs + 1):
        with work_dir() as work:
            ours = asyncio.run(trainyard(args.points, args.batch, work))
            base = mlflow_rate(args.mlflow_points, work, args.mlflow_python)
        ratios.append(ours / base)
        print(f"run {run}: trainyard {args.points} points publish→queryable at {ours:,.0f} points/s (batches of "
              f"{args.batch}, JetStream → MetricsProjector → chDB); mlflow {args.mlflow_points} points "
              f"log_batch(1000) into SQLite at {base:,.0f} points/s; ratio {ours / base:.1f}")
    print_ratio(statistics.median(ratios), note=f" (median of {len(ratios)} runs)")


if __name__ == "__main__":
    main()
