"""The live service for end-to-end tests: `trainyard up` (serve, runners, inference) in a subprocess, and a client
for it that waits the way a user would."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from infra.embedded import free_port
from tests.support.database import create_database, drop_database
from tests.support.auth import admin_token
from tests.support.waiting import NeverHappened, eventually

FINISHED = ("completed", "failed", "cancelled")
JOBS = "/api/v1/training/jobs"
# Short leases so lost runners are noticed in seconds (the default ttl is 15 s).
FAST_LEASES = {"TRAINYARD_LEASE_TTL_S": "5", "TRAINYARD_RECONCILE_INTERVAL_S": "0.5", "TRAINYARD_REQUEUE_AFTER_S": "5"}


class Stack:
    def __init__(self, proc: subprocess.Popen, data_dir: Path, api: str, nats_url: str) -> None:
        self.proc, self.data_dir, self.nats_url = proc, data_dir, nats_url
        self.http = httpx.Client(base_url=api, timeout=30)

    def cli_env(self) -> dict[str, str]:
        """Settings for the CLI or the Python client in a child process: this stack's API and its data dir (where
        the first owner's token lies, as on the machine that ran `trainyard up`), and no login of the developer."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        return {**env, "TRAINYARD_API_URL": str(self.http.base_url).rstrip("/"), "TRAINYARD_DATA_DIR": str(self.data_dir),
                "TRAINYARD_CREDENTIALS": str(self.data_dir / "no-login.json")}

    def endpoints(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "endpoints.json").read_text())

    def submit(self, **body: Any) -> str:
        r = self.http.post(JOBS, json={"name": "t", **body})
        assert r.status_code == 202, r.text
        return r.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"{JOBS}/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
        """The job once `until(job)` holds; rides out a restarting serve (transport errors) or PostgreSQL (503)."""
        last: list[dict[str, Any]] = [{}]

        def reached() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"trainyard up exited with {self.proc.returncode}"
            r = self.http.get(f"{JOBS}/{job_id}")
            if r.status_code == 503:  # PostgreSQL is being restarted: the API says retry
                return None
            assert r.status_code == 200, r.text
            last[0] = r.json()
            return last[0] if until(last[0]) else None

        return eventually(reached, timeout=timeout, interval=0.1, ignoring=(httpx.TransportError,),
                          message=lambda: f"job {job_id} never reached the expected state: {last[0]}")

    def series(self, job_id: str, name: str, max_points: int = 100_000) -> list[dict[str, Any]]:
        r = self.http.get(f"{JOBS}/{job_id}/metrics/{name}", params={"max_points": max_points})
        assert r.status_code == 200, r.text
        return r.json()["points"]

    def full_series(self, job_id: str, name: str, expected: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The series once it has `expected` points: telemetry is eventually consistent with the job's status
        (after a serve crash, batches it had fetched come back after the metrics consumer's 10 s ack wait). At the
        timeout, the points there are (the caller's assertion shows what is missing); none at all fails."""
        last: list[list[dict[str, Any]] | None] = [None]

        def whole() -> bool:
            r = self.http.get(f"{JOBS}/{job_id}/metrics/{name}", params={"max_points": 100_000})
            if r.status_code == 404:  # 404 until the metric's first batch lands
                return False
            assert r.status_code == 200, r.text
            last[0] = r.json()["points"]
            return len(last[0]) >= expected

        try:
            eventually(whole, timeout=timeout, interval=0.1,
                       message=f"metric {name} of job {job_id} never had {expected} points")
        except NeverHappened:
            if last[0] is None:
                raise AssertionError(f"metric {name} of job {job_id} never appeared") from None
        return last[0]

    def wait_ready(self, timeout: float = 120) -> None:
        last = [""]

        def ready() -> bool:
            assert self.proc.poll() is None, "trainyard up exited"
            try:
                r = self.http.get("/readyz")
            except httpx.TransportError as e:
                last[0] = repr(e)
                return False
            last[0] = r.text
            return r.status_code == 200

        eventually(ready, timeout=timeout, interval=0.2,
                   message=lambda: f"the service never became ready: {last[0][:3000]}")
        # the first owner's token, which the first start wrote (the CLI on this machine reads the same file)
        self.http.headers["Authorization"] = f"Bearer {admin_token(self.data_dir)}"

        def signed_in() -> bool:
            last[0] = (r := self.http.get("/api/v1/me")).text
            return r.status_code == 200
        eventually(signed_in, timeout=timeout, interval=0.1,
                   message=lambda: f"the owner's token never worked: {last[0][:3000]}")


@contextlib.contextmanager
def running_up(data_dir: Path, settings: dict[str, str], nats_url: str = "") -> Iterator[Stack]:
    """`trainyard up` in a subprocess with these TRAINYARD_* settings (and no others); SIGTERM must stop it with 0."""
    port = free_port(0)  # an OS-chosen port: stacks of parallel test runs never share one
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(settings, TRAINYARD_DATA_DIR=str(data_dir), TRAINYARD_API_PORT=str(port))
    log = open(data_dir / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    s = Stack(proc, data_dir, f"http://127.0.0.1:{port}", nats_url)
    try:
        s.wait_ready()
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0, "trainyard up did not stop cleanly on SIGTERM"
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            print(_what_up_said(data_dir))


def _what_up_said(data_dir: Path) -> str:
    """For a failing test's output: the supervisor's own lines (what died, what it restarted), tracebacks and
    thread dumps, the tail of everything, and the tail of the embedded PostgreSQL's log."""
    lines = (data_dir / "up.log").read_text(errors="replace").splitlines()
    keep = [line for line in lines if "trainyard.supervisor" in line or "trainyard.embedded" in line]
    pg_log = data_dir / "postgres" / "server.log"
    pg_tail = pg_log.read_text(errors="replace")[-3000:] if pg_log.exists() else "(none)"
    return ("--- supervisor ---\n" + "\n".join(keep[-80:]) + "\n--- up.log (tail) ---\n" + "\n".join(lines)[-8000:]
            + "\n--- postgres/server.log (tail) ---\n" + pg_tail)


@contextlib.contextmanager
def up_on_a_fresh_database(postgres_server: str, nats_url: str, data_dir: Path, **extra: str) -> Iterator[Stack]:
    """`trainyard up` with 2 runners and short leases on its own new database and the session's NATS (`extra`:
    more TRAINYARD_* settings)."""
    database_url = create_database(postgres_server)
    settings = {"TRAINYARD_DATABASE_URL": database_url, "TRAINYARD_NATS_URL": nats_url, "TRAINYARD_RUNNERS": "2",
                **FAST_LEASES, **extra}
    try:
        with running_up(data_dir, settings, nats_url) as s:
            yield s
    finally:
        drop_database(postgres_server, database_url)
