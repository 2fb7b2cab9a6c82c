"""Runner reports: per-report cost at step 100 vs step 100,000, and reports/s for 200 concurrent jobs.

The real path, as `trainyard serve` runs it: a fresh PostgreSQL database, TrainingApplication + LeaseStore +
ReportHandler + ReportServer subscribed on an embedded nats-server (temp dir, a free port, never 4222). Jobs are
submitted with `app.submit_job`, claimed with a `claim` report, then a runner process (a separate OS process,
as runners are) sends a `heartbeat` RunnerReport with current_step=i, total_steps=N for EVERY step with
`nc.request(REPORT_SUBJECT, …)`, the worst case of a runner reporting every step.

1. One job of --steps (100,000) steps, sequential (one request outstanding). The clock is per request, in the
   runner process. The cost "at step s" is the mean (and median) latency of the --window (200) reports around s:
   steps 1..200 for step 100, steps 99,801..100,000 for step 100,000 (which includes the last milestone's event
   write). The machine is shared, and load drifts over the two minutes between those windows, so the step-100
   cost that goes into `ratio=` is measured at the same moment as the step-100,000 one: a second job's steps
   1..200 are sent alternately with the first job's last 200 (still one request outstanding); the first job's
   own steps 1..200 give `ratio_unpaired=`. A warm-up job (--warmup reports) runs first (cold connections).
2. --jobs (200) jobs at once, each its own asyncio task (in one runner process) sending heartbeats for steps
   1..--multi-steps (100) sequentially, total_steps = --multi-total (100,000, as above: no milestone is crossed;
   --multi-total 0 sets it to --multi-steps, so every job crosses all 10 milestones, 10 event writes per job, the
   most a job ever records); reports/s = all reports ÷ (first send → last reply).
3. Baseline (the old design: an event per progress report, the aggregate replayed for each one):
   `app.record_progress` called directly (no NATS, no lease row: the old per-report path without transport) on a
   job that already has n progress events, for n in --baseline-at; the history is written in bulk (the same
   events record_progress writes) so that building it is not O(n²).

Also prints CPU per report of each part (this process, the database's PostgreSQL backends, nats-server, the
runner process). Ends with the cost at both steps, `reports_per_s=` (goal ≥ 2,000), `ratio_median=` and
`ratio_unpaired=`, `ratio_median=` and `ratio=<mean cost at step 100 ÷ mean cost at step 100,000>`, both
paired (≥ 1/1.2 = 0.83: "within 1.2×" holds).

    python -m bench.reports [--steps 100000] [--jobs 200] [--multi-steps 100] [--baseline-at 100,1000,10000]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import secrets
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import PG_SERVER, fresh_database, parser, print_ratio, work_dir

from domain.contract import REPORT_SUBJECT, RunnerReport

BODY = dict(name="bench", framework="lightgbm", task="binary_classification",
            dataset={"uri": "builtin://breast_cancer"}, params={"n_estimators": 50})


# ---- the runner side (a separate process) --------------------------------------------------------
def _report(kind: str, job_id: str, token: str, step: int | None = None, total: int | None = None) -> bytes:
    return RunnerReport(type=kind, job_id=job_id, lease=token, runner_id="bench:1", current_step=step,
                        total_steps=total).model_dump_json().encode()


async def _runner(nats_url: str, plan: dict[str, Any]) -> dict[str, Any]:
    import nats

    nc = await nats.connect(nats_url, name="bench-runner")
    errors = 0

    async def send(payload: bytes) -> float:
        nonlocal errors
        t = time.perf_counter_ns()
        try:
            msg = await nc.request(REPORT_SUBJECT, payload, timeout=10)
            if b'"ok":true' not in msg.data:
                errors += 1
        except Exception:
            errors += 1
        return (time.perf_counter_ns() - t) / 1e6

    jobs, steps, total, paired = plan["jobs"], plan["steps"], plan["total"], plan.get("paired", 0)
    await asyncio.gather(*(send(_report("claim", j, tok)) for j, tok in jobs))
    claim_errors, errors = errors, 0
    # Encoding is the runner's work: done before the clock, as the metrics bench does.
    # (paired: the second job only sends its first `paired` steps)
    counts = [paired if paired and k else steps for k in range(len(jobs))]
    payloads = [[_report("heartbeat", j, tok, i, total) for i in range(1, n + 1)] for (j, tok), n in zip(jobs, counts)]
    lat: list[list[float]] = [[] for _ in jobs]

    async def one_job(k: int) -> None:
        out = lat[k]
        for p in payloads[k]:
            out.append(await send(p))

    start, cpu = time.perf_counter(), time.process_time()
    if paired:  # jobs[0] runs all its steps; its last `paired` reports alternate with jobs[1]'s first `paired`
        a, b = payloads
        for p in a[:steps - paired]:
            lat[0].append(await send(p))
        for pa, pb in zip(a[steps - paired:], b):
            lat[1].append(await send(pb))
            lat[0].append(await send(pa))
    else:
        await asyncio.gather(*(one_job(k) for k in range(len(jobs))))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await nc.close()
    return {"lat": lat, "elapsed": elapsed, "errors": errors, "claim_errors": claim_errors, "cpu": cpu}


def _runner_process(nats_url: str, plan: dict[str, Any], out: Any) -> None:
    out.put(asyncio.run(_runner(nats_url, plan)))


async def run_runner(nats_url: str, plan: dict[str, Any], cpu: Any) -> dict[str, Any]:
    """Run the runner process; adds the CPU seconds the other parts spent meanwhile (`cpu()`: a snapshot)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_runner_process, args=(nats_url, plan, q), daemon=True)
    proc.start()
    before = cpu()
    result = await asyncio.to_thread(q.get)  # the event loop keeps serving reports meanwhile
    after = cpu()
    await asyncio.to_thread(proc.join)
    result["cpus"] = {k: after[k] - before.get(k, 0.0) for k in after}
    result["cpus"]["runner process"] = result["cpu"]
    return result


def cpu_snapshot(db_name: str, nats_pid: int) -> dict[str, float]:
    """CPU seconds so far: this process (all its threads), the PostgreSQL backends of the bench database,
    nats-server. (Includes the runner's set-up, claims and encoding for the postgres/nats/server parts.)"""
    import psutil

    pg = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "postgres" and db_name in " ".join(p.info["cmdline"] or ()):
                t = p.cpu_times()
                pg += t.user + t.system
        except psutil.Error:
            pass
    n = psutil.Process(nats_pid).cpu_times()
    return {"command process": time.process_time(), "postgres backends": pg, "nats-server": n.user + n.system}


def cpu_line(res: dict[str, Any], reports: int) -> str:
    return "  CPU per report: " + ", ".join(f"{k} {v / reports * 1e6:.0f} µs" for k, v in res["cpus"].items())


# ---- the command side (this process) ---------------------------------------------------------------
def submit(app: Any, n: int) -> list[tuple[str, str]]:
    from commands.training import SubmitJob

    return [(str(app.submit_job(SubmitJob(project="default", **BODY)).job_id), secrets.token_urlsafe(24)) for _ in range(n)]


def window(lat: list[float], at: int, width: int) -> list[float]:
    """Latencies of the `width` reports centred on step `at` (steps are 1-based; clamped to the run)."""
    lo = max(1, min(at - width // 2 + 1, len(lat) - width + 1))
    return lat[lo - 1:lo - 1 + width]


def describe(xs: list[float]) -> str:
    qs = statistics.quantiles(xs, n=100)
    return (f"mean {statistics.fmean(xs):.3f} ms, median {statistics.median(xs):.3f}, p99 {qs[98]:.3f}, "
            f"max {max(xs):.3f}")


def baseline(app: Any, at: list[int], samples: int) -> list[tuple[int, float]]:
    """The old design's per-report cost: record_progress (load = replay every event, then append one)."""
    from commands.context import CommandContext
    from domain.contract import lease_id_of

    ctx = CommandContext(actor="runner:bench:1")
    (job_id, token), = submit(app, 1)
    lease = lease_id_of(token)
    app.claim(uuid.UUID(job_id), lease, "bench:1", ctx)
    total, step, out = 10**9, 0, []
    for n in at:
        job = app.repository.get(uuid.UUID(job_id))
        while step < n:  # the history: progress events, written 1,000 at a time
            for _ in range(min(1000, n - step)):
                step += 1
                job.record_progress(lease, step, total)
            app.save(job)
        times = []
        for _ in range(samples):
            step += 1
            t = time.perf_counter()
            app.record_progress(uuid.UUID(job_id), lease, step, total, ctx)
            times.append((time.perf_counter() - t) * 1000)
        out.append((n, statistics.median(times)))
    return out


async def bench(args: argparse.Namespace, work: Path, db_url: str) -> None:
    from infra.leases import LeaseStore
    from commands.reports import ReportHandler
    from infra.report_server import ReportServer
    from commands.training import TrainingApplication
    from infra.embedded import EmbeddedNats, free_port
    from infra.messaging import connect
    from infra.postgres import eventsourcing_env, pool as pg_pool

    server = EmbeddedNats(work, preferred_port=free_port(0), accounts=False)
    nats_url = server.start()
    app = TrainingApplication(env=eventsourcing_env(db_url))
    pool = pg_pool(db_url)
    reports = leases = None
    try:
        leases = LeaseStore(db_url, ttl_s=15.0)
        reports = ReportServer(ReportHandler(app, leases))
        nc, _ = await connect(nats_url, "bench-reports")
        await reports.start(nc)
        print(f"setup: PostgreSQL {db_url.rpartition('/')[2]}, nats-server {nats_url}, ReportServer with "
              f"{len(reports.shards)} shards; runner = a separate process")

        # 1. one job, every step reported, sequentially
        def cpu() -> dict[str, float]:
            return cpu_snapshot(db_url.rpartition("/")[2], server.pid)

        warm = await asyncio.to_thread(submit, app, 1)
        await run_runner(nats_url, {"jobs": warm, "steps": args.warmup, "total": args.warmup}, cpu)
        jobs = await asyncio.to_thread(submit, app, 2)
        res = await run_runner(nats_url, {"jobs": jobs, "steps": args.steps, "total": args.steps,
                                          "paired": args.window}, cpu)
        lat, fresh = res["lat"]
        early, late = window(lat, 100, args.window), window(lat, args.steps, args.window)
        sent = len(lat) + len(fresh)
        print(f"single job: {args.steps:,} heartbeats (current_step=i, total_steps={args.steps:,}; + {len(fresh)} of "
              f"the second job) in {res['elapsed']:.1f} s = {sent / res['elapsed']:,.0f} reports/s sequential, "
              f"errors {res['errors'] + res['claim_errors']}")
        print(f"  all of the first job:    {describe(lat)}")
        print(cpu_line(res, sent))
        print(f"  at step 100     ({args.window} reports, steps 1..{args.window}, at the start): {describe(early)}")
        print(f"  at step {args.steps:,} ({args.window} reports, the last):             {describe(late)}")
        print(f"  at step 100 of a second job, its steps 1..{args.window} sent alternately with the first job's "
              f"last {args.window} (same moment, same machine load): {describe(fresh)}")
        tenth = args.steps // 10
        print("  mean per tenth of the run (ms): "
              + " ".join(f"{statistics.fmean(lat[k * tenth:(k + 1) * tenth]):.3f}" for k in range(10)))
        events = list(app.events.get(uuid.UUID(jobs[0][0])))
        kinds: dict[str, int] = {}
        for e in events:
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
        print(f"  job aggregate: {len(events)} events after {args.steps:,} reports "
              f"({', '.join(f'{k} {v}' for k, v in kinds.items())})")
        with pool.connection() as conn:  # a heartbeat changes expires_at, which is indexed: no HOT update
            upd, hot, dead, pages = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup, pg_relation_size('job_leases') / 8192 "
                "FROM pg_stat_user_tables WHERE relname = 'job_leases'").fetchone()
        print(f"  job_leases (3 rows): {upd:,} updates, {hot:,} of them HOT, {dead:,} dead tuples, {pages:,} heap pages "
              f"(PostgreSQL's statistics, which lag by up to a second)")
        cost_early, cost_late, single_s = statistics.fmean(fresh), statistics.fmean(late), res["elapsed"]
        unpaired = statistics.fmean(early) / cost_late

        # 2. many jobs at once
        jobs = await asyncio.to_thread(submit, app, args.jobs)
        total = args.multi_total or args.multi_steps
        res = await run_runner(nats_url, {"jobs": jobs, "steps": args.multi_steps, "total": total}, cpu)
        n = sum(len(x) for x in res["lat"])
        rate = n / res["elapsed"]
        crossed = min(10, args.multi_steps * 10 // total)
        print(f"{args.jobs} concurrent jobs: {n:,} heartbeats (steps 1..{args.multi_steps} per job, total_steps="
              f"{total:,}: {crossed} milestone event(s) per job) in {res['elapsed']:.1f} s = {rate:,.0f} reports/s, "
              f"errors {res['errors'] + res['claim_errors']}")
        print(f"  latency: {describe([x for xs in res['lat'] for x in xs])}")
        print(cpu_line(res, n))

        # 3. the old design
        if args.baseline_at:
            at = [int(x) for x in args.baseline_at.split(",")]
            rows = await asyncio.to_thread(baseline, app, at, args.baseline_samples)
            print("baseline (old design: app.record_progress per report, the aggregate replayed each time; direct "
                  f"call, no transport), median of "
                  f"{args.baseline_samples}: " + ", ".join(f"at {n:,} events {ms:.1f} ms" for n, ms in rows))
        print(f"cost_at_100_ms={cost_early:.3f} cost_at_{args.steps}_ms={cost_late:.3f}")
        print(f"reports_per_s={rate:.0f}")
        print(f"ratio_unpaired={unpaired:.2f} (the first job's own steps 1..{args.window}, measured "
              f"{single_s:.0f} s earlier: exposed to the shared machine's drift)")
        print(f"ratio_median={statistics.median(fresh) / statistics.median(late):.2f}")
        print_ratio(cost_early / cost_late)
        await nc.close()
    finally:
        if reports is not None:
            reports.close()
        if leases is not None:
            leases.close()
        pool.close()
        app.close()
        server.stop()


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=200, help="reports per cost window")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--multi-steps", type=int, default=100, help="heartbeats per job in the concurrent run")
    ap.add_argument("--multi-total", type=int, default=100_000,
                    help="their total_steps (0: = --multi-steps, so every job crosses all 10 milestones)")
    ap.add_argument("--baseline-at", default="100,1000,10000", help="comma-separated event counts; '' to skip")
    ap.add_argument("--baseline-samples", type=int, default=5)
    ap.add_argument("--pg", default=PG_SERVER, help="a PostgreSQL server URL (its database part is ignored)")
    args = ap.parse_args()
    if args.steps < max(1000, 2 * args.window):
        ap.error("--steps must be at least 1000 and twice --window")
    logging.basicConfig(level=logging.WARNING)
    with work_dir() as work, fresh_database(args.pg) as db_url:
        asyncio.run(bench(args, work, db_url))


if __name__ == "__main__":
    main()
