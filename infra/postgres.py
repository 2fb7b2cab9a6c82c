"""PostgreSQL connection settings for the event store (eventsourcing) and the read models (psycopg)."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from urllib.parse import unquote, urlparse

from psycopg_pool import ConnectionPool

log = logging.getLogger("trainyard.postgres")


def eventsourcing_env(database_url: str) -> dict[str, str]:
    """The eventsourcing library's environment for a postgresql:// URL.

    POSTGRES_ENABLE_DB_FUNCTIONS stays off: with it on, concurrent writers made subscriptions skip
    events; the default table lock keeps insert order equal to commit order (docs/architecture.md).
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
        "POSTGRES_PASSWORD": unquote(u.password or ""),
        "POSTGRES_POOL_SIZE": "5",
        # Aggregates are cached and fast-forwarded (one query for newer events) instead of replayed on every load:
        # a study with many trials, or a job's later reports, cost the same as the first.
        "AGGREGATE_CACHE_MAXSIZE": "5000",
        "POSTGRES_MAX_OVERFLOW": "10",
    }



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
    return f"{server_url.rpartition('/')[0]}/{name}"


def drop_database(server_url: str, url: str) -> None:
    """Drop the database of `url` (made by create_database), closing its sessions."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


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
