"""Read-your-writes for the API without polling: every view's transaction NOTIFYs the position it commits
(projections/tracking.py `APPLIED_CHANNEL`); one LISTEN connection per process wakes the requests waiting for it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
from psycopg.errors import UndefinedTable

from infra.postgres import listen
from projections.tracking import APPLIED_CHANNEL


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
        self._watchers: dict[str, list[Callable[[], None]]] = {}

    def watch(self, projection: str, changed: Callable[[], None]) -> None:
        """Call `changed()` (on the listener thread; keep it short) whenever `projection` records a position, and
        after each (re)connection, when announcements may have been missed."""
        self._watchers.setdefault(f"{projection}_tracking", []).append(changed)
        self._ensure_listening(0)

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
        for changed in self._watchers.get(table, ()):
            changed()

    def _connected(self) -> None:
        for key in list(self._applied):  # announcements missed while away
            self._seed(key)
        for watchers in list(self._watchers.values()):
            for changed in watchers:
                changed()
        self._listening.set()

    def close(self) -> None:
        self._stop.set()
