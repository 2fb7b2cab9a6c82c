"""Training metric time series in ClickHouse (`metric_points`): idempotent inserts, downsampled reads.

A point is identified by (job_id, name, attempt, step). Idempotency (design decision 3), two layers:
- each insert carries `insert_deduplication_token` = batch_id, so a replayed batch inside the table's
  deduplication window (10,000 inserts) is dropped whole;
- the ReplacingMergeTree key collapses any repeat the token missed, and every query reads through FINAL,
  so duplicates are invisible before merges too. If one key is written with different values, the point
  with the latest ts wins (equal ts: the last written, as ClickHouse merges do).
Measured on the 1M-point downsample (2 cores): FINAL ~40 ms vs GROUP BY step + argMax ~80 ms.

Downsampling is done in SQL: the steps are cut into at most `max_points // 4` buckets of equal width, aligned at
step 0 (bucket = step // width; the width is a multiple of a rollup cell, see metric_rollup.bucket_width), and
each bucket contributes its first, last, minimum and maximum point (ties: the smallest step), so the result has at
most `max_points` points and always holds the series' first, last, minimum and maximum points.
NaN values order above +inf (-NaN below -inf). A series of at most `max_points` points comes back whole.

Attempts: each run of a job has its own series (`attempt=`). Without one, a read gives the job's merged series:
each attempt's points below the first step of any later attempt, and the latest attempt's in full
(`merged_segments`). An attempt resumed from a checkpoint at step k logs from k + 1, so the merged series is the
earlier attempt's steps up to k, then the resumed one's, with no step twice; an attempt that started over hides its
predecessors' points entirely (the latest attempt's series, as before resumes existed).

Reads go through the rollup (metric_rollup.py: cells of 16 to 65536 steps written with the points), which
answers exactly what the raw read on `metric_points FINAL` answers, in a few thousand cells: the plan (each
attempt's span, from the rollup's top level, kept by SeriesPlans as the writer adds points) picks the attempt and
the width, and one query reads the buckets (bench/RESULTS.md, issue 18). Series the rollup cannot
answer exactly (a rewritten point, points past the retention), short ones and merged series of several attempts (a
cell may straddle an attempt's cut) are read raw.
"""
from __future__ import annotations

import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import numpy as np
import pyarrow as pa

from infra.clickhouse import ClickHouse, apply_retention
from projections.telemetry import metric_rollup as rollup

TABLE = "metric_points"
COLUMNS = ["job_id", "attempt", "name", "step", "value", "ts"]
MIN_POINTS = 4
KNOWN_SERIES = 100_000  # series whose last step a store remembers
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NO_CUT = 2**64 - 1  # the latest attempt's cut: all of its steps

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    job_id UUID, attempt UInt32, name LowCardinality(String), step UInt64, value Float64,
    ts DateTime64(3, 'UTC'))
ENGINE = ReplacingMergeTree(ts)
ORDER BY (job_id, name, attempt, step)
SETTINGS non_replicated_deduplication_window = 10000"""

_SERIES_KEY = "job_id = {job_id:UUID} AND name = {name:String} AND attempt = {attempt:UInt32}"
_ATTEMPT_OF_NAME = (f"SELECT attempt FROM {TABLE} WHERE job_id = {{job_id:UUID}} AND name = {{name:String}} "
                    "ORDER BY attempt DESC LIMIT 1")
_LAST_STEP = f"SELECT step FROM {TABLE} WHERE {_SERIES_KEY} ORDER BY step DESC LIMIT 1"
# Up to max_points + 1 points in step order: more than max_points means "downsample".
_HEAD = (f"SELECT step, value, toUnixTimestamp64Milli(ts) FROM {TABLE} FINAL WHERE {_SERIES_KEY} "
         "ORDER BY step LIMIT {limit:UInt64}")
_FIRST_STEPS = (f"SELECT attempt, min(step) FROM {TABLE} WHERE job_id = {{job_id:UUID}} AND name = {{name:String}} "
                "GROUP BY attempt")
# A merged series (`merged_segments`): the points of `attempts` below their `cuts`.
_MERGED_KEY = ("job_id = {job_id:UUID} AND name = {name:String} AND has({attempts:Array(UInt32)}, attempt) "
               "AND step < arrayElement({cuts:Array(UInt64)}, indexOf({attempts:Array(UInt32)}, attempt))")
_MERGED_HEAD = (f"SELECT step, value, toUnixTimestamp64Milli(ts) FROM {TABLE} FINAL WHERE {_MERGED_KEY} "
                "ORDER BY step LIMIT {limit:UInt64}")
_MERGED_LAST = f"SELECT max(step) FROM {TABLE} WHERE {_MERGED_KEY}"
_MERGED_DOWNSAMPLE = (f"SELECT {rollup.HEX_KEYS.format(**rollup.KEYS)} FROM {TABLE} FINAL WHERE {_MERGED_KEY} "
                      "GROUP BY intDiv(step, {width:UInt64})")
# Latest point per name; attempt < 0: each name's latest attempt. Key (attempt, step) packed as UInt128.
_LAST_VALUES = f"""
SELECT name, argMax(step, k), argMax(value, k) FROM (
    SELECT name, step, value, bitOr(bitShiftLeft(toUInt128(attempt), 64), step) AS k
    FROM {TABLE} FINAL
    WHERE job_id = {{job_id:UUID}} AND ({{attempt:Int64}} < 0 OR attempt = {{attempt:Int64}}))
GROUP BY name ORDER BY name"""


@dataclass(frozen=True)
class MetricPoint:
    """One value of a named metric at a training step of one attempt of a job. `ts` is UTC (naive = UTC)."""

    job_id: str
    attempt: int
    name: str
    step: int
    value: float
    ts: datetime


@dataclass
class MetricColumns:
    """Points as columns: chunks of steps, values and ts_ms (milliseconds since the Unix epoch, UTC), each a
    sequence or a numpy array (a packed SeriesChunk's), and `runs` saying whose they are: (job id, attempt, name,
    how many points) for consecutive points. Runs, because a batch is a few series of many points, and building a
    text column point by point cost more than the insert."""

    runs: list[tuple[str, int, str, int]] = field(default_factory=list)
    chunks: list[tuple[Sequence[int], Sequence[float], Sequence[int]]] = field(default_factory=list)
    size: int = 0

    def extend(self, job_id: str, attempt: int, name: str, steps: Sequence[int], values: Sequence[float],
               ts_ms: Sequence[int]) -> None:
        """Add points of one series (steps, values and ts_ms of the same length)."""
        if self.runs and self.runs[-1][:3] == (job_id, attempt, name):
            self.runs[-1] = (job_id, attempt, name, self.runs[-1][3] + len(steps))
        else:
            self.runs.append((job_id, attempt, name, len(steps)))
        self.chunks.append((steps, values, ts_ms))
        self.size += len(steps)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """step (uint64), value (float64) and ts_ms (int64), one entry per point."""
        def column(i: int, dtype: type) -> np.ndarray:
            return np.concatenate([np.asarray(c[i], dtype) for c in self.chunks] or [np.empty(0, dtype)])
        return column(0, np.uint64), column(1, np.float64), column(2, np.int64)

    def series(self) -> tuple[list[tuple[str, str, int]], np.ndarray]:
        """The distinct series (job_id, name, attempt) in the table's key order, and per point the index of its
        own: points sorted by (index, step) are in `metric_points`' order, which ClickHouse then need not sort."""
        keys = sorted({(j, n, a) for j, a, n, _ in self.runs}, key=_key_order)
        index = {k: i for i, k in enumerate(keys)}
        codes = np.fromiter((index[(j, n, a)] for j, a, n, _ in self.runs), np.int64, len(self.runs))
        counts = np.fromiter((n for *_, n in self.runs), np.int64, len(self.runs))
        return keys, np.repeat(codes, counts)


def _key_order(key: tuple[str, str, int]) -> tuple[bytes, bytes, str, int]:
    """(job_id, name, attempt) as ClickHouse orders them: a UUID by its last 8 bytes, then its first 8; a string by
    its UTF-8 bytes (what code point order gives). Only speed depends on it: unsorted rows are sorted at insert."""
    raw = UUID(key[0]).bytes
    return raw[8:], raw[:8], key[1], key[2]


def _text(values: list[str], codes: np.ndarray) -> pa.Array:
    """values[codes[i]] for each i, as a string column expanded by pyarrow from a dictionary."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values, pa.string())).cast(
        pa.string())


@dataclass(frozen=True)
class PreparedInsert:
    """An insert ready to write: the series it flags as rewritten, its rollup cells and its points as columns."""

    flagged: set[tuple[str, str, int]]
    cells: dict[str, Any]
    points: dict[str, pa.Array]
    spans: dict[tuple[str, str, int], tuple[int, int, int]]  # what SeriesPlans learns once it is written


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def _ts(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _check(max_points: int) -> None:
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}, got {max_points}")


def _series(points: dict[int, tuple[int, int, int]]) -> list[tuple[int, float, datetime]]:
    if not points:
        return []
    steps, bits, ts = zip(*sorted(points.values()))
    values = struct.unpack(f"<{len(bits)}d", struct.pack(f"<{len(bits)}Q", *bits))  # the bits as Float64, at once
    return [(s, v, _ts(t)) for s, v, t in zip(steps, values, ts)]


def merged_segments(first_steps: dict[int, int]) -> list[tuple[int, int]]:
    """What a job's merged series shows, from each attempt's first step: (attempt, cut) in attempt order, meaning
    that attempt's points with step < cut. An attempt's cut is the first step of any later attempt (the latest has
    none: all its points); attempts with no point below their cut are left out, so the latest is always there."""
    out, cut = [], _NO_CUT
    for attempt in sorted(first_steps, reverse=True):
        if first_steps[attempt] < cut:
            out.append((attempt, cut))
        cut = min(cut, first_steps[attempt])
    return out[::-1]


class SeriesPlans:
    """What PLAN reads, kept: per (job_id, name), each attempt's [first step, last step, oldest ts ms, rewritten],
    so a read the rollup answers is one query (DOWNSAMPLE), not two. Shared by the stores over one ClickHouse
    object (`of`): the writer updates the series it writes once they are stored, and a plan read from the rollup is
    kept only if no write of that series ended while it was read. Right while this process is the series' one
    writer, as the rollup assumes (metric_rollup.py); a plan that no write here updates is read again after
    `FRESH_S`, so another writer's points show within that."""

    FRESH_S = 10.0
    _by_store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _by_store_lock = threading.Lock()

    def __init__(self, limit: int = KNOWN_SERIES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._plans: OrderedDict[tuple[str, str], tuple[float, dict[int, list[int]]]] = OrderedDict()
        self._written: OrderedDict[tuple[str, str], int] = OrderedDict()  # the generation of its latest write
        self._generation = 0

    @classmethod
    def of(cls, ch: ClickHouse) -> "SeriesPlans":
        with cls._by_store_lock:
            plans = cls._by_store.get(ch)
            if plans is None:
                plans = cls._by_store[ch] = cls()
            return plans

    def read(self, ch: ClickHouse, job_id: str, names: Sequence[str]) -> dict[str, dict[int, list[int]]]:
        """name -> {attempt: [first, last, oldest ts ms, rewritten]} (empty: no points) for each of `names`."""
        now = time.monotonic()
        found: dict[str, dict[int, list[int]]] = {}
        with self._lock:
            generation = self._generation
            for name in names:
                kept = self._plans.get((job_id, name))
                if kept is not None and now - kept[0] < self.FRESH_S:
                    found[name] = {a: list(v) for a, v in kept[1].items()}
        missing = [n for n in names if n not in found]
        if not missing:
            return found
        read: dict[str, dict[int, list[int]]] = {n: {} for n in missing}
        for name, attempt, first, last, oldest, rewritten in ch.query(rollup.PLAN, {"job_id": job_id,
                                                                                    "names": missing}):
            read[name][attempt] = [rollup.step_of(first), rollup.step_of(last), oldest, rewritten]
        with self._lock:
            for name, plan in read.items():
                key = (job_id, name)
                if self._written.get(key, -1) <= generation:  # no write of it ended while PLAN ran
                    self._plans[key] = (now, {a: list(v) for a, v in plan.items()})
                    self._plans.move_to_end(key)
            self._bound(self._plans)
        return {**found, **read}

    def wrote(self, spans: dict[tuple[str, str, int], tuple[int, int, int]], flagged: set) -> None:
        """These series' points (first step, last step, oldest ts of the insert) are stored."""
        with self._lock:
            self._generation += 1
            now = time.monotonic()
            for (job_id, name, attempt), (first, last, oldest) in spans.items():
                key = (job_id, name)
                self._written[key] = self._generation
                self._written.move_to_end(key)
                kept = self._plans.get(key)
                if kept is None:
                    continue
                span = kept[1].setdefault(attempt, [first, last, oldest, 0])
                span[0], span[1], span[2] = min(span[0], first), max(span[1], last), min(span[2], oldest)
                if (job_id, name, attempt) in flagged:
                    span[3] = 1
                self._plans[key] = (now, kept[1])
            self._bound(self._written)

    def forget(self, spans: dict[tuple[str, str, int], Any]) -> None:
        """A write of these series failed: what is stored of them is unknown until read again."""
        with self._lock:
            self._generation += 1
            for job_id, name, _ in spans:
                self._plans.pop((job_id, name), None)
                self._written[(job_id, name)] = self._generation
            self._bound(self._written)

    def _bound(self, table: OrderedDict) -> None:
        while len(table) > self.limit:
            table.popitem(last=False)


class MetricStore:
    """Reads and writes `metric_points` and its rollup; the same SQL on chDB and on a ClickHouse server.
    `retention_days` > 0: the metric retention (settings), under which series with older points are read raw."""

    def __init__(self, ch: ClickHouse, retention_days: int = 0) -> None:
        self.ch = ch
        self.retention_days = retention_days
        # The last step written of recently written series: an insert that continues them needs no look at the
        # rollup (metric_rollup.prepare). Right while this store is the series' one writer, as the rollup assumes.
        self._last_step: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._lock = threading.Lock()
        self._cells_pool: ThreadPoolExecutor | None = None  # a write's rollup cells go in beside its points
        self.plans = SeriesPlans.of(ch)

    def ensure_schema(self) -> None:
        """Create the tables and the rollup's view; fill the rollup from the raw points until that has once run to
        its end (a rollup made for an existing table, or a fill cut short: repeats are harmless); apply the
        retention."""
        self.ch.command(DDL)
        # Tables made before the batch id left the rows (it is the insert's deduplication token only; a column of
        # 36 characters a point cost half the insert).
        self.ch.command(f"ALTER TABLE {TABLE} DROP COLUMN IF EXISTS batch_id")
        self.ch.command(rollup.DDL)
        self.ch.command(f"DROP VIEW IF EXISTS {rollup.OLD_VIEW}")
        self.ch.command(rollup.STAGE_DDL)
        self.ch.command(rollup.STAGE_VIEW_DDL)
        comment = self.ch.query("SELECT comment FROM system.tables WHERE database = currentDatabase() "
                                "AND name = {t:String}", {"t": rollup.ROLLUP})
        if comment != [(rollup.COMPLETE,)]:
            self.ch.command(f"INSERT INTO {rollup.ROLLUP} ({rollup.FILL_COLUMNS}) " + rollup.FILL.format(source=f"{TABLE} FINAL")
                            + " SETTINGS insert_deduplicate = 0")
            self.ch.command(f"ALTER TABLE {rollup.ROLLUP} MODIFY COMMENT '{rollup.COMPLETE}'")
        apply_retention(self.ch, TABLE, "ts", self.retention_days)
        apply_retention(self.ch, rollup.ROLLUP, "last_ts", self.retention_days)  # a cell goes with its last point

    def insert(self, points: Sequence[MetricPoint], batch_id: str) -> None:
        """Store a batch. Idempotent: repeating a batch (same batch_id, same points) changes no query result.
        `batch_id` must be unique per batch content across all jobs (it is the deduplication token)."""
        cols = MetricColumns()
        for p in points:
            cols.extend(p.job_id, p.attempt, p.name, [p.step], [p.value],
                        [round((_utc(p.ts) - _EPOCH).total_seconds() * 1000)])
        self.insert_columns(cols, batch_id)

    def insert_columns(self, cols: MetricColumns, token: str) -> None:
        """The fast path (the projector's): points as columns; same idempotency as `insert`. Series in which the
        batch rewrites a point are flagged first (metric_rollup.py)."""
        if not token:
            raise ValueError("batch_id must be a non-empty string")
        self.write(self.prepare(cols), token)

    def prepare(self, cols: MetricColumns) -> PreparedInsert | None:
        """The CPU work of inserting `cols` (None: nothing to insert), which `write` then stores: the projector
        prepares a group while the one before it is written. The store remembers each series' last step from here
        on, so a group prepared before the one before it is written checks against it too; if that write fails, a
        later batch reaching back into its steps is checked against the stored points, which is right either way."""
        if cols.size == 0:
            return None
        keys, series = cols.series()
        step, values, ts = cols.columns()
        order = np.lexsort((step, series))  # the table's order (MetricColumns.series), which the rollup needs too
        series, step, values, ts = series[order], step[order], values[order], ts[order]
        bits = values.view(np.uint64)
        with self._lock:
            known = {k: self._last_step[k] for k in keys if k in self._last_step}
        flagged, cells, spans = rollup.prepare(self.ch, keys, series, step, bits, ts, known)
        with self._lock:
            for key, (_, step_, _) in spans.items():
                self._last_step[key] = step_
                self._last_step.move_to_end(key)
            while len(self._last_step) > KNOWN_SERIES:
                self._last_step.popitem(last=False)
        return PreparedInsert(flagged, cells, {
            "job_id": _text([k[0] for k in keys], series), "attempt": pa.array(np.array([k[2] for k in keys],
                                                                                       np.uint32)[series]),
            "name": _text([k[1] for k in keys], series), "step": pa.array(step), "value": pa.array(values),
            "ts": pa.array(ts).cast(pa.timestamp("ms", tz="UTC"))}, spans)

    def write(self, prepared: PreparedInsert | None, token: str) -> None:
        """Store what `prepare` made, under the deduplication token `token`."""
        if prepared is None:
            return
        try:
            if prepared.flagged:
                self.ch.insert(rollup.ROLLUP, rollup.FLAG_COLUMNS,
                               [(j, n, a, rollup.TOP, 0, rollup.FLAG_TS, 1) for j, n, a in sorted(prepared.flagged)])
            # The cells and the points go in at once (two chDB sessions; each insert is mostly a fixed cost that
            # does not use a whole core), and the write returns once both are in: the projector acks only then, so
            # a job's points are queryable by either path when it shows completed. Reads meanwhile see what the
            # plans say (updated below, after both). A failure of either redelivers the batch: the points'
            # token drops a repeat of those that landed, and cells are min/max, so repeating them changes nothing.
            # Both tables are read only through FINAL or GROUP BY: nothing to collapse at insert.
            cells = self._cells_writer().submit(self.ch.insert, rollup.STAGE, rollup.STAGE_COLUMNS, prepared.cells,
                                                collapse=False)
            try:
                self.ch.insert(TABLE, COLUMNS, prepared.points, dedup_token=token, collapse=False)
            finally:
                cells.result()  # waits for it either way, and raises its failure
        except BaseException:
            self.plans.forget(prepared.spans)
            raise
        self.plans.wrote(prepared.spans, prepared.flagged)

    def _cells_writer(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._cells_pool is None:
                self._cells_pool = ThreadPoolExecutor(1, thread_name_prefix="metric-cells")
            return self._cells_pool

    def names(self, job_id: str) -> list[str]:
        """Sorted metric names of the job, over all attempts."""
        rows = self.ch.query(f"SELECT DISTINCT name FROM {TABLE} WHERE job_id = {{job_id:UUID}} ORDER BY name",
                             {"job_id": job_id})
        return [r[0] for r in rows]

    def latest_attempt(self, job_id: str) -> int | None:
        """The highest attempt with any point, None when the job has none."""
        rows = self.ch.query(f"SELECT max(attempt) FROM {TABLE} WHERE job_id = {{job_id:UUID}} HAVING count() > 0",
                             {"job_id": job_id})
        return rows[0][0] if rows else None

    def count(self, job_id: str, attempt: int | None = None) -> int:
        """Distinct points of the job (all names; all attempts, or one)."""
        rows = self.ch.query(f"SELECT count() FROM {TABLE} FINAL WHERE job_id = {{job_id:UUID}} "
                             "AND ({attempt:Int64} < 0 OR attempt = {attempt:Int64})",
                             {"job_id": job_id, "attempt": -1 if attempt is None else attempt})
        return rows[0][0]

    def attempt_of(self, job_id: str, name: str) -> int | None:
        """The latest attempt with points for `name` (the last in its merged series); None if there is none."""
        rows = self.ch.query(_ATTEMPT_OF_NAME, {"job_id": job_id, "name": name})
        return rows[0][0] if rows else None

    def series(self, job_id: str, name: str, max_points: int = 1000,
               attempt: int | None = None, rollup_reads: bool = True) -> list[tuple[int, float, datetime]]:
        """(step, value, ts) in step order, at most `max_points` of them (see the module doc for which);
        attempt None: the job's merged series (see the module doc). Unknown job/name: []. `rollup_reads` False reads
        the raw points only: the same answer, slower (what tests and the bench compare the rollup with)."""
        if not rollup_reads:
            _check(max_points)
            return self._raw_series(job_id, name, max_points, attempt)[1]
        found = self.series_of(job_id, [name], max_points, attempt)
        return found[name][1] if name in found else []

    def series_of(self, job_id: str, names: Sequence[str], max_points: int = 1000,
                  attempt: int | None = None) -> dict[str, tuple[int, list[tuple[int, float, datetime]]]]:
        """name -> (attempt, points as `series` gives them) for each of `names` that has points (in that attempt;
        None: each name's merged series, and the latest attempt in it). The plans are kept (SeriesPlans: one query
        for those that are not), then one query a series the rollup answers, more for the others."""
        _check(max_points)
        plans = {name: sorted(((a, *span) for a, span in plan.items() if attempt is None or a == attempt),
                              reverse=True)  # the latest attempt first
                 for name, plan in self.plans.read(self.ch, job_id, list(dict.fromkeys(names))).items()}
        found = {}
        for name in dict.fromkeys(names):
            plan = plans.get(name)
            if not plan or any(p[4] for p in plan):  # none, or flagged (its first steps are not to be trusted)
                at, points = self._raw_series(job_id, name, max_points, attempt)
            elif len(segments := merged_segments({p[0]: p[1] for p in plan})) > 1:
                at, points = plan[0][0], self._merged_series(job_id, name, max_points, segments)
            else:
                at, points = self._planned(job_id, name, max_points, plan[0])
            if at is not None:
                found[name] = (at, points)
        return found

    def _merged_series(self, job_id: str, name: str, max_points: int,
                       segments: list[tuple[int, int]]) -> list[tuple[int, float, datetime]]:
        """The points of several attempts' segments (`merged_segments`), downsampled as one series, from the raw
        points (a rollup cell may straddle a cut)."""
        key = {"job_id": job_id, "name": name, "attempts": [a for a, _ in segments], "cuts": [c for _, c in segments]}
        head = self.ch.query(_MERGED_HEAD, {**key, "limit": max_points + 1})
        if len(head) <= max_points:
            return [(s, v, _ts(t)) for s, v, t in head]
        _, width = rollup.bucket_width(head[0][0], self.ch.query(_MERGED_LAST, key)[0][0], max_points // 4)
        return _series(rollup.points(self.ch.query(_MERGED_DOWNSAMPLE, {**key, "width": width})))

    def _planned(self, job_id: str, name: str, max_points: int,
                 plan: tuple) -> tuple[int | None, list[tuple[int, float, datetime]]]:
        attempt, first, last = plan[0], plan[1], plan[2]
        level, width = rollup.bucket_width(first, last, max_points // 4)
        if plan[4] or self._expiring(plan[3]) or level == 0 or last - first < max_points:
            return self._raw_series(job_id, name, max_points, attempt)  # see the module doc; or few points
        key = {"job_id": job_id, "name": name, "attempt": attempt}
        rows = self.ch.query(rollup.DOWNSAMPLE, {**key, "level": level, "cells": width >> level})
        if (not rows or sum(r[0] for r in rows) <= max_points  # maybe max_points points or fewer, over a wide span
                and self.ch.query(rollup.HEAD_STEPS, {**key, "head": 2 * max_points + 2})[0][0] <= max_points):
            return self._raw_series(job_id, name, max_points, attempt)
        return attempt, _series(rollup.points([r[1:] for r in rows]))

    def _expiring(self, first_ts_ms: int) -> bool:
        """Whether retention may have removed some of a series' points from the raw table (not from its cells)."""
        cutoff = datetime.now(timezone.utc) - timedelta(days=self.retention_days)
        return self.retention_days > 0 and _ts(first_ts_ms) < cutoff

    def _raw_series(self, job_id: str, name: str, max_points: int,
                    attempt: int | None) -> tuple[int | None, list[tuple[int, float, datetime]]]:
        if attempt is None:
            firsts = dict(self.ch.query(_FIRST_STEPS, {"job_id": job_id, "name": name}))
            if not firsts:
                return None, []
            if len(segments := merged_segments(firsts)) > 1:
                return max(firsts), self._merged_series(job_id, name, max_points, segments)
            attempt = max(firsts)
        key = {"job_id": job_id, "name": name, "attempt": attempt}
        head = self.ch.query(_HEAD, {**key, "limit": max_points + 1})
        if not head:
            return None, []
        if len(head) <= max_points:
            return attempt, [(s, v, _ts(t)) for s, v, t in head]
        _, width = rollup.bucket_width(head[0][0], self.ch.query(_LAST_STEP, key)[0][0], max_points // 4)
        return attempt, _series(rollup.points(self.ch.query(rollup.RAW_DOWNSAMPLE, {**key, "width": width})))

    def last_values(self, job_id: str, attempt: int | None = None) -> dict[str, tuple[int, float]]:
        """name -> (step, value) of its latest point; attempt None: each name's latest attempt."""
        rows = self.ch.query(_LAST_VALUES, {"job_id": job_id, "attempt": -1 if attempt is None else attempt})
        return {name: (step, value) for name, step, value in rows}
