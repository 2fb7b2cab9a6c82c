"""Running the PostgreSQL projections: `ProjectionHost` runs one eventsourcing ProjectionRunner, restarts it when it
stops, and reports its position, lag and errors to the stage's health; `ProjectionProcess` runs the hosts in a child
process of `serve` (off the API's GIL) and mirrors their stages into serve's health.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from eventsourcing.projection import ProjectionRunner
from psycopg_pool import ConnectionPool

from infra.health import Stage
from infra.postgres import DDL_LOCK

log = logging.getLogger("trainyard.projections")
_STARTING = threading.Lock()  # projection runners start one at a time (each creates its tables)


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
