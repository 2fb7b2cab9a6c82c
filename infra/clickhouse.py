"""ClickHouse access: one small interface, two drivers (embedded chDB, a server over HTTP), one set of SQL.

The SQL lives with the code that owns the tables (e.g. projections/telemetry/metric_store.py) and is the same
string for both drivers. Parameters use ClickHouse server-side binding, `{name:Type}` in the SQL and
`params={"name": value}`; values are never pasted into SQL text.

Result values are what the driver makes of the column type (UUID -> uuid.UUID, DateTime64 -> datetime,
whose tzinfo may differ between drivers): SQL meant for both drivers selects plain scalars
(`toString(uuid)`, `toUnixTimestamp64Milli(ts)`, numbers, strings), which come back identically.

chDB is in-process and single-owner: one data path per process (a second path raises until every session
on the first is closed), and only one process may open a path (design decision 6).
"""
from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import pyarrow as pa

Rows = Sequence[tuple] | Mapping[str, Sequence[Any]]
# With a deduplication token, a block the table drops as a repeat is still offered to its materialized views, each
# deduplicating it on its own: an insert retried after its view failed fills the view, instead of being dropped
# whole as seen (what a view derives must then be insensitive to repeats where its table keeps no window).
VIEWS_RETRIED = {"deduplicate_blocks_in_dependent_materialized_views": 1}


class ClickHouseError(RuntimeError):
    """A statement failed (bad SQL, type mismatch, server or engine error); the driver's error is __cause__."""


class ClickHouse(Protocol):
    """A ClickHouse database. Thread-safe (implementations serialize where the driver is not)."""

    def command(self, sql: str, params: dict | None = None) -> None:
        """Run a statement that returns nothing (DDL, OPTIMIZE, INSERT … SELECT, ...); `params` as for query."""

    def query(self, sql: str, params: dict | None = None) -> list[tuple]:
        """Rows of a SELECT; `params` fill `{name:Type}` placeholders (server-side binding)."""

    def insert(self, table: str, columns: list[str], rows: Rows, dedup_token: str | None = None,
               collapse: bool = True) -> None:
        """Insert rows (a list of tuples in `columns` order, or a mapping column -> values, where values may be a
        list, numpy array or pyarrow Array). With `dedup_token`, a repeat of an insert with the same token is
        dropped by ClickHouse (the table needs a deduplication window: see metric_store's DDL); tokens are
        global per table, so make them unique per batch content. `collapse` False: rows of one key that a
        Replacing/Aggregating engine would merge at insert are left to its merges (optimize_on_insert = 0, a third
        of a large insert's cost), for tables read only through FINAL or GROUP BY."""

    def close(self) -> None:
        """Release the connection / the chDB session."""


def connect(url: str | None, chdb_path: Path) -> ClickHouse:
    """`url` None: embedded chDB at `chdb_path`; "http(s)://user:pass@host:port/db": a ClickHouse server."""
    if url is None:
        return ChdbClickHouse(chdb_path)
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"ClickHouse URL must be http(s)://user:pass@host:port/db, got scheme {scheme!r}")
    return HttpClickHouse(url)


MAX_RETENTION_DAYS = 36_500


def apply_retention(ch: ClickHouse, table: str, ts_column: str, days: int) -> None:
    """Keep `table`'s rows for `days` days after their `ts_column` (a DateTime or DateTime64), or forever (0): a
    table TTL, set or removed on every start, so a changed setting holds from the next start. Expired rows leave at
    merges (ClickHouse checks TTLs as it merges, and at OPTIMIZE … FINAL). Changing the TTL rewrites the table's
    parts once; an unchanged one is left alone. `table` and `ts_column` are our own names, never user input."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"retention must be 0 to {MAX_RETENTION_DAYS} days, got {days}")
    ttl = f"toDateTime({ts_column}) + toIntervalDay({days})"
    engine = ch.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
                      {"t": table})[0][0]
    if days and f" TTL {ttl} " not in f"{engine} ":
        ch.command(f"ALTER TABLE {table} MODIFY TTL {ttl}")
    elif not days and " TTL " in engine:
        ch.command(f"ALTER TABLE {table} REMOVE TTL")


def to_arrow(columns: list[str], rows: Rows) -> pa.Table:
    """The insert payload as an Arrow table; ClickHouse casts Arrow types to the table's (string -> UUID, ...)."""
    if isinstance(rows, Mapping):
        if list(rows) != list(columns):
            raise ValueError(f"column mapping keys {list(rows)} differ from columns {columns}")
        arrays = [v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v) for v in rows.values()]
    else:
        transposed = list(zip(*rows)) if rows else [[] for _ in columns]
        if len(transposed) != len(columns):
            raise ValueError(f"rows have {len(transposed)} values, columns are {columns}")
        arrays = [pa.array(list(col)) for col in transposed]
    return pa.Table.from_arrays(arrays, names=columns)


def _param_text(value: Any) -> str:
    """A parameter in ClickHouse's escaped text form, which is how server-side binding parses `{name:Type}`."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, uuid.UUID)):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; 'nan' and 'inf' parse as Float64
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, str):
        return (value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
                .replace("\r", "\\r").replace("\0", "\\0"))
    if isinstance(value, (list, tuple)):  # Array(T): elements quoted as in ClickHouse's text format
        def element(v: Any) -> str:
            if v is None:
                return "NULL"
            if isinstance(v, str):
                return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
            return _param_text(v)
        return "[" + ",".join(element(v) for v in value) + "]"
    raise TypeError(f"unsupported ClickHouse parameter type {type(value).__name__}")


class ChdbClickHouse:
    """Embedded chDB at `path`: `sessions` chdb Sessions on the one engine, each running one call at a time. The
    engine runs queries of different sessions in parallel (chDB 4), so a stream's read or an API query does not
    wait behind an insert, nor one projector's insert behind another's; a caller that needs several calls in an
    order makes them in that order itself (each projector inserts one group at a time). Eight: the telemetry
    projectors may hold five at once (the metrics one writes a group's points and cells together), and reads need
    the rest; a session costs ~1 MiB."""

    def __init__(self, path: Path, sessions: int = 8) -> None:
        from chdb.session import Session

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards `_open`
        self._open = [Session(str(self.path)) for _ in range(sessions)]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for session in self._open:
            self._free.put(session)

    def _run(self, sql: str, params: dict | None, fmt: str) -> Any:
        bound = {k: _param_text(v) for k, v in (params or {}).items()}
        session = self._free.get()
        try:
            if session is None:
                raise ClickHouseError("chDB session is closed")
            return session.query(sql, fmt, params=bound)
        except ClickHouseError:
            raise
        except Exception as e:
            raise ClickHouseError(str(e)) from e
        finally:
            self._free.put(session)

    def command(self, sql: str, params: dict | None = None) -> None:
        self._run(sql, params, "CSV")

    def query(self, sql: str, params: dict | None = None) -> list[tuple]:
        table = self._run(sql, params, "ArrowTable")
        return list(zip(*(col.to_pylist() for col in table.columns)))

    def insert(self, table: str, columns: list[str], rows: Rows, dedup_token: str | None = None,
               collapse: bool = True) -> None:
        # chDB's fastest insert path (faster than ArrowStream bytes via send_insert, bench/RESULTS.md): the
        # Python() table function reads the Arrow table in place, finding it by name in the calling frames.
        _trainyard_insert_rows = to_arrow(columns, rows)  # noqa: F841 (read by chDB's Python() table function)
        options = (["insert_deduplication_token = {token:String}",
                    "deduplicate_blocks_in_dependent_materialized_views = 1"] if dedup_token is not None else [])
        options += [] if collapse else ["optimize_on_insert = 0"]
        settings = " SETTINGS " + ", ".join(options) if options else ""
        cols = ", ".join(f"`{c}`" for c in columns)
        self._run(f"INSERT INTO {table} ({cols}){settings} SELECT * FROM Python(_trainyard_insert_rows)",
                  {"token": dedup_token} if dedup_token is not None else None, "CSV")

    def close(self) -> None:
        """Close every session once its call has ended; later calls raise ClickHouseError."""
        with self._lock:
            sessions, self._open = self._open, []
        for _ in sessions:
            session = self._free.get()
            if session is not None:
                session.close()
        for _ in sessions:
            self._free.put(None)  # a closed store: every later call finds no session


class HttpClickHouse:
    """A ClickHouse server through clickhouse-connect. Calls are serialized (one HTTP session per client)."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect

        self._lock = threading.Lock()
        self._client = clickhouse_connect.get_client(dsn=url, interface=urlparse(url).scheme)

    @classmethod
    def from_client(cls, client: Any) -> HttpClickHouse:
        """Wrap a ready clickhouse-connect client (tests use its embedded chDB interface: no server here)."""
        self = cls.__new__(cls)
        self._lock, self._client = threading.Lock(), client
        return self

    def command(self, sql: str, params: dict | None = None) -> None:
        with self._lock:
            self._wrap(self._client.command, sql, parameters=params or None)

    def query(self, sql: str, params: dict | None = None) -> list[tuple]:
        with self._lock:
            result = self._wrap(self._client.query, sql, parameters=params or {})
        return [tuple(r) for r in result.result_rows]

    def insert(self, table: str, columns: list[str], rows: Rows, dedup_token: str | None = None,
               collapse: bool = True) -> None:
        settings = ({"insert_deduplication_token": dedup_token, **VIEWS_RETRIED} if dedup_token is not None else {})
        if not collapse:
            settings["optimize_on_insert"] = 0
        data = to_arrow(columns, rows)  # the same Arrow payload and casts as the chDB driver
        with self._lock:
            self._wrap(self._client.insert_arrow, table, data, settings=settings)

    def close(self) -> None:
        with self._lock:
            self._client.close()

    @staticmethod
    def _wrap(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise ClickHouseError(str(e)) from e
