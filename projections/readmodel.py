"""The plumbing every PostgreSQL read model shares: one view base, one projection base, one host, one wait.

- `TrackedView`: a view's tables plus its tracking table (`<projection>_tracking`); `write` commits a row change
  and the event's position in one transaction, and a replay of an applied position is a no-op.
- `TrackedProjection`: dispatches events to `apply` (a singledispatchmethod in the subclass) under a poison
  policy: an event that fails `max_tries` times for a reason other than the database being away is set aside
  (its position recorded with the error in `projection_poisoned`) and the projection moves on.
- `ProjectionHost`: runs one eventsourcing ProjectionRunner, restarts it when it stops, and reports its position,
  lag and errors to the stage's health. `ProjectionProcess` runs the hosts in a child process of `serve` (off the
  API's GIL) and mirrors their stages into serve's health.
- `AppliedPositions`: read-your-writes for the API without polling: every view's transaction NOTIFYs the position
  it commits; one LISTEN connection per process wakes the requests waiting for it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Generic, TypeVar

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
import psycopg
from psycopg import InterfaceError, OperationalError
from psycopg.errors import UndefinedTable
from psycopg.sql import SQL
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from domain.contract import printable
from infra.health import Stage
from infra.postgres import DDL_LOCK, listen

log = logging.getLogger("trainyard.projections")
APPLIED_CHANNEL = "trainyard_applied"  # payload "<tracking table>|<application>|<position>"
POISONED_DDL = """
CREATE TABLE IF NOT EXISTS projection_poisoned (
    projection text NOT NULL, notification_id bigint NOT NULL, topic text, error text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (projection, notification_id));
"""


class TrackedView(PostgresTrackingRecorder):
    """Subclasses set `DDL` (their tables) and write only through `write`."""

    DDL = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(SQL(self.DDL + POISONED_DDL))  # type: ignore[arg-type]

    def _create_table(self, curs: Any) -> None:
        curs.execute(DDL_LOCK)
        super()._create_table(curs)

    def _insert_tracking(self, curs: Any, tracking: Tracking) -> None:
        """Every path that records a position (a row change, an event this view skips, a set-aside) comes here: the
        position is announced on APPLIED_CHANNEL, which PostgreSQL delivers when (and only if) the transaction
        commits."""
        super()._insert_tracking(curs, tracking)
        curs.execute("SELECT pg_notify(%s, %s)", (APPLIED_CHANNEL, f"{self.tracking_table_name}|"
                                                  f"{tracking.application_name}|{tracking.notification_id}"))

    def write(self, sql: str, params: dict[str, Any], tracking: Tracking) -> None:
        params = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in params.items()}
        try:
            with self.datastore.transaction(commit=True) as curs:
                self._insert_tracking(curs, tracking)  # refuses a position already applied
                curs.execute(sql, params)  # type: ignore[arg-type]
        except IntegrityError:
            if not self.has_tracking_id(tracking.application_name, tracking.notification_id):
                raise

    def insert_row(self, table: str, row: dict[str, Any], tracking: Tracking) -> None:
        """Insert `row` (column: value) into `table`, keyed by `id`; a row that exists already is left alone."""
        cols = list(row)
        sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('%(' + c + ')s' for c in cols)}) "
               "ON CONFLICT (id) DO NOTHING")
        self.write(sql, row, tracking)

    def update_row(self, table: str, row_id: Any, version: int, changes: dict[str, Any], tracking: Tracking) -> None:
        """Apply `changes` to the row `row_id` of `table` written by an older aggregate version than `version`."""
        sets = ", ".join(f"{c} = %({c})s" for c in changes)
        sql = f"UPDATE {table} SET {sets}, version = %(_version)s WHERE id = %(_id)s AND version < %(_version)s"
        self.write(sql, {**changes, "_id": row_id, "_version": version}, tracking)

    def set_aside(self, tracking: Tracking, projection: str, topic: str, error: str) -> None:
        """Record the position as applied without applying it, and why."""
        with self.datastore.transaction(commit=True) as curs:
            if not self.has_tracking_id(tracking.application_name, tracking.notification_id):
                self._insert_tracking(curs, tracking)
            curs.execute("INSERT INTO projection_poisoned (projection, notification_id, topic, error) "  # type: ignore[arg-type]
                         "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                         (projection, tracking.notification_id, topic, error))


TView = TypeVar("TView", bound=TrackedView)
TRANSIENT = (OperationalError, InterfaceError)  # the database is away: retry forever (the runner restarts)
_STARTING = threading.Lock()  # projection runners start one at a time (each creates its tables)


class TrackedProjection(Projection[TView], Generic[TView]):
    max_tries = 3

    def process_event(self, domain_event: DomainEventProtocol[Any], tracking: Tracking) -> None:
        error = ""
        for attempt in range(self.max_tries):
            try:
                self.apply(domain_event, tracking)
                return
            except TRANSIENT:
                raise
            except Exception as e:
                error = printable(f"{type(e).__name__}: {e}", 500)
                log.warning("projection %s: event %d failed (%d/%d): %s", self.name, tracking.notification_id,
                            attempt + 1, self.max_tries, error)
                time.sleep(0.05 * (attempt + 1))
        log.error("projection %s: event %d set aside: %s", self.name, tracking.notification_id, error)
        self.view.set_aside(tracking, self.name, type(domain_event).__qualname__, error)

    def apply(self, domain_event: DomainEventProtocol[Any], tracking: Tracking) -> None:
        """Each projection defines its own `singledispatchmethod` named `apply`, falling back to insert_tracking."""
        raise NotImplementedError


class ProjectionHost:
    """Runs a projection (eventsourcing's ProjectionRunner, threads), restarts it if it dies, reports health."""

    def __init__(self, application_class: type, projection_class: type, view_class: type, env: dict[str, str],
                 pool: ConnectionPool, stage: Stage) -> None:
        self.application_class, self.projection_class, self.view_class = application_class, projection_class, view_class
        self.env, self.pool, self.stage = env, pool, stage
        self.runner: ProjectionRunner | None = None

    def _start(self) -> None:
        with _STARTING:  # one at a time: each runner creates its application's and view's tables
            self._start_runner()

    def _start_runner(self) -> None:
        runner = ProjectionRunner(application_class=self.application_class, projection_class=self.projection_class,
                                  view_class=self.view_class, env=self.env)
        self.runner = runner.__enter__()
        table = runner.app.recorder.events_table_name
        with self.pool.connection() as conn:  # the last event of given topics in O(log n): see _head
            conn.execute(DDL_LOCK)
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{table}_topic" ON "{table}" (topic, notification_id)')

    def _head(self, conn: Any) -> int:
        """The position of the newest event this projection takes: the lag is measured against its own topics,
        or a read model that sees no events of other aggregates would look ever further behind."""
        runner = self.runner
        assert runner is not None
        topics = list(self.projection_class.topics)
        if not topics:
            return runner.app.recorder.max_notification_id() or 0
        table = runner.app.recorder.events_table_name
        row = conn.execute(f'SELECT max((SELECT max(notification_id) FROM "{table}" WHERE topic = t)) '
                           "FROM unnest(%s::text[]) AS t", (topics,)).fetchone()
        return row[0] or 0

    def _observe(self) -> None:
        runner = self.runner
        assert runner is not None
        name = self.projection_class.name
        position = runner.view.max_tracking_id(runner.app.name) or 0
        with self.pool.connection() as conn:
            head = self._head(conn)
            poisoned = conn.execute("SELECT count(*) FROM projection_poisoned WHERE projection = %s", (name,)).fetchone()[0]
        if poisoned > self.stage.poisoned:  # set aside by the runner's thread: counted here, in the stage
            self.stage.poisoned_one("see table projection_poisoned")
            self.stage.poisoned = poisoned
        self.stage.observe(position, head)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self._start)
                while not stop.is_set() and not self.runner.is_interrupted.is_set():  # type: ignore[union-attr]
                    try:
                        await asyncio.to_thread(self._observe)
                    except Exception as e:
                        self.stage.failed(e)
                        self.stage.tick()
                    await asyncio.sleep(0.5)
                if not stop.is_set():
                    error = self.runner._thread_error  # type: ignore[union-attr]
                    log.error("projection %s stopped: %r; restarting", self.projection_class.name, error)
                    self.stage.failed(error or "stopped")
            except Exception as e:
                log.exception("projection %s failed to start; retrying", self.projection_class.name)
                self.stage.failed(e)
            finally:
                self.close()
            if not stop.is_set():
                await asyncio.sleep(1.0)

    def close(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            runner.stop()
            try:
                runner.__exit__(None, None, None)
            except Exception as e:
                log.warning("projection %s ended with %r", self.projection_class.name, e)


class AppliedPositions:
    """How far each projection has got, as announced by the views' NOTIFYs; `wait_for` blocks until a projection
    has applied a position (read-your-writes after a command), with no polling query.

    One LISTEN connection (a daemon thread) per process. A projection's position is read once from its tracking
    table, after LISTEN is in place, so no announcement can fall in between; after a lost connection every known
    position is read again. A wait that times out reads the table once more before answering False.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._applied: dict[str, int] = {}
        self._cond = threading.Condition()
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def wait_for(self, projection: str, application_name: str, position: int, timeout_s: float) -> bool:
        key = f"{projection}_tracking|{application_name}"
        if self._applied.get(key, -1) >= position:
            return True
        self._ensure_listening(timeout_s)
        if key not in self._applied:
            self._seed(key)
        with self._cond:
            if self._cond.wait_for(lambda: self._applied.get(key, -1) >= position, timeout_s):
                return True
        self._seed(key)  # a lost announcement (a reconnect gap) must not turn into a false "not yet"
        return self._applied.get(key, -1) >= position

    def _seed(self, key: str) -> None:
        table, app = key.split("|", 1)
        try:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                row = conn.execute(f"SELECT max(notification_id) FROM {table} WHERE application_name = %s",
                                   (app,)).fetchone()
        except UndefinedTable:
            row = None
        self._announce(key, (row[0] if row else None) or 0)

    def _announce(self, key: str, position: int) -> None:
        with self._cond:
            if position > self._applied.get(key, -1):
                self._applied[key] = position
                self._cond.notify_all()

    def _ensure_listening(self, timeout_s: float) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = listen(self.database_url, APPLIED_CHANNEL, self._notified, self._stop,
                                      self._connected, name="applied-positions")
        self._listening.wait(timeout_s)

    def _notified(self, payload: str) -> None:
        table, app, position = payload.rsplit("|", 2)
        self._announce(f"{table}|{app}", int(position))

    def _connected(self) -> None:
        for key in list(self._applied):  # announcements missed while away
            self._seed(key)
        self._listening.set()

    def close(self) -> None:
        self._stop.set()


def _load(path: str) -> Any:
    """The object at "package.module.Name"."""
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _project(projections: list[tuple[str, str, str, str]], database_url: str, conn: Any, stuck_after_s: float) -> None:
    """The child of `ProjectionProcess`: runs each projection's host, sends the stages' snapshots every 0.5 s, and
    exits when its parent is gone or sends anything."""
    import ctypes
    import os
    import signal

    from infra.postgres import eventsourcing_env, pool as pg_pool

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with serve, at once
    if os.getppid() != parent:
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        pool, stop = pg_pool(database_url, max_size=4), asyncio.Event()
        hosts = {name: ProjectionHost(_load(app), _load(projection), _load(view), eventsourcing_env(database_url), pool,
                                      Stage(name, stuck_after_s=stuck_after_s, loops=True))
                 for name, app, projection, view in projections}
        tasks = [asyncio.create_task(host.run(stop)) for host in hosts.values()]
        try:
            while os.getppid() == parent and not conn.poll():
                conn.send({name: host.stage.snapshot() for name, host in hosts.items()})
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for host in hosts.values():
                host.close()
            pool.close()

    asyncio.run(main())


class ProjectionProcess:
    """Runs PostgreSQL projections in a child process of `serve` (so their CPU is off the API's GIL), restarts it
    when it dies, and mirrors each projection's health into this process's `stages` (what /readyz shows).

    `projections`: (stage name, "module.Application", "module.Projection", "module.View") per projection."""

    def __init__(self, projections: list[tuple[str, str, str, str]], database_url: str, stages: dict[str, Stage],
                 stuck_after_s: float = 30.0) -> None:
        self.projections, self.database_url, self.stages = projections, database_url, stages
        self.stuck_after_s = stuck_after_s
        self.pid: int | None = None  # the child's, while it runs

    def _mirror(self, snapshots: dict[str, dict[str, Any]]) -> None:
        for name, snap in snapshots.items():
            stage = self.stages[name]
            if snap["last_error"] and snap["last_error"] != stage.last_error:
                stage.failed(snap["last_error"])
            stage.poisoned = max(stage.poisoned, snap["poisoned"] or 0)
            if snap["status"] != "starting":
                stage.observe(snap["position"], snap["head"])

    async def run(self, stop: asyncio.Event) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        while not stop.is_set():
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_project, name="trainyard-projections", daemon=True,
                               args=(self.projections, self.database_url, child_end, self.stuck_after_s))
            proc.start()
            self.pid = proc.pid
            try:
                while not stop.is_set() and proc.is_alive():
                    if await asyncio.to_thread(parent_end.poll, 0.5):
                        try:
                            self._mirror(parent_end.recv())
                        except (EOFError, OSError):
                            break
                if not stop.is_set():
                    log.error("projection process exited (%s); restarting", proc.exitcode)
                    for stage in self.stages.values():
                        stage.failed(f"projection process exited ({proc.exitcode}); restarting")
            finally:
                if proc.is_alive():
                    with contextlib.suppress(Exception):
                        parent_end.send("stop")
                    await asyncio.to_thread(proc.join, 15)
                    if proc.is_alive():
                        proc.kill()
                parent_end.close()
            if not stop.is_set():
                await asyncio.sleep(1.0)
