"""Embedded engines and `trainyard up` supervision, against real PostgreSQL and nats-server processes."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nats
import psutil
import psycopg
import pytest

from infra.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from infra.settings import Settings
from entrypoints.up import run_up
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def engine_dir():
    """A data dir outside pytest's basetemp: as root, postgres runs as another user and needs to traverse the
    path, and a concurrent pytest session would chmod its basetemp back to 0700."""
    path = Path(tempfile.mkdtemp(prefix="trainyard-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_free_port_prefers_then_falls_back():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert free_port(taken) != taken
    assert free_port(taken) == taken


def test_postgres_free_port_and_data_survive_restart(engine_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        pg = EmbeddedPostgres(engine_dir, preferred_port=taken)
        url = pg.start()
    try:
        assert pg.port != taken and f":{pg.port}/trainyard?" in url
        if _port_busy(5432):
            assert EmbeddedPostgres(engine_dir).preferred_port == 5432 and pg.port != 5432
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
    finally:
        pg.stop()
    assert not pg.is_running() and _gone(pg.pid)

    again = EmbeddedPostgres(engine_dir)
    url = again.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
    finally:
        again.stop()
    assert _gone(again.pid)


def test_postgres_restarts_after_a_kill_under_a_subreaper_that_never_reaps(engine_dir):
    """A process that runs training code is a subreaper (runners/process_tree.py): a postmaster killed in a
    process below it is reparented to it and stays a zombie that nobody waits for; its pid file must not keep the
    cluster down."""
    restart = textwrap.dedent(f"""
        import os, signal, time
        import psycopg
        from infra.embedded import EmbeddedPostgres
        pg = EmbeddedPostgres({str(engine_dir)!r})
        url = pg.start()
        old = pg.pid
        os.kill(old, signal.SIGKILL)
        time.sleep(0.5)
        assert not pg.is_running()
        assert pg.start() == url and pg.pid != old
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pg.stop()
        print("restarted", old, pg.pid)
    """)
    subreaper = textwrap.dedent(f"""
        import subprocess, sys
        from runners.process_tree import become_subreaper
        assert become_subreaper()
        sys.exit(subprocess.run([sys.executable, "-c", {restart!r}], timeout=100).returncode)
    """)
    done = subprocess.run([sys.executable, "-c", subreaper], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "restarted" in done.stdout, done.stdout + done.stderr


def test_nats_jetstream_publish_ack(engine_dir):
    server = EmbeddedNats(engine_dir)
    url = server.start()
    try:
        if _port_busy(4222):
            assert server.port != 4222

        async def publish() -> int:
            service = json.loads(server.credentials("service").read_text())
            nc = await nats.connect(url, user=service["user"], password=service["password"])
            try:
                js = nc.jetstream()
                await js.add_stream(name="T", subjects=["t.>"])
                ack = await js.publish("t.one", b"hello")
                assert ack.stream == "T"
                return ack.seq
            finally:
                await nc.close()

        assert asyncio.run(publish()) == 1
        assert (engine_dir / "nats" / "jetstream").is_dir()
    finally:
        server.stop()
    assert server.proc.returncode == 0


CHILD = textwrap.dedent("""
    import json, os, time
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k.startswith("TRAINYARD_")}
    Path(env["TRAINYARD_DATA_DIR"], f"env-{os.getpid()}.json").write_text(json.dumps(env))
    time.sleep(3600)
""")
UP = textwrap.dedent("""
    import sys
    from infra.settings import Settings
    from entrypoints.up import run_up
    child = [sys.executable, "-c", sys.argv[2]]
    settings = Settings(data_dir=sys.argv[1], runners=2, database_url=None, nats_url=None, clickhouse_url=None)
    sys.exit(run_up(settings, serve_cmd=child, runner_cmd=child, inference_cmd=child))
""")


def _endpoints(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_run_up_writes_endpoints_restarts_children_and_stops_on_sigterm(engine_dir):
    up = subprocess.Popen([sys.executable, "-c", UP, str(engine_dir), CHILD], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = eventually(lambda: _endpoints(engine_dir / "endpoints.json"), timeout=20, interval=0.05,
                          message="run_up never wrote endpoints.json")
        assert set(info) == {"api", "inference", "postgres", "nats", "clickhouse", "data_dir", "pids"}
        assert info["clickhouse"] == f"chdb://{engine_dir / 'chdb'}"
        assert info["data_dir"] == str(engine_dir)
        pids = info["pids"]
        assert set(pids) == {"serve", "runners", "inference", "postgres", "nats"} and len(pids["runners"]) == 2
        children = [pids["serve"], *pids["runners"], pids["inference"]]
        assert all(psutil.pid_exists(p) for p in [*children, pids["postgres"], pids["nats"]])
        with psycopg.connect(info["postgres"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("trainyard",)

        env = json.loads(eventually(lambda: (engine_dir / f"env-{pids['serve']}.json").exists()
                                    and (engine_dir / f"env-{pids['serve']}.json").read_text(), timeout=20,
                                    interval=0.05, message="the serve child never wrote its environment"))
        assert env["TRAINYARD_DATABASE_URL"] == info["postgres"] and env["TRAINYARD_NATS_URL"] == info["nats"]
        assert "TRAINYARD_CLICKHOUSE_URL" not in env and env["TRAINYARD_DATA_DIR"] == str(engine_dir)
        assert info["api"] == f"http://127.0.0.1:{env['TRAINYARD_API_PORT']}"
        assert info["inference"] == f"http://127.0.0.1:{env['TRAINYARD_INFERENCE_PORT']}" != info["api"]

        os.kill(pids["runners"][0], signal.SIGKILL)  # a crashed runner is restarted
        new = eventually(lambda: (e := _endpoints(engine_dir / "endpoints.json"))
                         and e["pids"]["runners"][0] != pids["runners"][0] and e, timeout=20, interval=0.05,
                         message="the killed runner was never restarted")
        assert psutil.pid_exists(new["pids"]["runners"][0])
        children.append(new["pids"]["runners"][0])

        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=20)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, output
    assert "child.restarted name=runner-0" in output
    assert all(_gone(p) for p in [*children, pids["postgres"], pids["nats"]]), output
    assert (engine_dir / "postgres" / "PG_VERSION").exists() and (engine_dir / "nats").is_dir()


LATE_API = textwrap.dedent("""
    import os, socket, time
    from pathlib import Path
    time.sleep(2)  # serve builds its read models before it binds
    server = socket.create_server(("127.0.0.1", int(os.environ["TRAINYARD_API_PORT"])))
    Path(os.environ["TRAINYARD_DATA_DIR"], "listening-at").write_text(repr(time.time()))
    while True:
        server.accept()[0].close()
""")


def test_up_says_it_is_up_only_once_the_api_accepts_connections(engine_dir):
    idle = textwrap.dedent("import time\ntime.sleep(3600)")
    script = UP.replace("serve_cmd=child", "serve_cmd=[sys.executable, '-c', sys.argv[3]]")
    up = subprocess.Popen([sys.executable, "-c", script, str(engine_dir), idle, LATE_API], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in up.stdout:  # type: ignore[union-attr]
            if line.startswith("Trainyard is up"):
                said_up = time.time()
                break
        listening = float((engine_dir / "listening-at").read_text())
        assert said_up >= listening
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=30)


def test_run_up_gives_up_on_crash_loop(engine_dir):
    # External URLs: nothing embedded starts; the children exit at once, every time.
    settings = Settings(data_dir=engine_dir, runners=1, database_url="postgresql://x@127.0.0.1:1/x",
                        nats_url="nats://127.0.0.1:1", clickhouse_url=None)
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    started = time.monotonic()
    assert run_up(settings, serve_cmd=crash, runner_cmd=crash, inference_cmd=crash, max_restarts=2) == 1
    assert time.monotonic() - started < 10
    assert _endpoints(engine_dir / "endpoints.json")["pids"]["postgres"] is None


# ---- the embedded PostgreSQL is locked down ------------------------------------------------------------------------
def _refused_without_password(port: int, user: str) -> bool:
    try:
        psycopg.connect(f"postgresql://{user}@127.0.0.1:{port}/postgres", connect_timeout=5).close()
    except psycopg.OperationalError as e:
        return "password" in str(e)
    return False


def test_postgres_asks_for_passwords_and_the_service_role_is_no_superuser(engine_dir):
    pg = EmbeddedPostgres(engine_dir)
    url = pg.start()
    try:
        assert "trainyard@" in url and "passfile=" in url
        for role in ("postgres", "trainyard"):
            assert stat.S_IMODE(pg.passfile(role).stat().st_mode) == 0o600
            assert _refused_without_password(pg.port, role)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
            conn.execute("CREATE TABLE t (v text)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("COPY t FROM PROGRAM 'id'")
        if os.geteuid() == 0:  # the server runs as a system user, without root's group
            status = Path(f"/proc/{pg.pid}/status").read_text()
            gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
            groups = next(line for line in status.splitlines() if line.startswith("Groups:")).split()[1:]
            assert "0" not in gids and "0" not in groups, status
            assert psutil.Process(pg.pid).uids().real != 0
    finally:
        pg.stop()


def test_postgres_cluster_from_before_passwords_is_migrated(engine_dir):
    class TrustCluster(EmbeddedPostgres):
        """What an older Trainyard made: trust auth, the database and its tables owned by the superuser."""

        def _initdb(self, _password: str) -> None:
            self._pg("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                     "--no-locale", what="initdb")

        def _require_passwords(self, _password: str) -> None:
            pass

        def _ensure_database(self) -> None:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
                c.execute("CREATE DATABASE trainyard")
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/trainyard", autocommit=True) as c:
                c.execute("CREATE TABLE kept (id serial, v int)")
                c.execute("INSERT INTO kept (v) VALUES (42)")

    old = TrustCluster(engine_dir)
    old.start()
    old.stop()
    for f in engine_dir.glob("credentials/postgres-*"):  # an old data dir had none
        f.unlink()

    pg = EmbeddedPostgres(engine_dir)
    url = pg.start()
    try:
        assert _refused_without_password(pg.port, "postgres") and _refused_without_password(pg.port, "trainyard")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO kept (v) VALUES (43)")
            assert conn.execute("SELECT v FROM kept ORDER BY id").fetchall() == [(42,), (43,)]
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        with psycopg.connect(pg.superuser_url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    finally:
        pg.stop()
    again = EmbeddedPostgres(engine_dir)  # and it starts again as it is now
    try:
        with psycopg.connect(again.start()) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)
    finally:
        again.stop()


def test_a_stopping_process_closes_what_its_tasks_wait_on_after_the_grace():
    """serve and serve-inference end on SIGTERM within seconds even when a task waits on a PostgreSQL that is
    down: after the grace, closing the pool fails the waiter (here: an event the close sets)."""
    import threading

    from entrypoints.bootstrap import wind_down

    released = threading.Event()

    def blocked_in_the_pool() -> str:
        released.wait(60)
        return "released"

    async def main() -> tuple[float, list]:
        quick = asyncio.create_task(asyncio.sleep(0), name="quick")
        stuck = asyncio.create_task(asyncio.to_thread(blocked_in_the_pool), name="stuck")
        started = time.monotonic()
        await wind_down([quick, stuck], released.set, grace_s=0.5)
        return time.monotonic() - started, [quick.done(), stuck.done()]

    took, done = asyncio.run(main())
    assert released.is_set() and done == [True, True] and 0.5 <= took < 5
