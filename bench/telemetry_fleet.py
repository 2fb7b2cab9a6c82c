"""A fleet of jobs on the telemetry path: publish → queryable lag, live-stream lag, serve's memory, nothing lost.

A real service: `trainyard up` in a subprocess on embedded engines (PostgreSQL, a closed nats-server, chDB) in a
scratch data dir, with one runner whose project has a running-jobs quota of 0, so the --jobs submitted jobs stay
queued and no runner trains them (telemetry is accepted whatever a job's state). The bench plays the runners: a
separate process logs in to NATS with the runner's credentials that `up` wrote (`credentials/nats-runner-0.json`,
one connection per 10 jobs) and, for --seconds, every job publishes a MetricBatch every 250 ms (4 metrics,
--steps-per-batch steps each, steps increasing) and once a second a LogBatch of --lines-per-s lines, as runners
publish them (`Nats-Msg-Id` = batch id, each job's batches in order, the next one after the previous ack). A
point's `ts_ms` is when its batch was made, just before its publish, so every lag below starts there.

- publish → queryable: --probes sampling tasks in the publishing process each pick a job, wait for its next batch
  and poll `GET /api/v1/training/jobs/{id}/metrics` (each metric's latest step) every 50 ms until the batch's last
  step shows; lag = that response's arrival − the publish (so it is rounded up by up to one poll).
- stream lag: --clients SSE clients (httpx, the owner's token, another process) follow as many jobs on
  `GET /api/v1/training/jobs/{id}/stream`; lag = a message's arrival − each point's (line's) ts.
- memory: the RSS of serve and its children (the projection process), summed, sampled every 0.5 s; and serve's
  own VmHWM at the end.
- loss and duplicates: once publishing stops, every job's 4 series (`GET …/metrics/{name}`) and its log
  (`GET …/logs`) must hold exactly the steps, values and lines sent, and every stream exactly those of its job,
  each once, in order.

    .venv/bin/python -m bench.telemetry_fleet [--jobs 200 --seconds 60 --clients 20]

Goals printed against: publish → queryable p99 ≤ 2 s, stream lag p99 ≤ 1 s, RSS bounded (reported). Ends with
`stream_p99_ms=`.
"""
from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import ROOT, parser, percentile, print_ratio, work_dir
from bench.serving import log_tail, wait_http

JOBS = "/api/v1/training/jobs"
METRICS = ("train_loss", "valid_loss", "valid_auc", "lr")
PERIOD_S = 0.25  # a runner's metric flush interval
PROBE_POLL_S = 0.05
JOBS_PER_CONNECTION = 10


def value(name: str, step: int) -> float:
    """What job publishes for `name` at `step` (the same for every job: the check compares exactly)."""
    return (METRICS.index(name) + 1) / step


def message(seq: int) -> str:
    return f"[LightGBM] [Info] iteration {seq}: valid's binary_logloss {1 / (seq + 1):.6f}"


def ms_now() -> int:
    return time.time_ns() // 1_000_000


# ---- the runners (a separate process) -----------------------------------------------------------------------
async def _fleet(plan: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from domain.contract import TELEMETRY_LOGS, TELEMETRY_METRICS, LogBatch, LogLine, MetricBatch, SeriesChunk
    from infra.messaging import connect
    from infra.nats_accounts import NatsCredentials

    creds = NatsCredentials.read(Path(plan["creds"]))
    job_ids: list[str] = plan["jobs"]
    spb, lines_per_s, seconds = plan["steps_per_batch"], plan["lines_per_s"], plan["seconds"]
    conns = [await connect(plan["nats"], f"bench-fleet-{i}", creds)
             for i in range(math.ceil(len(job_ids) / JOBS_PER_CONNECTION))]
    sent = {j: {"last_step": 0, "lines": 0} for j in job_ids}
    nxt: dict[str, asyncio.Future] = {j: asyncio.get_running_loop().create_future() for j in job_ids}
    late_ms: list[float] = []
    ack_ms: list[float] = []
    errors = [0]
    running = [True]

    async def publish(js: Any, subject: str, batch: Any) -> None:
        payload = batch.model_dump_json().encode()
        for attempt in range(10):  # as the Shipper: retry the same batch (the same id: a landed one is deduplicated)
            t = time.perf_counter()
            try:
                await js.publish(subject, payload, headers={"Nats-Msg-Id": batch.batch_id})
                ack_ms.append((time.perf_counter() - t) * 1000)
                return
            except Exception:  # noqa: BLE001 (counted; retried)
                errors[0] += 1
                await asyncio.sleep(0.25)
        raise RuntimeError(f"batch {batch.batch_id} never published")

    async def job(k: int, job_id: str, t0: float) -> None:
        js = conns[k // JOBS_PER_CONNECTION][1]
        phase = PERIOD_S * k / len(job_ids)  # spread over the period, as independent runners would be
        step = seq = b = 0
        while True:
            due = t0 + phase + b * PERIOD_S
            if due >= t0 + seconds:
                break
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late_ms.append(-delay * 1000)
            ts = ms_now()
            steps = list(range(step + 1, step + spb + 1))
            batch = MetricBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=1, runner_id=f"fleet:{k}",
                                series={n: SeriesChunk.packed(steps, [value(n, s) for s in steps], [ts] * spb)
                                        for n in METRICS})  # packed, as runners send them
            waiting, nxt[job_id] = nxt[job_id], asyncio.get_running_loop().create_future()
            waiting.set_result((steps[-1], ts))  # a probe waiting for this job's next batch starts its clock
            await publish(js, TELEMETRY_METRICS, batch)
            step = sent[job_id]["last_step"] = steps[-1]
            if b % round(1 / PERIOD_S) == 0:  # once a second, the lines printed meanwhile
                ts = ms_now()
                lines = [LogLine(seq=s, ts_ms=ts, level="warning" if s % 10 == 0 else "info", stream="stdout",
                                 message=message(s)) for s in range(seq, seq + lines_per_s)]
                await publish(js, TELEMETRY_LOGS, LogBatch(batch_id=str(uuid.uuid4()), job_id=job_id, attempt=1,
                                                           runner_id=f"fleet:{k}", lines=lines))
                seq = sent[job_id]["lines"] = seq + lines_per_s
            b += 1

    probe_ms: list[float] = []

    async def probe(http: Any) -> None:
        while running[0]:
            job_id = random.choice(job_ids)
            try:
                last_step, ts = await asyncio.wait_for(asyncio.shield(nxt[job_id]), PERIOD_S * 2)
            except asyncio.TimeoutError:
                continue
            while running[0] or time.time() * 1000 - ts < 30_000:
                r = await http.get(f"{JOBS}/{job_id}/metrics")
                if r.status_code == 200:
                    latest = r.json()["latest"]
                    if len(latest) == len(METRICS) and min(p["step"] for p in latest.values()) >= last_step:
                        probe_ms.append(ms_now() - ts)
                        break
                await asyncio.sleep(PROBE_POLL_S)

    t0 = plan["start_at"]
    async with httpx.AsyncClient(base_url=plan["api"], headers={"Authorization": f"Bearer {plan['token']}"},
                                 timeout=30) as http:
        probes = [asyncio.create_task(probe(http)) for _ in range(plan["probes"])]
        cpu = time.process_time()
        await asyncio.gather(*(job(k, j, t0) for k, j in enumerate(job_ids)))
        ended = time.time()
        cpu = time.process_time() - cpu
        running[0] = False
        await asyncio.gather(*probes)
    for nc, _ in conns:
        await nc.close()
    return {"sent": sent, "probe_ms": probe_ms, "late_ms": late_ms, "ack_ms": ack_ms, "errors": errors[0],
            "ended": ended, "cpu_s": cpu}


def fleet_process(plan: dict[str, Any], out: Any) -> None:
    out.put(asyncio.run(_fleet(plan)))


# ---- the live-stream clients (a separate process) ---------------------------------------------------------------
async def _follow(plan: dict[str, Any], ready: Any, expected: Any) -> dict[str, Any]:
    import httpx

    job_ids: list[str] = plan["jobs"]
    got = {j: {"steps": {n: [] for n in METRICS}, "seqs": [], "events": 0} for j in job_ids}
    metric_lag: list[float] = []
    log_lag: list[float] = []
    opened = [0]
    all_open = asyncio.Event()

    async def follow(http: Any, job_id: str) -> None:
        mine = got[job_id]
        async with http.stream("GET", f"{JOBS}/{job_id}/stream") as r:
            assert r.status_code == 200, f"stream of {job_id}: {r.status_code}"
            opened[0] += 1
            if opened[0] == len(job_ids):
                all_open.set()
            event, data = "", []
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    now = ms_now()
                    body = json.loads("\n".join(data))
                    mine["events"] += 1
                    if event == "metrics":
                        for p in body["points"]:
                            metric_lag.append(now - p["ts"])
                            mine["steps"][p["name"]].append(p["step"])
                    elif event == "logs":
                        for ln in body["lines"]:
                            log_lag.append(now - ln["ts"])
                            mine["seqs"].append(ln["seq"])
                    event, data = "", []

    timeout = httpx.Timeout(30, read=None)
    limits = httpx.Limits(max_connections=len(job_ids) + 5)
    async with httpx.AsyncClient(base_url=plan["api"], headers={"Authorization": f"Bearer {plan['token']}"},
                                 timeout=timeout, limits=limits) as http:
        tasks = [asyncio.create_task(follow(http, j)) for j in job_ids]
        await asyncio.wait_for(all_open.wait(), 60)
        ready.set()
        sent = await asyncio.to_thread(expected.get)  # once the fleet is done: what each job sent

        def complete() -> bool:
            return all(len(got[j]["steps"][n]) >= sent[j]["last_step"] and len(got[j]["seqs"]) >= sent[j]["lines"]
                       for j in job_ids for n in METRICS)

        deadline = time.monotonic() + 60
        while not complete() and time.monotonic() < deadline and not any(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        failures = [repr(t.exception()) for t in tasks if t.done() and not t.cancelled() and t.exception()]
    return {"got": got, "metric_lag": metric_lag, "log_lag": log_lag, "failures": failures}


def follow_process(plan: dict[str, Any], ready: Any, expected: Any, out: Any) -> None:
    out.put(asyncio.run(_follow(plan, ready, expected)))


# ---- the service (`trainyard up`) and its memory -----------------------------------------------------------------
class Up:
    """`trainyard up` with one runner in a scratch data dir; the bench signs in as the first owner."""

    def __init__(self, work: Path) -> None:
        from infra.embedded import free_port

        self.data_dir = work / "trainyard"
        self.log_path = work / "up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        env.update(TRAINYARD_DATA_DIR=str(self.data_dir), TRAINYARD_RUNNERS="1",
                   TRAINYARD_API_PORT=str(free_port(0)), TRAINYARD_INFERENCE_PORT=str(free_port(0)))
        self.log = open(self.log_path, "w")
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "up"], env=env, cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        endpoints = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + 180
        while not endpoints.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`trainyard up` did not start (rc {self.proc.poll()})\n{log_tail(self.log_path)}")
            time.sleep(0.1)
        self.endpoints = json.loads(endpoints.read_text())
        self.api = self.endpoints["api"]
        wait_http(f"{self.api}/readyz", 180, "trainyard API /readyz", proc=self.proc, log=self.log_path)
        self.token = (self.data_dir / "admin-token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {self.token}"}
        import httpx

        deadline = time.monotonic() + 60
        while httpx.get(f"{self.api}/api/v1/me", headers=self.headers, timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the owner's token never worked\n{log_tail(self.log_path)}")
            time.sleep(0.2)
        self.start_s = time.perf_counter() - started

    @property
    def serve_pid(self) -> int:
        return json.loads((self.data_dir / "endpoints.json").read_text())["pids"]["serve"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Memory(threading.Thread):
    """The summed RSS of serve and its children, sampled every 0.5 s; the peak, and serve's CPU seconds."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        import psutil

        self.serve = psutil.Process(pid)
        self.peak = 0
        self.samples: list[int] = []
        self.done = threading.Event()

    def tree(self) -> list[Any]:
        import psutil

        try:
            return [self.serve, *self.serve.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_s(self) -> float:
        import psutil

        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def rss(self) -> int:
        import psutil

        total = 0
        for p in self.tree():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self.done.wait(0.5):
            rss = self.rss()
            self.samples.append(rss)
            self.peak = max(self.peak, rss)

    def hwm_mib(self) -> float:
        """serve's own peak RSS as the kernel counted it (VmHWM)."""
        for line in Path(f"/proc/{self.serve.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


# ---- the checks --------------------------------------------------------------------------------------------------
async def _stored(api: str, token: str, sent: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Wait until every job's last step is queryable (up to 120 s; when: `drained`), then compare each job's
    series and log, as the API returns them, with what was sent."""
    import httpx

    problems: list[str] = []
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async def latest(job_id: str) -> dict[str, Any]:
            r = await http.get(f"{JOBS}/{job_id}/metrics")
            return r.json().get("latest", {}) if r.status_code == 200 else {}

        deadline = time.monotonic() + 120
        waiting = set(sent)
        while waiting and time.monotonic() < deadline:
            async def done(job_id: str) -> bool:
                async with sem:
                    now = await latest(job_id)
                return len(now) == len(METRICS) and min(p["step"] for p in now.values()) >= sent[job_id]["last_step"]
            jobs = sorted(waiting)
            waiting -= {j for j, ok in zip(jobs, await asyncio.gather(*(done(j) for j in jobs))) if ok}
            if waiting:
                await asyncio.sleep(0.1)
        drained = time.time()
        problems += [f"{j}: not all queryable after 120 s: {await latest(j)}" for j in sorted(waiting)]

        async def compare(job_id: str) -> None:
            last, lines = sent[job_id]["last_step"], sent[job_id]["lines"]
            async with sem:
                for name in METRICS:
                    r = await http.get(f"{JOBS}/{job_id}/metrics/{name}", params={"max_points": 100_000})
                    points = r.json()["points"] if r.status_code == 200 else []
                    steps = [p["step"] for p in points]
                    if steps != list(range(1, last + 1)):
                        problems.append(f"{job_id} {name}: {len(steps)} points, {len(set(steps))} distinct steps, "
                                        f"sent {last}")
                    elif any(p["value"] != value(name, p["step"]) for p in points):
                        problems.append(f"{job_id} {name}: a value differs from the one sent")
                r = await http.get(f"{JOBS}/{job_id}/logs", params={"limit": 10_000})
                got = r.json()["lines"] if r.status_code == 200 else []
                seqs = [ln["seq"] for ln in got]
                if seqs != list(range(lines)):
                    problems.append(f"{job_id} logs: {len(seqs)} lines, {len(set(seqs))} distinct, sent {lines}")
                elif any(ln["message"] != message(ln["seq"]) for ln in got):
                    problems.append(f"{job_id} logs: a message differs from the one sent")

        await asyncio.gather(*(compare(j) for j in sent))
    return {"problems": problems, "drained": drained}


def stream_problems(followed: dict[str, Any], sent: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for job_id, got in followed.items():
        last, lines = sent[job_id]["last_step"], sent[job_id]["lines"]
        for name in METRICS:
            if got["steps"][name] != list(range(1, last + 1)):
                s = got["steps"][name]
                out.append(f"stream {job_id} {name}: {len(s)} points, {len(set(s))} distinct, sent {last}")
        if got["seqs"] != list(range(lines)):
            s = got["seqs"]
            out.append(f"stream {job_id} logs: {len(s)} lines, {len(set(s))} distinct, sent {lines}")
    return out


def dist(xs: list[float]) -> str:
    return (f"p50 {percentile(xs, 50):7.0f} ms  p99 {percentile(xs, 99):7.0f} ms  max "
            f"{max(xs) if xs else float('nan'):7.0f} ms  (n={len(xs):,})")


def verdict(ok: bool) -> str:
    return "holds" if ok else "MISSED"


def main() -> None:
    import httpx

    ap = parser(__doc__)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=20, help="SSE clients, each following one job")
    ap.add_argument("--steps-per-batch", type=int, default=5)
    ap.add_argument("--lines-per-s", type=int, default=3)
    ap.add_argument("--probes", type=int, default=2, help="concurrent publish→queryable sampling tasks")
    args = ap.parse_args()
    if not 1 <= args.clients <= args.jobs:
        ap.error("--clients must be from 1 to --jobs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    ctx = mp.get_context("spawn")
    with work_dir("trainyard-fleet-") as work:
        up = Up(work)
        try:
            print(f"trainyard up: ready in {up.start_s:.1f} s (embedded PostgreSQL and NATS, chDB, 1 runner)")
            http = httpx.Client(base_url=up.api, headers=up.headers, timeout=30)
            r = http.put("/api/v1/projects/default/quotas", json={"quotas": {"max_running_jobs": 0},
                                                                    "reason": "bench: the jobs stay queued"})
            assert r.status_code == 200, f"quotas: {r.status_code} {r.text}"
            t = time.perf_counter()
            job_ids = []
            for i in range(args.jobs):
                r = http.post(JOBS, json={"name": f"fleet-{i}", "framework": "lightgbm",
                                          "task": "binary_classification",
                                          "dataset": {"uri": "builtin://breast_cancer"}})
                assert r.status_code == 202, f"submit: {r.status_code} {r.text}"
                job_ids.append(r.json()["job_id"])
            print(f"submitted {args.jobs} jobs in {time.perf_counter() - t:.1f} s (they stay queued)")
            memory = Memory(up.serve_pid)
            memory.start()
            ready, expected, followed_q = ctx.Event(), ctx.Queue(), ctx.Queue()
            followers = ctx.Process(target=follow_process, daemon=True, args=(
                {"api": up.api, "token": up.token, "jobs": job_ids[:args.clients]}, ready, expected, followed_q))
            followers.start()
            if not ready.wait(90):
                raise RuntimeError("the SSE clients never all connected")
            t, cpu_idle = time.perf_counter(), memory.cpu_s()  # the streams are open, nothing is published yet
            time.sleep(3.0)
            cpu_idle = (memory.cpu_s() - cpu_idle) / (time.perf_counter() - t)
            fleet_q = ctx.Queue()
            plan = {"api": up.api, "token": up.token, "nats": up.endpoints["nats"],
                    "creds": str(up.data_dir / "credentials" / "nats-runner-0.json"), "jobs": job_ids,
                    "seconds": args.seconds, "steps_per_batch": args.steps_per_batch,
                    "lines_per_s": args.lines_per_s, "probes": args.probes,
                    "start_at": time.time() + 3.0}  # the clock starts once the process has started
            rss_before, cpu_before = memory.rss(), memory.cpu_s()
            fleet = ctx.Process(target=fleet_process, args=(plan, fleet_q), daemon=True)
            fleet.start()
            result = fleet_q.get()
            fleet.join()
            cpu_run, run_s = memory.cpu_s() - cpu_before, time.time() - plan["start_at"] + 3.0
            stored = asyncio.run(_stored(up.api, up.token, result["sent"]))
            expected.put({j: result["sent"][j] for j in job_ids[:args.clients]})
            streams = followed_q.get()
            followers.join(10)
            memory.done.set()
            memory.join()
            hwm = memory.hwm_mib()
        finally:
            up.stop()
    sent = result["sent"]
    points = sum(s["last_step"] for s in sent.values()) * len(METRICS)
    lines = sum(s["lines"] for s in sent.values())
    batches = len(result["ack_ms"])
    metric_batches = points // len(METRICS) // args.steps_per_batch
    print(f"fleet: {args.jobs} jobs × {args.seconds:g} s: {batches:,} batches published "
          f"({batches / args.seconds:,.0f}/s: {metric_batches:,} metric, the rest log), {points:,} "
          f"points ({points / args.seconds:,.0f}/s), {lines:,} log lines; publish errors {result['errors']}; "
          f"publishing process CPU {result['cpu_s']:.1f} s")
    print(f"  publish ack:            {dist(result['ack_ms'])}")
    print(f"  schedule slip:          {len(result['late_ms']):,} of {batches:,} publishes started late, "
          f"max {max(result['late_ms'], default=0):.0f} ms")
    q99, s99 = percentile(result["probe_ms"], 99), percentile(streams["metric_lag"], 99)
    l99 = percentile(streams["log_lag"], 99)
    print(f"publish → queryable (API, sampled): {dist(result['probe_ms'])}  goal p99 ≤ 2000 ms: "
          f"{verdict(q99 <= 2000)}")
    print(f"  all queryable {stored['drained'] - result['ended']:.1f} s after the last publish")
    print(f"stream lag, metric points:          {dist(streams['metric_lag'])}  goal p99 ≤ 1000 ms: "
          f"{verdict(s99 <= 1000)}")
    print(f"stream lag, log lines:              {dist(streams['log_lag'])}  goal p99 ≤ 1000 ms: "
          f"{verdict(l99 <= 1000)}")
    mib = 1024 * 1024
    print(f"serve RSS (serve + projection process, sampled): before {rss_before / mib:.0f} MiB, peak "
          f"{memory.peak / mib:.0f} MiB, at the end {memory.samples[-1] / mib:.0f} MiB; serve's own VmHWM "
          f"{hwm:.0f} MiB")
    print(f"serve tree CPU: {cpu_idle:.2f} cores idle (streams open), {cpu_run / run_s:.2f} cores from the fleet's "
          f"start to its last publish")
    problems = stored["problems"] + stream_problems(streams["got"], sent) + streams["failures"]
    print(f"loss/duplicates: {args.jobs} jobs × {len(METRICS)} series + logs through the API, {args.clients} "
          f"streams: {'none' if not problems else f'{len(problems)} problems'}")
    for p in problems[:20]:
        print(f"  {p}")
    print_ratio(q99, 0, name="queryable_p99_ms")
    print_ratio(s99, 0, name="stream_p99_ms")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
