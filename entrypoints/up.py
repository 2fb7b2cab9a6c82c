"""`trainyard up`: start what is not configured, run the service processes, keep them alive, stop cleanly.

Contract of `run_up(settings)` (call it from the main thread; it installs SIGINT/SIGTERM handlers):
1. Starts EmbeddedPostgres / EmbeddedNats in `settings.data_dir` for whichever of database_url / nats_url is
   unset. ClickHouse needs nothing started: without clickhouse_url the `serve` process opens chDB at
   `settings.chdb_path`.
2. Spawns one `serve` process, `settings.runners` runner processes and one `serve-inference` process
   (`inference_cmd=[]` leaves it out). Each gets os.environ plus every
   Settings field as `TRAINYARD_<FIELD>` with the resolved values (URLs, absolute data_dir, the API port
   actually free), so `Settings()` in a child describes the same deployment. Unset fields are removed from the
   child's environment. With the embedded NATS, each child logs in as its own NATS user
   (`TRAINYARD_NATS_CREDS`: serve as `service`, runner i as `runner-<i>`, the inference server as `inference`;
   infra/nats_accounts.py). Each child leads its own process group (a terminal Ctrl-C reaches only the
   supervisor) and receives SIGTERM if the supervisor dies.
3. Writes `<data_dir>/endpoints.json`: {"api", "inference", "postgres", "nats",
   "clickhouse", "data_dir", "pids": {"serve", "runners": [...], "inference", "postgres", "nats"}}; rewritten
   when a pid changes. Prints the "Trainyard is up" summary once the API accepts TCP connections (serve needs
   seconds to build its read models and bind), not when the processes merely exist.
4. A child that exits is restarted; an embedded engine that dies is restarted on the same port. More than
   `max_restarts` crash restarts (non-zero exit) of one part within `restart_window_s` shuts everything down with exit code 1.
5. On SIGINT/SIGTERM: SIGTERM to the children, SIGKILL to their process groups after `stop_timeout_s`,
   then the embedded engines are stopped; nothing in data_dir is removed; returns 0.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from infra import nats_accounts
from infra.embedded import EmbeddedNats, EmbeddedPostgres, EngineStartError, child_preexec, free_port
from infra.settings import Settings

log = logging.getLogger("trainyard.supervisor")

SERVE_CMD = [sys.executable, "-m", "entrypoints.cli", "serve"]
RUNNER_CMD = [sys.executable, "-m", "entrypoints.cli", "runner"]
INFERENCE_CMD = [sys.executable, "-m", "entrypoints.cli", "serve-inference"]
POLL_S = 0.2


class _Restarts:
    """Sliding-window restart budget for one supervised part."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s, self.times = limit, window_s, deque()

    def allow(self) -> bool:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


class _Child:
    """One supervised process; `spawn()` (re)starts it in its own process group."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], restarts: _Restarts) -> None:
        self.name, self.cmd, self.env, self.restarts = name, cmd, env, restarts
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL, process_group=0,
                                     preexec_fn=child_preexec())
        log.info("child.started name=%s pid=%d", self.name, self.proc.pid)

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's process group (its own subprocesses included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def child_env(settings: Settings, **resolved: object) -> dict[str, str]:
    """os.environ + TRAINYARD_<FIELD> for every Settings field, `resolved` values overriding."""
    env = dict(os.environ)
    values = {**settings.model_dump(), **resolved}
    for name, value in values.items():
        key = f"TRAINYARD_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def run_up(settings: Settings, *, serve_cmd: list[str] | None = None, runner_cmd: list[str] | None = None,
           inference_cmd: list[str] | None = None, max_restarts: int = 5, restart_window_s: float = 60.0, stop_timeout_s: float = 10.0) -> int:
    """Run Trainyard until SIGINT/SIGTERM (exit 0) or a part exhausts its restart budget / fails to start (1)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop_signal: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stop_signal.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    engines: dict[str, EmbeddedPostgres | EmbeddedNats] = {}
    children: list[_Child] = []
    try:
        data_dir = settings.data_dir.absolute()
        data_dir.mkdir(parents=True, exist_ok=True)
        urls = {"postgres": settings.database_url, "nats": settings.nats_url}
        make = {"postgres": lambda: EmbeddedPostgres(data_dir),
                "nats": lambda: EmbeddedNats(data_dir, runners=settings.runners,
                                             monitor_port=settings.nats_monitor_port)}
        for name in ("postgres", "nats"):
            if urls[name] is None and not stop_signal:
                engines[name] = make[name]()
                started = time.monotonic()
                urls[name] = engines[name].start()
                log.info("engine.started name=%s url=%s pid=%s seconds=%.2f", name, urls[name],
                         engines[name].pid, time.monotonic() - started)
        if stop_signal:
            return 0
        api_port = free_port(settings.api_port, settings.api_host)
        inference_port = free_port(settings.inference_port, settings.api_host)
        if inference_port == api_port:
            inference_port = free_port(api_port + 1, settings.api_host)
        clickhouse = settings.clickhouse_url or f"chdb://{settings.chdb_path.absolute()}"
        env = child_env(settings, database_url=urls["postgres"], nats_url=urls["nats"], data_dir=data_dir,
                        api_port=api_port, inference_port=inference_port, artifact_dir=settings.artifacts.absolute())
        budget = lambda: _Restarts(max_restarts, restart_window_s)  # noqa: E731
        nats = engines.get("nats")

        def login(user: str) -> dict[str, str]:
            """The environment of a child that logs in to the embedded NATS as `user` (its own credentials file)."""
            if not isinstance(nats, EmbeddedNats):
                return env
            closed = {k: v for k, v in env.items() if k not in ("TRAINYARD_NATS_USER", "TRAINYARD_NATS_PASSWORD")}
            return {**closed, "TRAINYARD_NATS_CREDS": str(nats.credentials(user))}

        children = [_Child("serve", serve_cmd or SERVE_CMD, login(nats_accounts.SERVICE), budget())]
        children += [_Child(f"runner-{i}", runner_cmd or RUNNER_CMD, login(nats_accounts.runner_user(i)), budget())
                     for i in range(settings.runners)]
        if inference_cmd != []:
            children.append(_Child("inference", inference_cmd or INFERENCE_CMD, login(nats_accounts.INFERENCE),
                                   budget()))
        for child in children:
            child.spawn()
        endpoints = {"api": f"http://{settings.api_host}:{api_port}",
                     "inference": f"http://{settings.api_host}:{inference_port}", "postgres": urls["postgres"],
                     "nats": urls["nats"], "clickhouse": clickhouse, "data_dir": str(data_dir)}
        _write_endpoints(data_dir, endpoints, children, engines)
        print(f"Starting Trainyard: waiting for the API on {endpoints['api']} ...", flush=True)
        api = (_connect_host(settings.api_host), api_port)
        return _watch(data_dir, endpoints, children, engines, {n: budget() for n in engines}, stop_signal, api)
    except EngineStartError as err:
        log.error("engine.start_failed %s", err)
        return 1
    finally:
        _terminate(children, stop_timeout_s)
        for name in reversed(list(engines)):
            try:
                engines[name].stop()
            except Exception:  # keep stopping the others
                log.exception("engine.stop_failed name=%s", name)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(data_dir: Path, endpoints: dict, children: list[_Child], engines: dict, engine_budgets: dict,
           stop_signal: list[int], api: tuple[str, int]) -> int:
    """Poll until a stop signal (0) or an exhausted restart budget (1); restart what died; print the summary once
    the API at `api` (host, port) accepts connections."""
    announced = False
    while not stop_signal:
        if not announced and _accepts(api) and _signed_in(api, data_dir):
            _print_summary(endpoints, children, engines)
            announced = True
        changed = False
        for name, engine in engines.items():
            if engine.is_running():
                continue
            log.error("engine.died name=%s log=%s", name, engine.log_path)
            if not engine_budgets[name].allow():
                log.error("engine.restart_budget_exhausted name=%s", name)
                return 1
            if engine.start() != endpoints[name]:
                log.error("engine.restart_changed_url name=%s; shutting down", name)
                return 1
            log.info("engine.restarted name=%s pid=%s", name, engine.pid)
            changed = True
        for child in children:
            rc = child.proc.poll()
            if rc is None or stop_signal:
                continue
            log.warning("child.exited name=%s pid=%d rc=%s", child.name, child.proc.pid, rc)
            child.kill_group()
            if rc != 0 and not child.restarts.allow():  # a clean exit (rc 0, e.g. a runner told to stop) is no crash
                log.error("child.restart_budget_exhausted name=%s limit=%d window_s=%.0f", child.name,
                          child.restarts.limit, child.restarts.window_s)
                return 1
            child.spawn()
            log.info("child.restarted name=%s pid=%d", child.name, child.proc.pid)
            changed = True
        if changed:
            _write_endpoints(data_dir, endpoints, children, engines)
        time.sleep(POLL_S)
    log.info("supervisor.stopping signal=%s", signal.Signals(stop_signal[0]).name)
    return 0


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=POLL_S):
            return True
    except OSError:
        return False


def _signed_in(address: tuple[str, int], data_dir: Path) -> bool:
    """The first owner's token (if this data dir has one) is accepted: the API answers and its identity cache
    has the owner, so the README's commands work the moment "Trainyard is up" is printed."""
    import urllib.error
    import urllib.request

    try:
        token = (data_dir / "admin-token").read_text().strip()
    except OSError:
        return True
    host, port = address
    request = urllib.request.Request(f"http://{'[' + host + ']' if ':' in host else host}:{port}/api/v1/me",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=POLL_S) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _terminate(children: list[_Child], timeout_s: float) -> None:
    live = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for child in live:
        child.proc.terminate()
    deadline = time.monotonic() + timeout_s
    for child in live:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("child.kill name=%s pid=%d (no exit %.0fs after SIGTERM; its threads' stacks follow)",
                        child.name, child.proc.pid, timeout_s)
            with contextlib.suppress(OSError):
                child.proc.send_signal(signal.SIGUSR2)  # entrypoints/cli.py: faulthandler dumps every thread
                time.sleep(0.5)
        child.kill_group()
        child.proc.wait()
        log.info("child.stopped name=%s pid=%d rc=%s", child.name, child.proc.pid, child.proc.returncode)


def _write_endpoints(data_dir: Path, endpoints: dict, children: list[_Child], engines: dict) -> None:
    pids = {"serve": children[0].proc.pid, "runners": [c.proc.pid for c in children if c.name.startswith("runner")],
            "inference": next((c.proc.pid for c in children if c.name == "inference"), None),
            "postgres": engines["postgres"].pid if "postgres" in engines else None,
            "nats": engines["nats"].pid if "nats" in engines else None}
    tmp = data_dir / "endpoints.json.tmp"
    tmp.write_text(json.dumps({**endpoints, "pids": pids}, indent=2))
    tmp.replace(data_dir / "endpoints.json")


def _print_summary(endpoints: dict, children: list[_Child], engines: dict) -> None:
    def origin(name: str) -> str:
        return f"embedded, pid {engines[name].pid}" if name in engines else "external"

    runners = [c for c in children if c.name.startswith("runner")]

    print(f"Trainyard is up (data in {endpoints['data_dir']}; Ctrl-C stops it)\n"
          f"  API         {endpoints['api']}  (serve pid {children[0].proc.pid})\n"
          f"  Inference   {endpoints['inference']}  (serve-inference pid "
          f"{next((str(c.proc.pid) for c in children if c.name == 'inference'), 'not started')})\n"
          f"  PostgreSQL  {endpoints['postgres']}  ({origin('postgres')})\n"
          f"  NATS        {endpoints['nats']}  ({origin('nats')})\n"
          f"  ClickHouse  {endpoints['clickhouse']}\n"
          f"  Runners     {len(runners)}: pids {', '.join(str(c.proc.pid) for c in runners)}\n"
          f"  Credentials the owner's API token is in {Path(endpoints['data_dir']) / 'admin-token'} (0600); the "
          "trainyard CLI on this machine uses it, elsewhere run `trainyard login`",
          flush=True)
