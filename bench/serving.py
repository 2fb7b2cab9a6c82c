"""Online serving latency: Trainyard's inference server vs MLflow's scoring server, same LightGBM model, open loop.

Trainyard path (end to end, what a user gets): a throwaway `trainyard up` (its own data dir in a temp dir,
--runners 1; embedded PostgreSQL and NATS unless --database-url / --nats-url are given, in which case a fresh
database `bench_serving_<pid>` is created on that server and dropped at the end), then over the REST API: train
a LightGBM binary classifier on builtin://breast_cancer (n_estimators 100), register it as model `bc` v1, export
it to ONNX (waiting for the export's parity check), deploy it as `bc` (one variant, weight 100), create an API key,
and wait until the inference server (`trainyard serve-inference`, one process) lists `bc`. Requests:
`POST /v1/deployments/bc/predict` with `Authorization: Bearer <key>` and {"instances": [[30 floats]]}.

Baseline, in the same run on the same machine: MLflow's own scoring server on the same trained model. The
LightGBM text model from the training job's artifact is loaded with `lightgbm.Booster(model_file=...)`, saved with
`mlflow.lightgbm.save_model` and served with `mlflow models serve -m DIR -p PORT --env-manager local` (uvicorn;
1 worker, its default and the same process count as Trainyard's inference server; --mlflow-workers to change).
Requests: `POST /invocations` with {"inputs": [[30 floats]]} (the bench falls back to {"dataframe_split": ...} if
that is refused); both servers are checked for a 200 with predictions, and for the same probabilities on 50 rows.
MLflow runs from its own virtualenv (--mlflow-python; default the first of .venv-bench/bin/python,
/tmp/trainyard-mlflow-venv/bin/python, or this interpreter if it has mlflow), so that installing it cannot change
the project's packages; its versions are printed. `pip install mlflow` brings uvicorn without uvloop/httptools,
so MLflow serves on the asyncio loop with h11, while Trainyard's inference server runs uvicorn with uvloop and
httptools. Without MLflow the bench says the baseline is missing and measures Trainyard alone (as --skip-mlflow).

Load generator (this process, under uvloop when available): raw asyncio, hand-written HTTP/1.1 keep-alive
requests on a pool of --connections (64) connections to 127.0.0.1, each carrying one request at a time. OPEN
LOOP: at each --rates rate (250, 500, 1000 requests/s) request i is due at t0 + i/rate for --duration (10) s,
one row per request (rows of the breast-cancer data, the same rows for both servers). A request's latency runs
from its SCHEDULED time to the last byte of its response (read by Content-Length), so time spent waiting for a
free connection, or behind a generator that is late, counts: no coordinated omission. Errors: any status but
200 or a 200 without "predictions", connection errors, and a request not answered within --timeout (5) s of its
scheduled time. Latency percentiles are over the successful requests; a rate with errors never counts as
"p99 < 10 ms" and a goal is MET only without errors. Each server gets ~500 requests of warm-up (open loop at
the first rate, not counted) with its own connection pool; every measured run opens a fresh pool before t0.
The servers run one after the other at each rate, the first one alternating from rate to rate. The generator's
garbage collector is off during a run (collected between runs). A request the generator gives up on (timeout)
closes its connection, which MLflow's server logs as a `ClientDisconnect` traceback; the bench counts the
tracebacks in both servers' logs and prints the first one.

CPU: the machine has 2 cores, and the load generator, the server under test and (for Trainyard) the rest of
the service (serve: API, projections, the prediction-telemetry consumer; a runner; PostgreSQL; NATS) all share
them. The table shows the CPU time per request of the server under test (Trainyard: the serve-inference
process; MLflow: its process tree), of the rest of Trainyard during that run (split by part on the line below:
serve, runner, PostgreSQL, NATS, the `up` supervisor; embedded engines only), and of the generator itself, and
the machine's total busy share over the run (200% = both cores; anything else running on the machine shows up
there too). "genlag99" is the p99 of how late the generator started requests against their schedule (its own
overhead, timer granularity, and waiting for a core); it is part of every latency. Production clients would not
share the server's cores: the figures here are an upper bound, noisy when other work runs on the machine (the
load average at the start is printed).

    python -m bench.serving [--rates 250,500,1000] [--duration 10] [--connections 64] [--skip-mlflow]
                            [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--nats-url ...]

Prints the table, the highest rate with p99 < 10 ms per server, `ratio=<mlflow p99 / trainyard p99 at 500/s>`
(> 1: Trainyard is faster), and the goals: trainyard p99 <= 5 ms at 1000/s; ratio >= 3.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench.harness import ROOT, parser, percentile, print_ratio
from infra.embedded import free_port

JOB = {"name": "bc", "framework": "lightgbm", "task": "binary_classification",
       "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 100}}
MLFLOW_VENVS = (ROOT / ".venv-bench" / "bin" / "python", Path("/tmp/trainyard-mlflow-venv/bin/python"))
SAVE_MODEL = """
import sys, lightgbm, mlflow.lightgbm
booster = lightgbm.Booster(model_file=sys.argv[1])
mlflow.lightgbm.save_model(booster, sys.argv[2])
"""
VERSIONS = """
import importlib.metadata as m, json
out = {}
for name in ("mlflow", "lightgbm", "uvicorn", "uvloop", "httptools", "fastapi"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def wait_http(url: str, seconds: float, what: str, ok=lambda r: r.status_code == 200, proc=None, log=None):
    import httpx

    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}\n{log_tail(log) if log else ''}")
        try:
            r = httpx.get(url, timeout=5)
            if ok(r):
                return r
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.TransportError as e:
            last = repr(e)
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready after {seconds:.0f} s ({last})\n{log_tail(log) if log else ''}")


# ---- Trainyard ----------------------------------------------------------------------------------------------
class Trainyard:
    """A throwaway `trainyard up` with a deployed model `bc`, an API key, and the CPU accounting of its processes."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.data_dir = work / "trainyard"
        self.log_path = work / "up.log"
        self.proc: subprocess.Popen | None = None
        self.db_url: str | None = None
        self.api = self.inference = self.key = ""
        self.job: dict[str, Any] = {}
        self.pids: dict[str, Any] = {}
        self.setup_s: dict[str, float] = {}

    def start(self) -> None:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        env.update(TRAINYARD_DATA_DIR=str(self.data_dir), TRAINYARD_RUNNERS="1",
                   TRAINYARD_API_PORT=str(free_port(0)), TRAINYARD_INFERENCE_PORT=str(free_port(0)))
        if self.args.database_url:
            self.db_url = create_db(self.args.database_url, f"bench_serving_{os.getpid()}")
            env["TRAINYARD_DATABASE_URL"] = self.db_url
        if self.args.nats_url:
            env["TRAINYARD_NATS_URL"] = self.args.nats_url
        t = time.perf_counter()
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "up"], env=env, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        endpoints = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + 120
        while not endpoints.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`trainyard up` did not start (rc {self.proc.poll()})\n{log_tail(self.log_path)}")
            time.sleep(0.1)
        ep = json.loads(endpoints.read_text())
        self.api, self.inference, self.pids = ep["api"], ep["inference"], ep["pids"]
        wait_http(f"{self.api}/readyz", 120, "trainyard API /readyz", proc=self.proc, log=self.log_path)
        self.setup_s["up"] = time.perf_counter() - t

        http = httpx.Client(base_url=self.api, timeout=30)
        try:
            t = time.perf_counter()
            r = http.post("/api/v1/training/jobs", json=JOB)
            assert r.status_code == 202, f"submit: {r.status_code} {r.text}"
            job_id = r.json()["job_id"]
            self.job = self._poll(http, f"/api/v1/training/jobs/{job_id}", "training job", 180)
            self.setup_s["train"] = time.perf_counter() - t
            t = time.perf_counter()
            r = http.post("/api/v1/models", json={"name": "bc"})
            assert r.status_code == 201, f"create model: {r.status_code} {r.text}"
            r = http.post("/api/v1/models/bc/versions", json={"job_id": job_id})
            assert r.status_code == 201, f"register version: {r.status_code} {r.text}"
            version = r.json()["version"]
            r = http.post(f"/api/v1/models/bc/versions/{version}/exports", json={"format": "onnx"})
            assert r.status_code == 202, f"export: {r.status_code} {r.text}"
            export = self._poll(http, f"/api/v1/models/bc/versions/{version}/exports/{r.json()['export_id']}",
                                "ONNX export", 180)
            self.export = export
            self.setup_s["register+export"] = time.perf_counter() - t
            t = time.perf_counter()
            r = http.post("/api/v1/deployments", json={"name": "bc", "variants": [
                {"name": "a", "model": "bc", "version": version, "weight": 100}]})
            assert r.status_code == 201, f"deploy: {r.status_code} {r.text}"
            r = http.post("/api/v1/api-keys", json={"name": "bench", "deployments": "*"})
            assert r.status_code == 201, f"api key: {r.status_code} {r.text}"
            self.key = r.json()["key"]
        finally:
            http.close()
        wait_http(f"{self.inference}/v1/deployments", 60, "inference server lists `bc`",
                  ok=lambda r: r.status_code == 200 and any(d["name"] == "bc" for d in r.json()["items"]),
                  proc=self.proc, log=self.log_path)
        self.pids = json.loads(endpoints.read_text())["pids"]  # in case a child was restarted meanwhile
        self.setup_s["deploy"] = time.perf_counter() - t

    @staticmethod
    def _poll(http: Any, path: str, what: str, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            doc = http.get(path).json()
            if doc.get("status") == "completed":
                return doc
            if doc.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"{what} {doc.get('status')}: {json.dumps(doc)[:2000]}")
            time.sleep(0.1)
        raise RuntimeError(f"{what}: not completed after {seconds:.0f} s: {json.dumps(doc)[:2000]}")

    @property
    def model_path(self) -> Path:
        uri = self.job["artifact"]["uri"]
        return Path(urlparse(uri).path)

    def cpu_groups(self) -> dict[str, list[int]]:
        """Process-tree roots by part, the server under test first (a process counts for the first tree it is in)."""
        groups = {"srv": [self.pids["inference"]], "serve": [self.pids["serve"]], "runner": self.pids["runners"],
                  "postgres": [self.pids.get("postgres")], "nats": [self.pids.get("nats")], "up": [self.proc.pid]}
        groups = {k: [p for p in v if p] for k, v in groups.items()}
        return {k: v for k, v in groups.items() if v}  # no postgres/nats group when they are the machine's

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                print("trainyard up did not stop 90 s after SIGTERM: killed", file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        if self.db_url:
            drop_db(self.args.database_url, self.db_url)


def create_db(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url.rpartition('/')[0]}/{name}"


def drop_db(server_url: str, url: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


# ---- MLflow ---------------------------------------------------------------------------------------------------
def find_mlflow_python(given: str | None) -> tuple[Path | None, str]:
    """(the python of a virtualenv with mlflow, or None; why not)."""
    candidates = [Path(given)] if given else [*MLFLOW_VENVS, Path(sys.executable)]
    for py in candidates:
        probe = [str(py), "-c", "import mlflow.lightgbm"]
        if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
            return py, ""
    return None, ("mlflow is not installed in " + ", ".join(str(c) for c in candidates) +
                  " (install it apart from the project's venv: python3 -m venv /tmp/trainyard-mlflow-venv && "
                  "/tmp/trainyard-mlflow-venv/bin/pip install mlflow lightgbm)")


class Mlflow:
    """`mlflow models serve --env-manager local` on the trained booster, in its own process group."""

    def __init__(self, python: Path, work: Path, workers: int) -> None:
        self.python, self.work, self.workers = python, work, workers
        self.log_path = work / "mlflow.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.versions: dict[str, str | None] = {}
        self.payload = "inputs"

    def start(self, model_txt: Path) -> None:
        self.versions = json.loads(subprocess.run([str(self.python), "-c", VERSIONS], capture_output=True,
                                                  text=True, check=True).stdout)
        model_dir = self.work / "mlflow-model"
        r = subprocess.run([str(self.python), "-c", SAVE_MODEL, str(model_txt), str(model_dir)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"mlflow.lightgbm.save_model failed:\n{r.stderr[-3000:]}")
        self.port = free_port(0)
        bindir = str(self.python.parent)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(PATH=f"{bindir}:{env.get('PATH', '')}", VIRTUAL_ENV=str(self.python.parent.parent))
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(self.python.parent / "mlflow"), "models", "serve", "-m", str(model_dir),
                                      "-h", "127.0.0.1", "-p", str(self.port), "--env-manager", "local",
                                      "-w", str(self.workers)],
                                     env=env, cwd=self.work, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, process_group=0)
        wait_http(f"http://127.0.0.1:{self.port}/ping", 120, "mlflow models serve /ping", proc=self.proc,
                  log=self.log_path)

    def cpu_groups(self) -> dict[str, list[int]]:
        return {"srv": [self.proc.pid]}

    def stop(self) -> None:
        if self.proc is None:
            return
        with_group = lambda sig: os.killpg(self.proc.pid, sig)  # noqa: E731
        try:
            with_group(signal.SIGTERM)
            self.proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            print("mlflow server did not stop 20 s after SIGTERM: killed", file=sys.stderr)
        try:
            with_group(signal.SIGKILL)  # whatever is left in its group (uvicorn workers)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


# ---- the load generator -------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    port: int
    requests: list[bytes]  # full HTTP/1.1 requests, cycled through
    cpu_groups: dict[str, list[int]]  # process-tree roots by part; "srv": the server under test


@dataclass
class RunResult:
    server: str
    rate: float
    sent: int
    latencies_ms: list[float]
    errors: Counter
    achieved: float
    gen_lag_ms: list[float]
    cpu_us: dict[str, float]  # CPU µs per request by part ("srv" the server under test)
    machine_busy_pct: float
    error_sample: str = ""
    others: list[tuple[str, float]] | None = None  # other processes busy during the run (% of one core)

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def request_bytes(port: int, path: str, body: dict, headers: dict[str, str]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{head}\r\n").encode() + data


class Conn:
    __slots__ = ("port", "reader", "writer")

    def __init__(self, port: int) -> None:
        self.port, self.reader, self.writer = port, None, None

    async def ensure(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one HTTP/1.1 response: Content-Length, chunked, or until EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = None, False, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding":
            chunked = b"chunked" in v.lower()
        elif k == b"connection":
            close = b"close" in v.lower()
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await _skip_trailers(reader)
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), close
    if length is None:
        return status, await reader.read(), True
    return status, await reader.readexactly(length), close


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass


def cpu_seconds(groups: dict[str, list[int]]) -> dict[tuple[str, int, float], float]:
    """{(group, pid, create_time): user+system CPU s} of each group's roots and their descendants now alive; a
    process counts once, for the first group whose tree holds it."""
    import psutil

    seen: dict[int, tuple[str, int, float]] = {}
    out: dict[tuple[str, int, float], float] = {}
    for group, roots in groups.items():
        for pid in roots:
            try:
                p = psutil.Process(pid)
                procs = [p, *p.children(recursive=True)]
            except psutil.Error:
                continue
            for q in procs:
                if q.pid in seen:
                    continue
                try:
                    t = q.cpu_times()
                    seen[q.pid] = key = (group, q.pid, q.create_time())
                    out[key] = t.user + t.system
                except psutil.Error:
                    pass
    return out


def all_cpu() -> dict[tuple[int, float], tuple[str, float]]:
    """{(pid, create_time): (name, user+system CPU s)} of every process on the machine."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "create_time", "cpu_times"]):
        t, cmd = p.info["cpu_times"], p.info["cmdline"] or [p.info["name"] or "?"]
        if t is not None:
            name = " ".join([os.path.basename(cmd[0]), *cmd[1:4]])[:60]
            out[(p.info["pid"], p.info["create_time"])] = (name, t.user + t.system)
    return out


def others_busy(before: dict, after: dict, accounted: set[int], seconds: float) -> list[tuple[str, float]]:
    """(name pid, % of one core) of the processes outside the bench's accounting, busiest first."""
    out = []
    for key, (name, t) in after.items():
        if key[0] in accounted:
            continue
        share = (t - before.get(key, (name, 0.0))[1]) / seconds * 100
        if share >= 3:
            out.append((f"{name} {key[0]}", share))
    return sorted(out, key=lambda x: -x[1])


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds by group between two `cpu_seconds` (a process born in between counts from 0)."""
    out: dict[str, float] = {}
    for key, t in after.items():
        out[key[0]] = out.get(key[0], 0.0) + t - before.get(key, 0.0)
    return out


async def run_load(target: Target, rate: float, duration: float, connections: int, timeout: float,
                   count: int | None = None) -> RunResult:
    import psutil

    n = count if count is not None else int(round(rate * duration))
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    conns = [Conn(target.port) for _ in range(connections)]
    await asyncio.gather(*(c.ensure() for c in conns))
    for c in conns:
        pool.put_nowait(c)
    requests = target.requests
    latencies: list[float] = []
    lags: list[float] = []
    errors: Counter = Counter()
    sample: list[str] = []
    last_end = [0.0]
    perf = time.perf_counter

    async def one(i: int, due: float) -> None:
        lags.append((perf() - due) * 1000)
        conn = None
        try:
            async with asyncio.timeout(max(0.0, due + timeout - perf())):
                conn = await pool.get()
                await conn.ensure()
                conn.writer.write(requests[i % len(requests)])
                status, body, close = await read_response(conn.reader)
                end = perf()
                if close:
                    conn.drop()
            if status == 200 and b'"predictions"' in body:
                latencies.append((end - due) * 1000)
                last_end[0] = max(last_end[0], end)
            else:
                errors[f"HTTP {status}"] += 1
                if len(sample) < 3:
                    sample.append(f"HTTP {status}: {body[:500].decode(errors='replace')}")
        except TimeoutError:
            errors["timeout"] += 1
            if conn is not None:
                conn.drop()  # a response may still be on its way: this connection is out of step
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            errors[type(e).__name__] += 1
            if len(sample) < 3:
                sample.append(f"{type(e).__name__}: {e}")
            if conn is not None:
                conn.drop()
        finally:
            if conn is not None:
                pool.put_nowait(conn)

    cpu0, cpu_g0 = cpu_seconds(target.cpu_groups), time.process_time()
    everything0, wall0 = all_cpu(), time.perf_counter()
    machine0 = psutil.cpu_times()
    tasks = []
    t0 = perf() + 0.02
    i = 0
    while i < n:
        now = perf()
        while i < n and t0 + i / rate <= now:
            tasks.append(asyncio.create_task(one(i, t0 + i / rate)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - perf()))
    await asyncio.gather(*tasks)
    machine1 = psutil.cpu_times()
    cpu1 = cpu_seconds(target.cpu_groups)
    cpu = cpu_delta(cpu0, cpu1)
    cpu["gen"] = time.process_time() - cpu_g0
    accounted = {k[1] for k in cpu1} | {os.getpid()}
    others = others_busy(everything0, all_cpu(), accounted, time.perf_counter() - wall0)
    for c in conns:
        c.drop()
    busy = lambda t: t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)  # noqa: E731
    total = lambda t: busy(t) + t.idle + getattr(t, "iowait", 0.0)  # noqa: E731
    busy_pct = ((busy(machine1) - busy(machine0)) / max(1e-9, total(machine1) - total(machine0))
                * 100 * psutil.cpu_count())
    latencies.sort()
    lags.sort()
    achieved = len(latencies) / (last_end[0] - t0) if latencies else 0.0
    cpu_us = {k: cpu.get(k, 0.0) / n * 1e6 for k in [*target.cpu_groups, "gen"]}
    return RunResult(target.name, rate, n, latencies, errors, achieved, lags, cpu_us, busy_pct, "\n".join(sample),
                     others)


def row_of(r: RunResult) -> str:
    lag99 = r.gen_lag_ms[min(len(r.gen_lag_ms) - 1, int(len(r.gen_lag_ms) * 0.99))] if r.gen_lag_ms else float("nan")
    errs = sum(r.errors.values())
    rest = [v for k, v in r.cpu_us.items() if k not in ("srv", "gen")]
    other = f"{sum(rest):.0f}" if rest else "-"
    return (f"{r.server:<10} {r.rate:>6.0f} {r.sent:>6} {r.achieved:>9.1f} {errs:>6} {r.pct(50):>8.2f} "
            f"{r.pct(95):>8.2f} {r.pct(99):>8.2f} {r.latencies_ms[-1] if r.latencies_ms else float('nan'):>8.2f} "
            f"{lag99:>8.2f} {r.cpu_us['srv']:>8.0f} {other:>8} {r.cpu_us['gen']:>7.0f} {r.machine_busy_pct:>5.0f}%")


HEADER = (f"{'server':<10} {'rate/s':>6} {'sent':>6} {'achieved':>9} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'genlag99':>8} {'cpu srv':>8} {'cpu rest':>8} {'cpu gen':>7} {'busy':>6}")


async def load_phase(targets: list[Target], args: argparse.Namespace, rates: list[float]) -> list[RunResult]:
    """Warm-ups, then every rate on every server; the generator's garbage collector runs only between runs."""
    results: list[RunResult] = []
    gc.collect()
    gc.freeze()
    gc.disable()
    for t in targets:
        w = await run_load(t, rates[0], 0, args.connections, args.timeout, count=args.warmup)
        print(f"warm-up {t.name}: {w.sent} requests at {rates[0]:.0f}/s, errors {sum(w.errors.values())}, "
              f"p99 {w.pct(99):.2f} ms (not counted)", flush=True)
        await asyncio.sleep(args.pause)
    print(HEADER, flush=True)
    for k, rate in enumerate(rates):
        order = targets if k % 2 == 0 else list(reversed(targets))
        for t in order:
            r = await run_load(t, rate, args.duration, args.connections, args.timeout)
            results.append(r)
            print(row_of(r), flush=True)
            rest = {k: v for k, v in r.cpu_us.items() if k not in ("srv", "gen")}
            if rest:
                print("           cpu rest by part (µs/request): " + ", ".join(f"{k} {v:.0f}" for k, v in rest.items()),
                      flush=True)
            if r.others:
                print("           other processes busy meanwhile (% of a core): "
                      + ", ".join(f"{name} {share:.0f}%" for name, share in r.others[:5]), flush=True)
            if r.errors:
                print(f"           errors: {dict(r.errors)}", flush=True)
                if r.error_sample:
                    print("           " + r.error_sample.replace("\n", "\n           "), flush=True)
            gc.collect()
            await asyncio.sleep(args.pause)
    gc.enable()
    return results


# ---- main -------------------------------------------------------------------------------------------------------
def breast_cancer_rows(n: int) -> list[list[float]]:
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data
    return [[float(v) for v in X[i % len(X)]] for i in range(n)]


def check_parity(ty: Trainyard, ml: Mlflow | None, rows: list[list[float]]) -> str:
    """One predict on each server (a 200 with predictions), and how far their probabilities are apart."""
    import httpx

    r = httpx.post(f"{ty.inference}/v1/deployments/bc/predict", json={"instances": rows},
                   headers={"Authorization": f"Bearer {ty.key}"}, timeout=10)
    assert r.status_code == 200 and "predictions" in r.json(), f"trainyard predict: {r.status_code} {r.text[:1000]}"
    ty_doc = r.json()
    shown = {k: ty_doc[k] for k in ("predictions", "probabilities") if k in ty_doc}
    line = f"trainyard answer ({len(rows)} row(s)): {json.dumps(shown)[:200]}"
    if ml is None:
        return line
    url = f"http://127.0.0.1:{ml.port}/invocations"
    r = httpx.post(url, json={"inputs": rows}, timeout=10)
    if r.status_code != 200 or ml.payload != "inputs":
        first = f"{r.status_code} {r.text[:300]}"
        ml.payload = "dataframe_split"
        r = httpx.post(url, json={"dataframe_split": {"columns": [f"f{i}" for i in range(len(rows[0]))],
                                                      "data": rows}}, timeout=10)
        assert r.status_code == 200, f"mlflow /invocations refused inputs ({first}) and dataframe_split " \
                                     f"({r.status_code} {r.text[:300]})"
    ml_doc = r.json()
    assert "predictions" in ml_doc, f"mlflow answer without predictions: {r.text[:500]}"
    ml_p = [float(p[-1] if isinstance(p, list) else p) for p in ml_doc["predictions"]]
    ty_p = [float(p[1]) for p in ty_doc.get("probabilities") or []]
    diff = max((abs(a - b) for a, b in zip(ml_p, ty_p)), default=float("nan"))
    return (f"{line}\nmlflow answer ({ml.payload}): {r.text[:200]}\n"
            f"same model: max |trainyard P(class 1) - mlflow prediction| over {len(rows)} rows = {diff:.2e}")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--rates", default="250,500,1000", help="requests/s, comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds from a request's scheduled time")
    ap.add_argument("--warmup", type=int, default=500, help="warm-up requests per server (at the first rate)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    ap.add_argument("--skip-mlflow", action="store_true")
    ap.add_argument("--mlflow-python", help="a python with mlflow + lightgbm (default: see above)")
    ap.add_argument("--mlflow-workers", type=int, default=1, help="uvicorn workers of the MLflow server (its "
                    "default: 1, like Trainyard's one inference process)")
    ap.add_argument("--database-url", help="a PostgreSQL server URL (database part ignored): a fresh database "
                    "bench_serving_<pid> is made there and dropped after; default: embedded PostgreSQL")
    ap.add_argument("--nats-url", help="a NATS JetStream server; default: embedded nats-server")
    args = ap.parse_args()
    rates = [float(x) for x in args.rates.split(",") if x.strip()]

    started = time.perf_counter()
    print(f"== bench/serving.py {time.strftime('%Y-%m-%d %H:%M:%S')} load: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} cores: {os.cpu_count()}", flush=True)
    if args.skip_mlflow:
        mlflow_py, missing = None, "skipped (--skip-mlflow)"
    else:
        mlflow_py, missing = find_mlflow_python(args.mlflow_python)
    work = Path(tempfile.mkdtemp(prefix="trainyard-bench-serving-"))
    os.chmod(work, 0o755)  # the embedded PostgreSQL runs as its own system user when we are root
    ty = Trainyard(args, work)
    ml: Mlflow | None = None
    try:
        ty.start()
        print(f"trainyard: up with 1 runner ({'PostgreSQL ' + ty.db_url if ty.db_url else 'embedded PostgreSQL'}, "
              f"{'NATS ' + args.nats_url if args.nats_url else 'embedded NATS'}); API {ty.api}, inference "
              f"{ty.inference} (pid {ty.pids['inference']}); setup "
              + ", ".join(f"{k} {v:.1f} s" for k, v in ty.setup_s.items()), flush=True)
        print(f"trainyard: job {ty.job['job_id']} completed, artifact {ty.model_path.name} "
              f"(sha256 {ty.job['artifact'].get('sha256', '?')[:12]}), ONNX export parity "
              f"{json.dumps(ty.export.get('parity'))[:200]}", flush=True)
        if mlflow_py is not None:
            ml = Mlflow(mlflow_py, work, args.mlflow_workers)
            t = time.perf_counter()
            ml.start(ty.model_path)
            v = ml.versions
            print(f"mlflow:    MLflow {v['mlflow']} (lightgbm {v['lightgbm']}, uvicorn {v['uvicorn']}, "
                  f"{'uvloop ' + v['uvloop'] if v['uvloop'] else 'asyncio loop (no uvloop)'}, "
                  f"{'httptools ' + v['httptools'] if v['httptools'] else 'h11 (no httptools)'}, fastapi "
                  f"{v['fastapi']}) from {mlflow_py}: `mlflow models serve --env-manager local -w {ml.workers}` "
                  f"({ml.workers} worker{'s' if ml.workers > 1 else ''}; its default is 1) on "
                  f"http://127.0.0.1:{ml.port}; saved + started in {time.perf_counter() - t:.1f} s",
                  flush=True)
        else:
            print(f"mlflow:    BASELINE MISSING: {missing}", flush=True)

        rows = breast_cancer_rows(569)
        print(check_parity(ty, ml, rows[:1]), flush=True)
        if ml is not None:
            print(check_parity(ty, ml, rows[:50]).splitlines()[-1], flush=True)
        ty_port = urlparse(ty.inference).port
        auth = {"Authorization": f"Bearer {ty.key}"}
        targets = [Target("trainyard", ty_port,
                          [request_bytes(ty_port, "/v1/deployments/bc/predict", {"instances": [r]}, auth)
                           for r in rows], ty.cpu_groups())]
        if ml is not None:
            def ml_body(r: list[float]) -> dict:
                if ml.payload == "inputs":
                    return {"inputs": [r]}
                return {"dataframe_split": {"columns": [f"f{i}" for i in range(len(r))], "data": [r]}}
            targets.append(Target("mlflow", ml.port, [request_bytes(ml.port, "/invocations", ml_body(r), {})
                                                      for r in rows], ml.cpu_groups()))
        log_mark = ty.log_path.stat().st_size
        try:
            import uvloop
            loop_name = f"uvloop {uvloop.__version__}"
            results = uvloop.run(load_phase(targets, args, rates))
        except ImportError:
            loop_name = "asyncio (uvloop missing)"
            results = asyncio.run(load_phase(targets, args, rates))
        print(f"(generator: this process, {loop_name}, {args.connections} keep-alive connections per server, "
              f"open loop, latency from the scheduled time; cpu columns: µs of CPU per request — srv: the server "
              f"under test, rest: the other Trainyard processes, gen: the generator; busy: the machine, "
              f"200% = both cores)")
        with open(ty.log_path, "rb") as f:
            f.seek(log_mark)
            noisy = [ln for ln in f.read().decode(errors="replace").splitlines()
                     if any(w in ln for w in ("ERROR", "Traceback", "WARNING", "Exception", "CRITICAL"))]
        if noisy:
            print(f"trainyard log during the load ({len(noisy)} warning/error lines, first 40 verbatim):")
            print("\n".join("  " + ln for ln in noisy[:40]))
        else:
            print("trainyard log during the load: no warning or error lines")
        if ml is not None:
            print(log_errors(ml.log_path, "mlflow"))
        report(results, rates, ml is not None, missing)
    finally:
        if ml is not None:
            ml.stop()
        ty.stop()
        shutil.rmtree(work, ignore_errors=True)
        print(f"total {time.perf_counter() - started:.0f} s (cleaned up: {'mlflow server, ' if ml else ''}"
              f"trainyard up, temp dir{', database ' + ty.db_url.rpartition('/')[2] if ty.db_url else ''})",
              flush=True)


def log_errors(path: Path, name: str) -> str:
    """A server log's tracebacks: how many, their exception lines counted, and the first one verbatim."""
    lines = path.read_text(errors="replace").splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback")]
    if not starts:
        return f"{name} log: no tracebacks"
    finals: Counter = Counter()
    for i in starts:
        j = i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            j += 1
        if j < len(lines):
            finals[lines[j][:200]] += 1
    j = starts[0] + 1
    while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
        j += 1
    head, frames = lines[max(0, starts[0] - 1):starts[0] + 1], lines[starts[0] + 1:j]
    cut = [f"  ... ({len(frames) - 12} lines of frames left out)"] if len(frames) > 12 else []
    first = head + cut + frames[-12:] + lines[j:j + 1]
    return (f"{name} log: {len(starts)} tracebacks; their last lines: "
            + "; ".join(f"{n}x {k!r}" for k, n in finals.most_common(5))
            + "\n  the first one (its last frames, verbatim):\n" + "\n".join("    " + ln for ln in first))


def report(results: list[RunResult], rates: list[float], have_baseline: bool, missing: str) -> None:
    by = {(r.server, r.rate): r for r in results}
    servers = ["trainyard"] + (["mlflow"] if have_baseline else [])
    for s in servers:
        good = [r.rate for r in results if r.server == s and not r.errors and r.pct(99) < 10]
        best = f"{max(good):.0f}/s" if good else "none of " + ",".join(f"{x:.0f}/s" for x in rates)
        print(f"highest rate with p99 < 10 ms: {s} {best}")
    ty500, ml500 = by.get(("trainyard", 500.0)), by.get(("mlflow", 500.0))
    ratio = None
    if ty500 is None:
        print("ratio=n/a (500/s not among --rates)")
    elif ml500 is None:
        print(f"ratio=n/a (baseline missing: {missing})")
    else:
        ratio = ml500.pct(99) / ty500.pct(99)
        note = "" if not (ty500.errors or ml500.errors) else \
            f"  (errors at 500/s: trainyard {sum(ty500.errors.values())}, mlflow {sum(ml500.errors.values())})"
        print_ratio(ratio, 2, note)
    ty1000 = by.get(("trainyard", 1000.0))
    if ty1000 is None:
        print("goal: trainyard p99 <= 5 ms at 1000 rps: NOT MEASURED (1000/s not among --rates)")
    else:
        met = not ty1000.errors and ty1000.pct(99) <= 5
        errs = f", {sum(ty1000.errors.values())} errors" if ty1000.errors else ""
        print(f"goal: trainyard p99 <= 5 ms at 1000 rps: {'MET' if met else 'MISSED'} ({ty1000.pct(99):.2f} ms{errs})")
    if ratio is None:
        print(f"goal: ratio >= 3: NOT MEASURED ({'baseline missing: ' + missing if ty500 else '500/s not run'})")
    else:
        print(f"goal: ratio >= 3: {'MET' if ratio >= 3 and not (ty500.errors or ml500.errors) else 'MISSED'} "
              f"({ratio:.2f})")


if __name__ == "__main__":
    main()
