"""Training log lines in ClickHouse (`log_lines`): idempotent inserts, filtered reads in (attempt, seq) order.

A line is identified by (job_id, attempt, seq): the runner numbers the lines of an attempt as it captures them.
Idempotency as in metric_store.py: `insert_deduplication_token` drops a replayed insert whole, and the
ReplacingMergeTree key collapses any repeat the token missed (a batch regrouped with others, or replayed
outside the window); every query reads through FINAL, so duplicates are invisible before merges too.

`level` is stored as Python logging's number (domain/contract.py LOG_LEVELS), so "at least warning" is a range.
Text search (`q`) is a case-sensitive substring, passed as a bound parameter.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from domain.contract import LOG_LEVELS, LogBatch, LogLine
from infra.clickhouse import ClickHouse, apply_retention

TABLE = "log_lines"
COLUMNS = ["job_id", "attempt", "seq", "ts", "level", "stream", "message", "runner_id"]
LEVEL_NAMES = {n: name for name, n in LOG_LEVELS.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    job_id UUID, attempt UInt32, seq UInt64, ts DateTime64(3, 'UTC'), level UInt8,
    stream LowCardinality(String), message String, runner_id LowCardinality(String))
ENGINE = ReplacingMergeTree
ORDER BY (job_id, attempt, seq)
SETTINGS non_replicated_deduplication_window = 10000"""

_WHERE = """job_id = {job_id:UUID}
    AND ({attempt:Int64} < 0 OR attempt = {attempt:Int64})
    AND level >= {level:UInt8}
    AND ({since:Int64} < 0 OR ts >= fromUnixTimestamp64Milli({since:Int64}, 'UTC'))
    AND ({until:Int64} < 0 OR ts < fromUnixTimestamp64Milli({until:Int64}, 'UTC'))
    AND (attempt, seq) > ({after_attempt:UInt32}, {after_seq:Int64})
    AND position(message, {q:String}) > 0"""
_FIELDS = "attempt, seq, toUnixTimestamp64Milli(ts), level, stream, message, runner_id"
_HEAD = f"SELECT {_FIELDS} FROM {TABLE} FINAL WHERE {_WHERE} ORDER BY attempt, seq LIMIT {{limit:UInt64}}"
# The live streams' read: not FINAL (a third of the cost); a line stored twice comes back twice, adjacent, and
# `lines_after` drops the second copy.
_AFTER = (f"SELECT {_FIELDS} FROM {TABLE} WHERE job_id = {{job_id:UUID}} "
          "AND (attempt, seq) > ({after_attempt:UInt32}, {after_seq:Int64}) ORDER BY attempt, seq LIMIT {limit:UInt64}")
_TAIL = (f"SELECT * FROM (SELECT {_FIELDS} FROM {TABLE} FINAL WHERE {_WHERE} ORDER BY attempt DESC, seq DESC "
         "LIMIT {limit:UInt64}) ORDER BY attempt, seq")


@dataclass(frozen=True)
class StoredLine:
    attempt: int
    seq: int
    ts: datetime
    level: str
    stream: str
    message: str
    runner_id: str


@dataclass(frozen=True)
class LogQuery:
    """Which lines: of one attempt (None: all), at least `level`, at or after `since` and before `until`, holding
    `q`, after the line `after` ((attempt, seq)); the first `limit` of them, or with `tail` the last ones."""

    attempt: int | None = None
    level: str = "debug"
    since: datetime | None = None
    until: datetime | None = None
    q: str = ""
    after: tuple[int, int] | None = None
    limit: int = 1000
    tail: bool = False


def _ms(ts: datetime | None) -> int:
    if ts is None:
        return -1
    ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
    return max(0, round((ts - _EPOCH).total_seconds() * 1000))


def _stored(row: tuple) -> StoredLine:
    """A row of _FIELDS as a StoredLine."""
    attempt, seq, ts_ms, level, stream, message, runner_id = row
    return StoredLine(attempt, seq, _EPOCH + timedelta(milliseconds=ts_ms), LEVEL_NAMES.get(level, str(level)),
                      stream, message, runner_id)


def stored_line(batch: LogBatch, line: LogLine) -> StoredLine:
    """A line of a batch as it reads back once stored."""
    return StoredLine(batch.attempt, line.seq, _EPOCH + timedelta(milliseconds=line.ts_ms), line.level, line.stream,
                      line.message, batch.runner_id)


class LogStore:
    """Reads and writes `log_lines`; the same SQL on chDB and on a ClickHouse server. `retention_days` > 0: lines
    older than that leave (a TTL, set again at every start; 0: kept forever)."""

    def __init__(self, ch: ClickHouse, retention_days: int = 0) -> None:
        self.ch, self.retention_days = ch, retention_days

    def ensure_schema(self) -> None:
        self.ch.command(DDL)
        apply_retention(self.ch, TABLE, "ts", self.retention_days)

    def insert_batches(self, batches: Sequence[LogBatch], token: str) -> None:
        """Store batches in one insert. Idempotent: repeating any of them, alone or regrouped, changes no query
        result. `token` must be unique per insert content (the projector joins the batch ids)."""
        if not token:
            raise ValueError("token must be a non-empty string")
        rows = [(b, line) for b in batches for line in b.lines]
        if not rows:
            return
        columns = {
            "job_id": pa.array([str(b.job_id) for b, _ in rows], pa.string()),
            "attempt": pa.array([b.attempt for b, _ in rows], pa.uint32()),
            "seq": pa.array([line.seq for _, line in rows], pa.uint64()),
            "ts": pa.array([line.ts_ms for _, line in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "level": pa.array([LOG_LEVELS[line.level] for _, line in rows], pa.uint8()),
            "stream": pa.array([line.stream for _, line in rows], pa.string()),
            "message": pa.array([line.message for _, line in rows], pa.string()),
            "runner_id": pa.array([b.runner_id for b, _ in rows], pa.string()),
        }
        self.ch.insert(TABLE, COLUMNS, columns, dedup_token=token)

    def lines(self, job_id: str, query: LogQuery = LogQuery()) -> list[StoredLine]:
        """The job's lines that `query` selects, in (attempt, seq) order."""
        after_attempt, after_seq = query.after or (0, -1)
        params = {"job_id": job_id, "attempt": -1 if query.attempt is None else query.attempt,
                  "level": LOG_LEVELS[query.level], "since": _ms(query.since), "until": _ms(query.until),
                  "after_attempt": after_attempt, "after_seq": after_seq, "q": query.q, "limit": query.limit}
        rows = self.ch.query(_TAIL if query.tail else _HEAD, params)
        return [_stored(row) for row in rows]

    def lines_after(self, job_id: str, after: tuple[int, int] | None, limit: int) -> list[StoredLine]:
        """Every line after `after` ((attempt, seq); None: from the first), in order, at most `limit` rows read."""
        after_attempt, after_seq = after or (0, -1)
        rows = self.ch.query(_AFTER, {"job_id": job_id, "after_attempt": after_attempt, "after_seq": after_seq,
                                      "limit": limit})
        out: list[StoredLine] = []
        for row in rows:
            if not out or (out[-1].attempt, out[-1].seq) != row[:2]:
                out.append(_stored(row))
        return out

    def count(self, job_id: str) -> int:
        rows = self.ch.query(f"SELECT count() FROM {TABLE} FINAL WHERE job_id = {{job_id:UUID}}", {"job_id": job_id})
        return rows[0][0]
