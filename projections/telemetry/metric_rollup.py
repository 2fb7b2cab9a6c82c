"""The metric rollup: per series, cells of 2^level steps holding the first, last, minimum and maximum point of every
row ever inserted into the cell, so a downsampled read scans a few thousand cells instead of every point.

- `metric_rollup` (AggregatingMergeTree) holds cells at the levels in LEVELS (16, 256, 4096 and 65536 steps). Each
  point becomes four UInt256 keys (KEYS) whose min/max pick a cell's points, with the point packed in; min and max
  are deterministic and insensitive to repeats, so a replayed or regrouped batch changes no cell. Writers compute an
  insert's cells in numpy (`prepare`) and insert them through STAGE with the points; FILL computes the same cells
  in SQL from stored points (a rollup made for a table that already has points).
- A bucket of the downsample is a union of whole cells (`bucket_width`: widths are multiples of the cell size,
  buckets aligned at step 0), and min/max over the cells of a bucket are the bucket's points: the rollup read
  equals the raw read on `metric_points FINAL` exactly.
- That holds while the rollup saw only the versions FINAL shows. A point rewritten with another value or ts (the
  same key again; the latest ts wins in the raw table) leaves the older version in its cell, so the writer flags
  such a series (a `rewritten` row in the rollup) before inserting (`prepare`), and flagged series are read from
  the raw table.
  Retention is the other way rows leave the raw table: series with a point older than the metric retention are
  read raw too (metric_store.py). The check assumes one writer at a time per series (the metrics projector).
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from infra.clickhouse import ClickHouse

RAW = "metric_points"
ROLLUP = "metric_rollup"
LEVELS = (4, 8, 12, 16)
TOP = LEVELS[-1]
SERIES_KEY = "job_id = {job_id:UUID} AND name = {name:String} AND attempt = {attempt:UInt32}"

# KEYS: FIRST = step|value bits|ts (min: the first step), LAST (the same, max: the last step),
# LOW = vkey|step|ts (min: the minimum value, then the smallest step), HIGH = vkey|~step|ts (max: the maximum value,
# then the smallest step). `vkey` is an order-preserving UInt64 image of the Float64 (sign flipped; NaN above +inf,
# -NaN below -inf). Plain numeric min/max are fast and deterministic; argMin(step, value) is not (ties resolve by
# thread timing), and tuple arguments are 3-5x slower.
_VBITS = "reinterpretAsUInt64(value)"
_VKEY = f"if(bitTest({_VBITS}, 63), bitNot({_VBITS}), bitOr({_VBITS}, 9223372036854775808))"


def _pack(high: str, mid: str) -> str:
    return (f"bitOr(bitOr(bitShiftLeft(toUInt256({high}), 128), bitShiftLeft(toUInt256({mid}), 64)), "
            "toUInt256(reinterpretAsUInt64(toUnixTimestamp64Milli(ts))))")


KEYS = {"first": _pack("step", _VBITS), "last": _pack("step", _VBITS),
        "low": _pack(_VKEY, "step"), "high": _pack(_VKEY, "bitNot(step)")}
AGG = {"first": "min", "last": "max", "low": "min", "high": "max"}
# The bucket's four keys as hex text (the one form of a UInt256 both drivers return alike and cheaply).
HEX_KEYS = ", ".join(f"hex({AGG[k]}({{{k}}}))" for k in KEYS)

DDL = f"""CREATE TABLE IF NOT EXISTS {ROLLUP} (
    job_id UUID, name LowCardinality(String), attempt UInt32, level UInt8, cell UInt64,
    {", ".join(f"{k} SimpleAggregateFunction({a}, UInt256)" for k, a in AGG.items())},
    first_ts SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    rewritten SimpleAggregateFunction(max, UInt8))
ENGINE = AggregatingMergeTree
ORDER BY (job_id, name, attempt, level, cell)"""
# The flag of a rewritten series: a top-level row whose other columns mean nothing (the series is read raw), kept
# by retention as long as any (its last_ts is far ahead).
FLAG_COLUMNS = ["job_id", "name", "attempt", "level", "cell", "last_ts", "rewritten"]
FLAG_TS = datetime(2100, 1, 1, tzinfo=timezone.utc)  # DateTime ends in 2106
FILL_COLUMNS = f"job_id, name, attempt, level, cell, {', '.join(KEYS)}, first_ts, last_ts"
# Cells of the finest level first, then every level from those (a fraction of the rows to spread over the levels).
FILL = f"""
SELECT job_id, name, attempt, level, bitShiftRight(fine, level - {LEVELS[0]}) AS cell,
       {", ".join(f"{AGG[k]}(fine_{k}) AS {k}" for k in KEYS)}, min(fine_first_ts) AS first_ts,
       max(fine_last_ts) AS last_ts
FROM (SELECT job_id, name, attempt, bitShiftRight(step, {LEVELS[0]}) AS fine,
             {", ".join(f"{AGG[k]}({e}) AS fine_{k}" for k, e in KEYS.items())},
             min(ts) AS fine_first_ts, max(ts) AS fine_last_ts
      FROM {{source}} GROUP BY job_id, name, attempt, fine)
ARRAY JOIN {list(LEVELS)} AS level
GROUP BY job_id, name, attempt, level, cell"""
OLD_VIEW = f"{ROLLUP}_mv"  # the view that once computed cells from every inserted point (dropped: see STAGE)
# Writers compute each insert's cells at every level (`prepare`, numpy) and insert them into STAGE, a Null table (it
# keeps no rows) whose view only turns the keys' 32 little-endian bytes into UInt256: the same cells FILL makes from
# the points, without UInt256 arithmetic per point (a view over every point was most of an insert's cost).
STAGE = f"{ROLLUP}_in"
STAGE_COLUMNS = ["job_id", "name", "attempt", "level", "cell", *KEYS, "first_ms", "last_ms"]
STAGE_DDL = f"""CREATE TABLE IF NOT EXISTS {STAGE} (
    job_id UUID, name LowCardinality(String), attempt UInt32, level UInt8, cell UInt64,
    {", ".join(f"{k} FixedString(32)" for k in KEYS)}, first_ms Int64, last_ms Int64)
ENGINE = Null"""
STAGE_VIEW_DDL = f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {STAGE}_mv TO {ROLLUP} AS
SELECT job_id, name, attempt, level, cell, {", ".join(f"reinterpretAsUInt256({k}) AS {k}" for k in KEYS)},
       fromUnixTimestamp64Milli(first_ms, 'UTC') AS first_ts, fromUnixTimestamp64Milli(last_ms, 'UTC') AS last_ts
FROM {STAGE}"""
COMPLETE = "complete"  # the rollup's table comment once it holds every point inserted before its view

# The series of a job's names, per attempt: its first and last steps, its oldest ts, and whether it is flagged
# rewritten. One small read of the top level for any number of names (metric_store.py keeps what it read).
PLAN = f"""
SELECT name, attempt, hex(min(first)), hex(max(last)), toUnixTimestamp64Milli(min(first_ts)), max(rewritten)
FROM {ROLLUP}
WHERE job_id = {{job_id:UUID}} AND name IN {{names:Array(String)}} AND level = {TOP}
GROUP BY job_id, name, attempt"""
# Per bucket its keys, and a lower bound of its points: each cell holds one, two when some row of it (parts may
# not be merged yet) has a first and a last that differ.
DOWNSAMPLE = f"""
SELECT uniqExact(cell) + uniqExactIf(cell, bitShiftRight(first, 128) != bitShiftRight(last, 128)),
       {HEX_KEYS.format(**{k: k for k in KEYS})}
FROM {ROLLUP} WHERE {SERIES_KEY} AND level = {{level:UInt8}}
GROUP BY intDiv(cell, {{cells:UInt64}})"""
# How many distinct steps the first rows hold: more than max_points means "downsample" (no FINAL needed: only
# distinct steps count).
HEAD_STEPS = (f"SELECT uniqExact(step) FROM (SELECT step FROM {RAW} WHERE {SERIES_KEY} ORDER BY step "
              "LIMIT {head:UInt64})")
RAW_DOWNSAMPLE = f"""
SELECT {HEX_KEYS.format(**KEYS)}
FROM {RAW} FINAL WHERE {SERIES_KEY}
GROUP BY intDiv(step, {{width:UInt64}})"""
_TOPS = (f"SELECT toString(job_id), name, attempt, hex(max(last)) FROM {ROLLUP} "
         f"WHERE job_id IN {{jobs:Array(UUID)}} AND level = {TOP} GROUP BY job_id, name, attempt")
_STORED = (f"SELECT step, {_VBITS}, toUnixTimestamp64Milli(ts) FROM {RAW} "
           f"WHERE {SERIES_KEY} AND step BETWEEN {{lo:UInt64}} AND {{hi:UInt64}}")
_M64 = (1 << 64) - 1


def bucket_width(lo: int, hi: int, buckets: int) -> tuple[int, int]:
    """(level, width) for downsampling steps lo..hi into at most `buckets` buckets of `width` steps aligned at step 0
    (bucket = step // width). `width` is a multiple of 2^level, the coarsest rollup cell that is not wider than an
    even split of the span (level 0: no rollup level fits, read the raw points), so a bucket is a union of cells."""
    even = -(-(hi - lo + 1) // buckets)
    level = max((lv for lv in LEVELS if 1 << lv <= even), default=0)
    cell = 1 << level
    width = -(-even // cell) * cell
    while hi // width - lo // width + 1 > buckets:
        width += cell
    return level, width


def step_of(hex_key: str) -> int:
    return int(hex_key, 16) >> 128


def points(rows: list[tuple]) -> dict[int, tuple[int, int, int]]:
    """step -> (step, value bits, ts ms) of the buckets' points, from rows of four hex keys (FIRST, LAST, LOW,
    HIGH)."""
    out: dict[int, tuple[int, int, int]] = {}
    for row in rows:
        first, last, low, high = (int(h, 16) for h in row)
        for k in (first, last):
            out[k >> 128] = (k >> 128, (k >> 64) & _M64, _signed(k & _M64))
        for k, step in ((low, (low >> 64) & _M64), (high, ~(high >> 64) & _M64)):
            v = k >> 128
            out[step] = (step, v ^ (1 << 63) if v >> 63 else ~v & _M64, _signed(k & _M64))
    return out


def _signed(u: int) -> int:
    return u - (1 << 64) if u >> 63 else u


def prepare(ch: ClickHouse, keys: list[tuple[str, str, int]], series: np.ndarray, step: np.ndarray,
            bits: np.ndarray, ts: np.ndarray, known: Mapping[tuple[str, str, int], int]
            ) -> tuple[set[tuple[str, str, int]], dict[str, np.ndarray | list],
                       dict[tuple[str, str, int], tuple[int, int, int]]]:
    """What an insert of these points needs besides the points: the series it rewrites, its cells, and each
    series' span: (its first step in these points, its last step once they are in (what `known` should say after
    the insert), the oldest ts of these points).

    Points are columns sorted by (series, step): `series[i]` indexes `keys` ((job_id, name, attempt)), `step`, `bits`
    (the value's Float64 bits as UInt64) and `ts` (Unix ms). `known`: the last step the rollup holds of series the
    caller has written (a cache: the rollup is asked only about the others). Returns
    - the series in which the points give a step another value or ts than it already has: against the points
      themselves, and against the stored points wherever they reach back to steps the rollup has seen (a replay or a
      late point; repeats of identical points are not rewrites);
    - the cells of the points at every level, as columns of STAGE. Per cell: the first and last point in step
      order and the points of its minimum and maximum value (the smallest step among equals), what KEYS' min/max
      pick, since in a series that is not rewritten a step has one value and ts. Cells of a rewritten series are
      read raw, so their ties do not matter.
    Sorted numpy columns: a few ms per 100,000 points."""
    n = len(step)
    new_series = np.ones(n, bool)
    new_series[1:] = series[1:] != series[:-1]
    found: set[tuple[str, str, int]] = set()
    again = ~new_series[1:] & (step[1:] == step[:-1]) & ((bits[1:] != bits[:-1]) | (ts[1:] != ts[:-1]))
    found |= {keys[series[i + 1]] for i in np.flatnonzero(again)}
    starts = np.flatnonzero(new_series)
    seen = {k: known[k] for k in keys if k in known}
    if len(seen) < len(keys):
        unknown = sorted({k[0] for k in keys if k not in seen})
        seen.update({(j, nm, a): step_of(h) for j, nm, a, h in ch.query(_TOPS, {"jobs": unknown})
                     if (j, nm, a) not in seen})
    ends = np.r_[starts[1:], n] - 1
    last = {keys[series[i]]: max(int(step[e]), seen.get(keys[series[i]], -1)) for i, e in zip(starts, ends)}
    for k, i in enumerate(starts):
        key, lo = keys[series[i]], int(step[i])
        hi = seen.get(key)
        if hi is None or lo > hi or key in found:
            continue
        end = int(starts[k + 1]) if k + 1 < len(starts) else n
        mine = {int(s): (int(b), int(t)) for s, b, t in zip(step[i:end], bits[i:end], ts[i:end])}
        stored = ch.query(_STORED, {"job_id": key[0], "name": key[1], "attempt": key[2], "lo": lo, "hi": hi})
        if any(s in mine and mine[s] != (b, t) for s, b, t in stored):
            found.add(key)
    # Each level's cells from the level below (the points, then the cells of the level before): the rows are in
    # (series, step) order, and each holds four points (first, last, low, high) as columns (step, bits, ts).
    vkey = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    point = (step, bits, ts, vkey)
    held = {"series": series, "first": point, "last": point, "low": point, "high": point, "min_ms": ts, "max_ms": ts}
    out: dict[str, list] = {c: [] for c in STAGE_COLUMNS}
    for level in LEVELS:
        cell = held["first"][0] >> np.uint64(level)
        cut = np.ones(len(cell), bool)
        cut[1:] = (held["series"][1:] != held["series"][:-1]) | (cell[1:] != cell[:-1])
        first = np.flatnonzero(cut)
        group = np.cumsum(cut) - 1

        def first_where(match: np.ndarray) -> np.ndarray:
            rows = np.flatnonzero(match)
            return rows[np.r_[True, group[rows][1:] != group[rows][:-1]]]

        lo_v, hi_v = held["low"][3], held["high"][3]
        rows = {"first": first, "last": np.r_[first[1:], len(cell)] - 1,
                "low": first_where(lo_v == np.minimum.reduceat(lo_v, first)[group]),
                "high": first_where(hi_v == np.maximum.reduceat(hi_v, first)[group])}
        held = {"series": held["series"][first], **{k: tuple(c[r] for c in held[k]) for k, r in rows.items()},
                "min_ms": np.minimum.reduceat(held["min_ms"], first),
                "max_ms": np.maximum.reduceat(held["max_ms"], first)}
        owner = held["series"]
        out["job_id"] += [keys[c][0] for c in owner]
        out["name"] += [keys[c][1] for c in owner]
        out["attempt"].append(np.fromiter((keys[c][2] for c in owner), np.uint32, len(owner)))
        out["level"].append(np.full(len(owner), level, np.uint8))
        out["cell"].append(cell[first])
        for k in KEYS:
            out[k].append(_packed(k, *held[k]))
        out["first_ms"].append(held["min_ms"])
        out["last_ms"].append(held["max_ms"])
    def column(c: str) -> np.ndarray | list | pa.Array:
        if c in KEYS:
            data = b"".join(out[c])
            return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(data) // 32, [None, pa.py_buffer(data)])
        return out[c] if c in ("job_id", "name") else np.concatenate(out[c])
    spans = {keys[series[i]]: (int(step[i]), int(last[keys[series[i]]]), int(t))
             for i, t in zip(starts, np.minimum.reduceat(ts, starts))}
    return found, {c: column(c) for c in STAGE_COLUMNS}, spans


def _packed(key: str, step: np.ndarray, bits: np.ndarray, ts: np.ndarray, vkey: np.ndarray) -> bytes:
    """KEYS[key] of each point as the 32 little-endian bytes of its UInt256: (high, mid, ts) in 64-bit words."""
    high, mid = {"first": (step, bits), "last": (step, bits), "low": (vkey, step), "high": (vkey, ~step)}[key]
    words = np.zeros((len(step), 4), "<u8")
    words[:, 0], words[:, 1], words[:, 2] = ts.view(np.uint64), mid, high
    return words.tobytes()
