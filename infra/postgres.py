"""PostgreSQL connection settings for the event store (eventsourcing) and the read models (psycopg)."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse, urlsplit

from eventsourcing.persistence import InterfaceError, Notification, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool

log = logging.getLogger("trainyard.postgres")


def _passfile_password(query: str, user: str) -> str:
    """The password for `user` in the libpq password file a URL names (`?passfile=`: the embedded PostgreSQL's
    URLs keep the password there), for eventsourcing, which takes a password and not a conninfo. Matches on the
    user field only: such a file is written for one server."""
    path = parse_qs(query).get("passfile")
    if not path:
        return ""
    for line in Path(path[0]).read_text().splitlines():
        fields = line.split(":", 4)
        if len(fields) == 5 and not line.startswith("#") and fields[3] in ("*", user):
            return fields[4]
    return ""


def eventsourcing_env(database_url: str) -> dict[str, str]:
    """The eventsourcing library's environment for a postgresql:// URL.

    POSTGRES_ENABLE_DB_FUNCTIONS stays off: its function inserts without the table lock, and concurrent writers
    made subscriptions skip events. The table lock keeps insert order equal to commit order (docs/architecture.md);
    OneTripRecorder takes it inside its own function.
    """
    u = urlparse(database_url)
    if u.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"TRAINYARD_DATABASE_URL must be postgresql://..., got {database_url!r}")
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": (u.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_HOST": u.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": unquote(u.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(u.password or "") or _passfile_password(u.query, unquote(u.username or "")),
        "POSTGRES_POOL_SIZE": "5",
        # Aggregates are cached and fast-forwarded (one query for newer events) instead of replayed on every load:
        # a study with many trials, or a job's later reports, cost the same as the first.
        "AGGREGATE_CACHE_MAXSIZE": "5000",
        "POSTGRES_MAX_OVERFLOW": "10",
        "APPLICATION_RECORDER_TOPIC": "infra.postgres:OneTripRecorder",
    }


class OneTripRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL application recorder with the insert in one round trip: a PL/pgSQL function per
    events table takes the same EXCLUSIVE table lock, sends the same NOTIFY and inserts the events, in the one
    (autocommit) statement's transaction, so insert order stays commit order. The library's own path pipelines
    five statements and syncs twice, on every command's save.
    Inserts with tracking records (process applications) take the library's path. (eventsourcing always passes
    `tracking=`, None for a plain save: testing `kwargs` for emptiness sent every insert down the library's path.)"""

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self._one_trip_name = f"{events_table_name}_insert"
        self._statements: dict[tuple, bytes] = {}
        self.check_identifier_length(self._one_trip_name)
        schema, table = Identifier(self.datastore.schema), Identifier(self.events_table_name)
        function = Identifier(self._one_trip_name)
        self._one_trip_call = SQL("SELECT * FROM {schema}.{function}((%s))").format(schema=schema, function=function)
        self.sql_create_statements.append(SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{function}(events {schema}.{event}[]) "
            "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN "
            "SET LOCAL lock_timeout = '{lock_timeout}s'; "
            "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
            "NOTIFY {channel}; "
            "RETURN QUERY INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version, topic, state FROM unnest(events) RETURNING notification_id; "
            "END; $BODY$").format(schema=schema, function=function, table=table,
                                  event=Identifier(self.stored_event_type_name),
                                  lock_timeout=self.datastore.lock_timeout, channel=Identifier(self.channel_name)))

    def _create_table(self, curs: Any) -> None:
        curs.execute(DDL_LOCK)  # processes starting at once replace the functions concurrently otherwise
        super()._create_table(curs)

    # ---- reads: the library's queries, composed once per shape ------------------------------------------------
    # eventsourcing composes its SELECTs with psycopg.sql on every call, and psycopg cannot cache the conversion of
    # a composed query, and each projection's subscription pulls notifications after every commit. The same
    # statements, as text made once.

    def _statement(self, shape: tuple, compose: Callable[[], Any]) -> bytes:
        statement = self._statements.get(shape)
        if statement is None:
            statement = self._statements[shape] = compose().as_bytes(None)
        return statement

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events(self, originator_id: Any, *, gt: int | None = None, lte: int | None = None, desc: bool = False,
                      limit: int | None = None) -> Any:
        params = [originator_id, *(v for v in (gt, lte, limit) if v is not None)]
        statement = self._statement(("events", gt is not None, lte is not None, desc, limit is not None), lambda: (
            self.select_events_statement + SQL(" AND originator_version > %s" if gt is not None else "")
            + SQL(" AND originator_version <= %s" if lte is not None else "")
            + SQL(" ORDER BY originator_version DESC" if desc else " ORDER BY originator_version ASC")
            + SQL(" LIMIT %s" if limit is not None else "")))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params, prepare=True)
            return [StoredEvent(originator_id=row["originator_id"], originator_version=row["originator_version"],
                                topic=row["topic"], state=bytes(row["state"])) for row in curs.fetchall()]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_notifications(self, start: int | None, limit: int, stop: int | None = None, topics: Any = (), *,
                             inclusive_of_start: bool = True) -> Any:
        assert isinstance(topics, (tuple, list)) and all(isinstance(t, str) for t in topics), topics
        conditions = [c for c, v in ((" notification_id>=%s" if inclusive_of_start else " notification_id>%s", start),
                                     (" notification_id <= %s", stop), (" topic = ANY(%s)", topics or None))
                      if v is not None]
        params = [v for v in (start, stop, list(topics) or None) if v is not None] + [limit]
        statement = self._statement(("notifications", *conditions), lambda: (
            SQL("SELECT * FROM {schema}.{table}").format(schema=Identifier(self.datastore.schema),
                                                         table=Identifier(self.events_table_name))
            + SQL((" WHERE" + " AND".join(conditions)) if conditions else "")
            + SQL(" ORDER BY notification_id LIMIT %s")))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params, prepare=True)
            return [Notification(id=row["notification_id"], originator_id=row["originator_id"],
                                 originator_version=row["originator_version"], topic=row["topic"],
                                 state=bytes(row["state"])) for row in curs.fetchall()]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Any, **kwargs: Any) -> Any:
        if any(v is not None for v in kwargs.values()) or not stored_events:
            return super().insert_events(stored_events, **kwargs)
        rows = [self.construct_pg_stored_event(originator_id=e.originator_id, originator_version=e.originator_version,
                                               topic=e.topic, state=e.state) for e in stored_events]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._one_trip_call, (rows,), prepare=True)
            return [r[self._one_trip_name] for r in curs.fetchall()]


# Schema changes take this transaction-scoped lock first: concurrent CREATE ... IF NOT EXISTS / ALTER from several
# processes starting at once otherwise race in the catalog ("tuple concurrently updated", duplicate pg_type).
DDL_LOCK = "SELECT pg_advisory_xact_lock(7274727274)"


def create_database(server_url: str, prefix: str) -> str:
    """A new, empty database `<prefix>_<random>` on the server of `server_url`; returns its URL (tests, benches)."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


def drop_database(server_url: str, url: str) -> None:
    """Drop the database of `url` (made by create_database), closing its sessions."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')


def listen(conninfo: str, channel: str, on_notify: Callable[[str], None], stop: threading.Event,
           on_connect: Callable[[], None] = lambda: None, name: str = "pg-listen") -> threading.Thread:
    """A daemon thread that LISTENs on `channel` and calls `on_notify(payload)` for each notification until `stop`
    is set. After every (re)connection, once LISTEN is in place, it calls `on_connect()` (the caller reads what it
    may have missed meanwhile). A lost connection is retried every 0.5 s."""
    import psycopg

    def run() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{channel}"')
                    on_connect()
                    while not stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            on_notify(n.payload)
            except Exception as e:
                log.warning("LISTEN %s lost (%s); reconnecting", channel, str(e)[:200])
                stop.wait(0.5)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def pool(database_url: str, max_size: int = 8) -> ConnectionPool:
    # check: a connection broken by a PostgreSQL restart is replaced, not handed to a request
    p = ConnectionPool(database_url, min_size=1, max_size=max_size, open=False, check=ConnectionPool.check_connection)
    p.open(wait=True, timeout=30)
    return p


def fetch_dicts(pool: Any, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    """Rows of a query as dicts (column name → value), on a connection of `pool`: what the read models' queries
    return."""
    from psycopg.rows import dict_row

    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()
