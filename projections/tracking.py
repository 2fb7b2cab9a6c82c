"""The plumbing every PostgreSQL read model shares: a view whose rows and tracking position commit together, and
a projection base with the poison policy.

- `TrackedView`: a view's tables plus its tracking table (`<projection>_tracking`); `write` commits a row change
  and the event's position in one transaction, and a replay of an applied position is a no-op. Every position it
  records is announced on `APPLIED_CHANNEL` (projections/read_your_writes.py listens).
- `TrackedProjection`: dispatches events to `apply` (a singledispatchmethod in the subclass) under a poison
  policy: an event that fails `max_tries` times for a reason other than the database being away is set aside
  (its position recorded with the error in `projection_poisoned`) and the projection moves on.
- `topics_of`: a projection's topic filter, from the event classes it reads.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Generic, TypeVar

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic
from psycopg import InterfaceError, OperationalError
from psycopg.sql import SQL
from psycopg.types.json import Jsonb

from domain.contract import printable
from infra.postgres import DDL_LOCK

log = logging.getLogger("trainyard.projections")
APPLIED_CHANNEL = "trainyard_applied"  # payload "<tracking table>|<application>|<position>"
POISONED_DDL = """
CREATE TABLE IF NOT EXISTS projection_poisoned (
    projection text NOT NULL, notification_id bigint NOT NULL, topic text, error text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (projection, notification_id));
"""


def topics_of(*event_classes: type) -> tuple[str, ...]:
    """The topics of `event_classes` (what the event store records), for a projection's `topics` filter."""
    return tuple(get_topic(cls) for cls in event_classes)


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
