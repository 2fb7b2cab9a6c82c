"""Submit latency through the real HTTP API at fixed arrival rates (open loop, coordinated-omission-safe).

The service side is what `trainyard serve` runs for a submit, in this process: the app from
`entrypoints.bootstrap.build_services(Settings(...))` + `api.app.create_app(services)` under uvicorn (a background thread, a free
port on 127.0.0.1), with the eager publish of each submit's work item to JetStream (`EagerWork`, as serve sets it),
and the `jobs` projection (`ProjectionProcess`: a child process, as serve runs it) so that a POST
returns only once the read model shows the job (read-your-writes, `api/jobs.py` `_catch_up`). A fresh PostgreSQL
database (dropped at the end), an embedded nats-server (temp dir, a free port, never 4222), chDB in a temp dir.

The load generator is a separate OS process (raw HTTP/1.1 on 64 keep-alive connections, bench/serving.py's
pieces; its CPU per request is printed): for each rate, request i is
due at t0 + i/rate, fired as its own task at that time, and its latency is measured from that due time (not from
when it was actually sent), so a stall shows up as queueing in every request it delays. Each rate runs
--seconds (10) after a --warmup (2 s at 50/s, not counted). Errors: anything but a 202 (timeouts included).

    python -m bench.commands [--rates 50,100,200] [--seconds 10]

Prints per rate: sent, errors, p50, p99, max (ms); the service's CPU per submit; ends with `p99_at_200_ms=`
(goal ≤ 20 ms).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import PG_SERVER, fresh_database, parser, percentile, work_dir

PATH = "/api/v1/training/jobs"


def body(i: int) -> dict[str, Any]:
    return {"name": f"bench-{i}", "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 50, "num_leaves": 15}}


# ---- the load generator (a separate process) ------------------------------------------------------
async def _load(base: str, rate: float, seconds: float, probe: str | None = None,
                connections: int = 64, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Raw HTTP/1.1 over a pool of keep-alive connections (bench/serving.py's generator pieces: a few hundred µs
    of CPU per request, where httpx took about a millisecond on the same cores as the service)."""
    from bench.serving import Conn, read_response, request_bytes

    port = int(base.rpartition(":")[2])
    n = int(rate * seconds)
    if probe:
        requests = [f"GET {probe} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()] * n
    else:
        requests = [request_bytes(port, PATH, body(i), headers or {}) for i in range(n)]
    lat: list[float] = []  # from the due time: what a caller arriving on schedule waits
    service: list[float] = []  # from the actual send: what the server alone took (hides queueing)
    errors: dict[str, int] = {}
    pool: asyncio.Queue = asyncio.Queue()
    conns = [Conn(port) for _ in range(connections)]
    await asyncio.gather(*(c.ensure() for c in conns))
    for c in conns:
        pool.put_nowait(c)
    loop = asyncio.get_running_loop()

    async def one(i: int, due: float) -> None:
        conn = None
        try:
            async with asyncio.timeout(10.0):
                conn = await pool.get()
                sent = loop.time()
                await conn.ensure()
                conn.writer.write(requests[i])
                status, _, close = await read_response(conn.reader)
                if close:
                    conn.drop()
            code = "202" if probe and status == 200 else str(status)
        except Exception as e:  # noqa: BLE001 (a timeout or a dropped connection counts as an error)
            code = type(e).__name__
            if conn is not None:
                conn.drop()
        finally:
            if conn is not None:
                pool.put_nowait(conn)
        done = loop.time()
        if code == "202":
            lat.append((done - due) * 1000)
            service.append((done - sent) * 1000)
        else:
            errors[code] = errors.get(code, 0) + 1

    cpu0 = time.process_time()
    t0 = loop.time() + 0.05
    tasks = []
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    for c in conns:
        c.drop()
    return {"sent": n, "lat": lat, "service": service, "errors": errors, "elapsed": elapsed,
            "generator_cpu_ms": (time.process_time() - cpu0) / n * 1000}


def _load_process(base: str, rate: float, seconds: float, probe: str | None, headers: dict[str, str],
                  out: Any) -> None:
    out.put(asyncio.run(_load(base, rate, seconds, probe, headers=headers)))


HEADERS: dict[str, str] = {}  # the owner's credentials, set once the service is up


def load(base: str, rate: float, seconds: float, probe: str | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(base, rate, seconds, probe, HEADERS, q), daemon=True)
    proc.start()
    result = q.get()
    proc.join()
    return result


# ---- the service (this process) ---------------------------------------------------------------------
class Projection(threading.Thread):
    """The jobs projection as serve runs it: ProjectionHost.run in its own asyncio loop."""

    def __init__(self, host: Any) -> None:
        super().__init__(name="projection-host", daemon=True)
        self.host, self.loop, self.stop_event = host, None, None
        self.ready = threading.Event()

    def run(self) -> None:
        async def main() -> None:
            self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
            self.ready.set()
            await self.host.run(self.stop_event)

        asyncio.run(main())

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(15)


class EagerPublisher:
    """What serve adds to a submit: `projections.relay.EagerWork` as the application's `on_saved`, publishing each
    submit's work item to JetStream from a NATS connection on its own loop (serve uses its main loop's)."""

    def __init__(self, services: Any, nats_url: str) -> None:
        from infra.messaging import connect, ensure_streams
        from projections.relay import EagerWork

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="eager-publisher", daemon=True)
        self.thread.start()

        async def start() -> Any:
            nc, js = await connect(nats_url, "bench-eager")
            await ensure_streams(js, services.settings)
            return nc, js

        self.nc, js = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        services.app.on_saved = EagerWork(js, self.loop)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def cpu_snapshot(db_name: str, projection_pid: int | None) -> dict[str, float]:
    """CPU seconds so far: this process (the API, all threads), the projection process (a child, not the load
    generator) and the PostgreSQL backends of the db."""
    import psutil

    pg = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "postgres" and db_name in " ".join(p.info["cmdline"] or ()):
                t = p.cpu_times()
                pg += t.user + t.system
        except psutil.Error:
            pass
    proj = 0.0
    if projection_pid is not None:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(projection_pid).cpu_times()
            proj = t.user + t.system
    return {"service process": time.process_time(), "projection process": proj, "postgres backends": pg}


class Breakdown:
    """--breakdown: wraps (in this process only, for measurement) the steps of a submit to time them:
    check_job, the event-store insert (TrainingApplication.submit_job), the read-your-writes wait, and when the
    projection applied each position, so the wait splits into projection lag (commit → applied) and the wait's
    overshoot (applied → the poll that saw it)."""

    def __init__(self) -> None:
        import api.jobs as jobs
        from commands.training import TrainingApplication
        from projections.read_your_writes import AppliedPositions

        self.t: dict[str, list[float]] = {}
        self.committed: dict[int, float] = {}
        self.applied: dict[int, float] = {}
        self.waited: dict[int, float] = {}
        self.polls: list[int] = []
        timed = self._timed
        jobs.check_job = timed("check_job", jobs.check_job)
        submit = TrainingApplication.submit_job

        def submit_job(app: Any, *a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            out = submit(app, *a, **kw)
            now = time.perf_counter()
            self.t.setdefault("insert (submit_job)", []).append((now - t) * 1000)
            if out.position is not None:
                self.committed[out.position] = now
            return out

        TrainingApplication.submit_job = submit_job
        announce = AppliedPositions._announce

        def announced(positions: Any, key: str, position: int) -> None:  # the NOTIFY of an applied position
            self.applied.setdefault(position, time.perf_counter())
            announce(positions, key, position)

        AppliedPositions._announce = announced
        wait = AppliedPositions.wait_for

        def wait_for(applied: Any, projection: str, app_name: str, position: int, timeout_s: float) -> bool:
            t = time.perf_counter()
            ok = wait(applied, projection, app_name, position, timeout_s)
            now = time.perf_counter()
            self.t.setdefault("read-your-writes wait", []).append((now - t) * 1000)
            self.waited[position] = now
            return ok

        AppliedPositions.wait_for = wait_for

    def _timed(self, name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.t.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        return wrapper

    def reset(self) -> None:
        self.t.clear()
        self.committed.clear()
        self.waited.clear()

    def report(self) -> str:
        lag = [(self.applied[p] - c) * 1000 for p, c in self.committed.items() if p in self.applied]
        over = [(self.waited[p] - self.applied[p]) * 1000 for p in self.waited if p in self.applied]
        rows = {**self.t, "  of which projection lag (commit → announced)": lag,
                "  of which wait overshoot (announced → seen)": over}
        return "\n".join(f"    {k:<45} p50 {percentile(v, 50):6.1f} ms  p99 {percentile(v, 99):6.1f} ms  mean "
                         f"{statistics.fmean(v):6.1f} ms  (n={len(v)})" for k, v in rows.items() if v)


EXPERIMENTS = ("no-wait", "switch-1ms", "healthz")


def experiment(name: str) -> None:
    """--experiment: measured variants of the service, patched in this process only (nothing outside bench/ is
    changed); several may be combined with commas. `no-wait`: POST returns right after the insert (what the
    read-your-writes wait costs). `switch-1ms`: sys.setswitchinterval(0.001) instead of 5 ms (a test of the GIL
    convoy hypothesis). `threads-N`: sync routes on at most N worker threads (anyio's default 40). `healthz`: the load generator GETs /healthz instead (a sync route through the same
    middleware and threadpool: the HTTP stack's floor)."""
    from projections.read_your_writes import AppliedPositions

    if name == "switch-1ms":
        sys.setswitchinterval(0.001)
    elif name.startswith("threads-"):  # sync routes on at most N threads (anyio's default: 40)
        import anyio.to_thread

        limiters: dict[int, Any] = {}

        def limiter() -> Any:
            loop = id(asyncio.get_running_loop())
            if loop not in limiters:
                limiters[loop] = anyio.CapacityLimiter(int(name.partition("-")[2]))
            return limiters[loop]

        anyio.to_thread.current_default_thread_limiter = limiter
    elif name == "no-wait":
        AppliedPositions.wait_for = lambda *a, **kw: True


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each live thread of this process: {native id: (group name, seconds)}."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float]] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "other (non-Python)")
        for group in ("AnyIO worker thread", "pool-"):
            if name.startswith(group):
                name = group + ("*" if group == "pool-" else "s")
        if "(" in name and name.startswith("Thread-"):
            name = "projection runner " + name[name.index("("):]
        out[t.id] = (name, t.user_time + t.system_time)
    return out


def thread_cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                     process_s: float) -> dict[str, float]:
    """CPU seconds per thread group between two snapshots; what threads that exited in between used is the
    process's delta less the rest ("exited threads")."""
    out: dict[str, float] = {}
    for tid, (name, s) in after.items():
        out[name] = out.get(name, 0.0) + s - before.get(tid, (name, 0.0))[1]
    out["exited threads"] = process_s - sum(out.values())
    return out


def sign_in(services: Any) -> None:
    """The submits carry the first owner's API token, once the identity cache has it."""
    from commands.credentials import sha256

    token = (services.settings.data_dir / "admin-token").read_text().strip()
    deadline = time.monotonic() + 60
    while services.auth.cache.token(sha256(token)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the owner's token never reached the identity cache")
        time.sleep(0.1)
        services.auth.cache.reload()
    HEADERS["Authorization"] = f"Bearer {token}"


def auth_cost(services: Any, n: int = 20_000) -> str:
    """What authenticating and authorizing a request costs on its own (api/auth.py, in this process): the
    dependency every route runs, for an API token and for an access token (JWT), p50 over `n` calls."""
    from starlette.requests import Request

    from api.auth import _Allow
    from commands.identity import FIRST_OWNER

    session = __import__("uuid").uuid4()
    jwt_token, _ = services.auth.access_tokens.issue(FIRST_OWNER, session)
    app = type("App", (), {"state": type("State", (), {"services": services})()})()
    check = _Allow("job.submit")
    out = []
    for label, credential in (("api token", HEADERS["Authorization"]), ("access token (JWT)", f"Bearer {jwt_token}")):
        scope = {"type": "http", "method": "POST", "path": PATH, "headers": [(b"authorization", credential.encode())],
                 "query_string": b"", "app": app}
        times = []
        for _ in range(n):
            request = Request(scope)
            t = time.perf_counter()
            coro = check(request)  # it never awaits: one send runs it to the end
            try:
                coro.send(None)
            except StopIteration:
                pass
            times.append((time.perf_counter() - t) * 1e6)
        times.sort()
        out.append(f"{label} p50 {times[n // 2]:.1f} µs, p99 {times[int(n * 0.99)]:.1f} µs")
    return "auth check (authenticate + authorize, per request): " + "; ".join(out)


def run(args: argparse.Namespace, work: Path, db_url: str) -> None:
    import uvicorn

    from api.app import create_app
    from entrypoints.bootstrap import build_services as build
    from infra.embedded import EmbeddedNats, free_port
    from infra.postgres import eventsourcing_env
    from commands.training import TrainingApplication
    from infra.settings import Settings
    from projections.hosting import ProjectionProcess
    from projections.read_models import process_specs

    for name in args.experiment.split(","):
        if name != "none":
            experiment(name)
    breakdown = Breakdown() if args.breakdown else None
    nats = EmbeddedNats(work, preferred_port=free_port(0), accounts=False)
    nats_url = nats.start()
    services = build(Settings(database_url=db_url, nats_url=nats_url, clickhouse_url=None, data_dir=work / "data"))
    eager = EagerPublisher(services, nats_url)  # as serve: each submit's work item goes out at once
    jobs_read_model = process_specs(TrainingApplication)[:1]  # in its own process, as serve runs it
    name, app, proj, view = jobs_read_model[0]
    identity_read_model = [s for s in process_specs(TrainingApplication) if s[0] == "projection:identity"]
    identity = Projection(ProjectionProcess(identity_read_model, db_url,
                                            {identity_read_model[0][0]: services.health.stage(identity_read_model[0][0])}))
    if args.projection == "process":
        projection = Projection(ProjectionProcess(jobs_read_model, db_url, {name: services.health.stage(name)}))
    else:  # --projection thread: in this process, as serve ran it before (for comparison)
        from projections.hosting import ProjectionHost, _load

        projection = Projection(ProjectionHost(_load(app), _load(proj), _load(view), eventsourcing_env(db_url),
                                               services.pool, services.health.stage(name)))
    port = free_port(0)
    server = uvicorn.Server(uvicorn.Config(create_app(services, nats_client=None), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    api = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    try:
        identity.start()
        projection.start()
        api.start()
        sign_in(services)
        print(auth_cost(services))
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        print(f"setup: PostgreSQL {db_url.rpartition('/')[2]}, nats-server {nats_url}, API {base} (uvicorn thread, "
              f"sync routes in its threadpool), jobs projection: {args.projection}; load generator = a separate process; "
              f"experiment: {args.experiment}")
        probe = "/healthz" if "healthz" in args.experiment.split(",") else None
        if args.warmup:
            w = load(base, 50, args.warmup)
            print(f"warm-up: {w['sent']} submits at 50/s, errors {sum(w['errors'].values())} (not counted)")
        results = {}
        for rate in [float(r) for r in args.rates.split(",")]:
            if breakdown:
                breakdown.reset()
            before, threads_before = cpu_snapshot(db_url.rpartition("/")[2], getattr(projection.host, "pid", None)), thread_cpu()
            res = load(base, rate, args.seconds, probe)
            after, threads_after = cpu_snapshot(db_url.rpartition("/")[2], getattr(projection.host, "pid", None)), thread_cpu()
            lat, svc, nerr = res["lat"], res["service"], sum(res["errors"].values())
            ok = max(1, len(lat))
            cpu = ", ".join(f"{k} {(after[k] - before[k]) / ok * 1000:.2f} ms" for k in after)
            print(f"rate {rate:g}/s for {args.seconds:g} s: sent {res['sent']}, errors {nerr}"
                  f"{' ' + str(res['errors']) if nerr else ''}, latency from due time: p50 {percentile(lat, 50):.1f} ms, "
                  f"p99 {percentile(lat, 99):.1f} ms, max {max(lat, default=float('nan')):.1f} ms "
                  f"(mean {statistics.fmean(lat) if lat else float('nan'):.1f}); from actual send: "
                  f"p50 {percentile(svc, 50):.1f}, p99 {percentile(svc, 99):.1f}; CPU per submit: {cpu}, "
                  f"load generator {res['generator_cpu_ms']:.2f} ms")
            if args.breakdown:
                delta = thread_cpu_delta(threads_before, threads_after,
                                         after["service process"] - before["service process"])
                per = {k: v / ok * 1000 for k, v in delta.items()}
                print("  service CPU per submit by thread: " + ", ".join(
                    f"{k} {v:.2f} ms" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.01))
                print(breakdown.report())
            results[rate] = res
        if 200.0 in results:
            print(f"p99_at_200_ms={percentile(results[200.0]['lat'], 99):.1f}")
    finally:
        server.should_exit = True
        api.join(15)
        projection.stop()
        identity.stop()
        if hasattr(projection.host, "close"):
            projection.host.close()
        eager.close()
        services.close()
        nats.stop()


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rates", default="50,100,200", help="submits per second, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="per rate")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds at 50/s before the first rate (0: none)")
    ap.add_argument("--experiment", default="none",
                    help=f"measured variants, comma-separated, of {', '.join(EXPERIMENTS)} (see experiment()); "
                         "none: the service as it is")
    ap.add_argument("--breakdown", action="store_true",
                    help="time the steps of each submit and the service's CPU by thread (wraps functions in-process)")
    ap.add_argument("--projection", choices=("process", "thread"), default="process",
                    help="where the jobs projection runs: its own process (as serve runs it) or a thread of the API's")
    ap.add_argument("--pg", default=PG_SERVER, help="a PostgreSQL server URL (its database part is ignored)")
    args = ap.parse_args()
    if any(e not in ("none", *EXPERIMENTS) and not re.fullmatch(r"threads-[1-9][0-9]*", e)
           for e in args.experiment.split(",")):
        ap.error(f"--experiment: one or more of {', '.join(EXPERIMENTS)}, threads-N, or none")
    logging.basicConfig(level=logging.WARNING)
    with work_dir() as work, fresh_database(args.pg) as db_url:
        run(args, work, db_url)


if __name__ == "__main__":
    main()
