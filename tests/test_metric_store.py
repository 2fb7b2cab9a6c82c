"""MetricStore on real chDB (the session-scoped `clickhouse` fixture of conftest.py); tests isolate by job id."""
from __future__ import annotations

import math
import struct
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from projections.telemetry import metric_rollup as rollup
from projections.telemetry.metric_store import MetricColumns, MetricPoint, MetricStore, merged_segments

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(clickhouse) -> MetricStore:
    s = MetricStore(clickhouse)
    s.ensure_schema()
    s.ensure_schema()  # idempotent
    return s


def new_job() -> str:
    return str(uuid.uuid4())


def pt(job: str, name: str, step: int, value: float, attempt: int = 1, ms: int | None = None) -> MetricPoint:
    return MetricPoint(job, attempt, name, step, value, T0 + timedelta(milliseconds=step if ms is None else ms))


def test_insert_names_series(store: MetricStore) -> None:
    job = new_job()
    steps = [5, 1, 3, 2, 4]
    store.insert([pt(job, "loss", s, 1.0 / s) for s in steps], batch_id=f"{job}-a")
    store.insert([pt(job, "acc", s, s / 10) for s in steps[:3]], batch_id=f"{job}-b")

    assert store.names(job) == ["acc", "loss"]
    assert store.latest_attempt(job) == 1
    assert store.count(job) == 8
    assert store.series(job, "loss") == [(s, 1.0 / s, T0 + timedelta(milliseconds=s)) for s in range(1, 6)]
    assert [s for s, _, _ in store.series(job, "acc")] == [1, 3, 5]
    assert store.last_values(job) == {"acc": (5, 0.5), "loss": (5, 0.2)}
    assert all(ts.tzinfo is not None for _, _, ts in store.series(job, "loss"))


def test_unknown_job_and_validation(store: MetricStore) -> None:
    job = new_job()
    assert store.names(job) == []
    assert store.latest_attempt(job) is None
    assert store.series(job, "loss") == []
    assert store.last_values(job) == {}
    assert store.count(job) == 0
    with pytest.raises(ValueError):
        store.series(job, "loss", max_points=3)
    with pytest.raises(ValueError):
        store.insert([pt(job, "loss", 1, 1.0)], batch_id="")
    store.insert([], batch_id=f"{job}-empty")  # no-op


def test_downsample_keeps_first_last_min_max(store: MetricStore) -> None:
    job, n, max_points = new_job(), 100_000, 200
    values = [math.sin(s / 500.0) for s in range(n)]
    values[37_123], values[61_234] = -5.0, 7.0
    points = [pt(job, "loss", s, v) for s, v in enumerate(values)]
    for i in range(0, n, 25_000):
        store.insert(points[i:i + 25_000], batch_id=f"{job}-{i}")

    got = store.series(job, "loss", max_points=max_points)
    steps = [s for s, _, _ in got]
    assert len(got) <= max_points
    assert steps == sorted(set(steps))
    assert {0, n - 1, 37_123, 61_234} <= set(steps)
    assert all(v == values[s] and ts == T0 + timedelta(milliseconds=s) for s, v, ts in got)
    assert store.series(job, "loss", max_points=max_points) == got  # deterministic
    assert len(store.series(job, "loss", max_points=4)) <= 4


def test_downsample_ties_pick_smallest_step(store: MetricStore) -> None:
    job = new_job()
    store.insert([pt(job, "acc", s, 0.5) for s in range(10_000)], batch_id=f"{job}-a")
    got = store.series(job, "acc", max_points=8)
    # two buckets of 8192 steps (aligned at step 0: a multiple of the rollup cell), first/last (= min/max) of each
    assert [s for s, _, _ in got] == [0, 8191, 8192, 9999]


def test_attempts(store: MetricStore) -> None:
    job = new_job()
    store.insert([pt(job, "loss", s, 1.0, attempt=1) for s in range(10)], batch_id=f"{job}-1")
    store.insert([pt(job, "loss", s, 2.0, attempt=2) for s in range(4)], batch_id=f"{job}-2")
    store.insert([pt(job, "lr", s, 0.1, attempt=1) for s in range(3)], batch_id=f"{job}-3")

    assert store.latest_attempt(job) == 2
    assert store.series(job, "loss") == [(s, 2.0, T0 + timedelta(milliseconds=s)) for s in range(4)]
    assert [v for _, v, _ in store.series(job, "loss", attempt=1)] == [1.0] * 10
    assert store.series(job, "loss", attempt=3) == []
    assert store.series(job, "lr") == store.series(job, "lr", attempt=1)  # lr's latest attempt is 1
    assert store.last_values(job) == {"loss": (3, 2.0), "lr": (2, 0.1)}
    assert store.last_values(job, attempt=1) == {"loss": (9, 1.0), "lr": (2, 0.1)}
    assert store.count(job, attempt=2) == 4


def snapshot(store: MetricStore, job: str, max_points: int) -> dict:
    """Everything the store answers about a job."""
    snap: dict = {"names": store.names(job), "latest": store.latest_attempt(job), "count": store.count(job),
                  "last": store.last_values(job)}
    for name in snap["names"]:
        for attempt in (None, 1, 2):
            snap[name, attempt] = store.series(job, name, max_points=max_points, attempt=attempt)
            snap[name, attempt, "last"] = store.last_values(job, attempt=attempt)
    return snap


points_st = st.tuples(st.sampled_from(["loss", "acc"]), st.integers(1, 2), st.integers(0, 30),
                      st.floats(allow_nan=False, allow_infinity=True) | st.sampled_from([0.0, 1.0]))


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(points_st, min_size=1, max_size=15), min_size=1, max_size=5),
       data=st.data(), same_batch_id=st.booleans(), max_points=st.sampled_from([4, 8, 1000]))
def test_replayed_batches_change_nothing(store: MetricStore, batches, data, same_batch_id: bool,
                                         max_points: int) -> None:
    """Insert each batch once, or once and then any subset again (replay, in any order): same answers.
    With same_batch_id False the replay also misses the insert dedup token (outside its window), so only
    the table key and FINAL keep it invisible. Keys may repeat across batches: the latest ts wins."""
    replays = data.draw(st.lists(st.integers(0, len(batches) - 1), max_size=2 * len(batches)))
    once, replayed = new_job(), new_job()

    def materialize(job: str) -> list[list[MetricPoint]]:
        out, i = [], 0
        for batch in batches:
            out.append([])
            for name, attempt, step, value in batch:
                out[-1].append(pt(job, name, step, value, attempt, ms=i))  # unique ts per point
                i += 1
        return out

    for i, batch in enumerate(materialize(once)):
        store.insert(batch, batch_id=f"{once}-{i}")
    again = materialize(replayed)
    for i, batch in enumerate(again):
        store.insert(batch, batch_id=f"{replayed}-{i}")
    for k, i in enumerate(replays):
        store.insert(again[i], batch_id=f"{replayed}-{i}" if same_batch_id else f"{replayed}-{i}-replay{k}")

    expected = snapshot(store, once, max_points)
    assert snapshot(store, replayed, max_points) == expected

    # and the answers are the right ones: per key the latest-ts point, series in step order
    latest: dict[tuple, MetricPoint] = {}
    for batch in materialize(once):
        for p in batch:
            if (p.name, p.attempt, p.step) not in latest or p.ts > latest[p.name, p.attempt, p.step].ts:
                latest[p.name, p.attempt, p.step] = p
    assert expected["count"] == len(latest)
    for (name, attempt, step), p in latest.items():
        got = dict((s, (v, ts)) for s, v, ts in expected[name, attempt])
        if max_points == 1000:
            assert got[step] == (p.value, p.ts)
        elif step in got:
            assert got[step] == (p.value, p.ts)
    for name in expected["names"]:
        for attempt in (1, 2):
            full = sorted((s, p.value) for (n, a, s), p in latest.items() if n == name and a == attempt)
            series = expected[name, attempt]
            assert len(series) <= max_points
            if full:
                steps = [s for s, _, _ in series]
                assert steps == sorted(set(steps)) and steps[0] == full[0][0] and steps[-1] == full[-1][0]
                assert min(v for _, v, _ in series) == min(v for _, v in full)
                assert max(v for _, v, _ in series) == max(v for _, v in full)


def test_clickhouse_connect_driver(clickhouse) -> None:
    """The server driver's code (server-side binds, insert_arrow with a dedup token) on clickhouse-connect's
    embedded chDB interface, on the same data path as the fixture (one chDB path per process)."""
    clickhouse_connect = pytest.importorskip("clickhouse_connect")
    from infra.clickhouse import HttpClickHouse

    ch = HttpClickHouse.from_client(clickhouse_connect.get_client(interface="chdb", path=str(clickhouse.path)))
    store, job = MetricStore(ch), new_job()
    store.ensure_schema()
    points = [pt(job, "loss", s, math.cos(s / 40), attempt=2) for s in range(5_000)]
    store.insert(points, batch_id=f"{job}-a")
    store.insert(points, batch_id=f"{job}-a")  # dropped by the token
    assert store.count(job) == 5_000
    assert ch.query("SELECT count() FROM metric_points WHERE job_id = {j:UUID}", {"j": job}) == [(5_000,)]
    assert store.names(job) == ["loss"] and store.latest_attempt(job) == 2
    assert store.series(job, "loss", max_points=64) == MetricStore(clickhouse).series(job, "loss", max_points=64)
    assert ch.query("SELECT {s:String}", {"s": "a\n'b\\"}) == [("a\n'b\\",)]
    ch.close()
    assert clickhouse.query("SELECT 1") == [(1,)]  # the fixture's session is unaffected


class Recording:
    """The real engine, recording the SQL it runs (to tell rollup reads from raw ones)."""

    def __init__(self, ch) -> None:
        self.ch, self.sql = ch, []

    def query(self, sql, params=None):
        self.sql.append(sql)
        return self.ch.query(sql, params)

    def __getattr__(self, name):
        return getattr(self.ch, name)


def exact(series: list) -> list:
    """The series with values as their bits (NaN equals NaN, -0.0 differs from 0.0)."""
    return [(s, struct.pack("<d", v), ts) for s, v, ts in series]


def rollup_reads(store: MetricStore, job: str, name: str, max_points: int, attempt: int | None = None) -> list:
    """The series through the rollup, asserting that the rollup answered."""
    recording = Recording(store.ch)
    got = MetricStore(recording).series(job, name, max_points=max_points, attempt=attempt)
    assert rollup.DOWNSAMPLE in recording.sql and rollup.RAW_DOWNSAMPLE not in recording.sql
    return got


def test_rollup_answers_large_series_as_the_raw_points_do(store: MetricStore) -> None:
    job, n = new_job(), 200_000
    values = [math.cos(s / 900.0) + (s % 7) / 100 for s in range(n)]
    values[123_457], values[5], values[n - 2] = -9.0, float("inf"), float("nan")
    points = [pt(job, "loss", s, v) for s, v in enumerate(values)]
    for i in range(0, n, 30_000):
        store.insert(points[i:i + 30_000], batch_id=f"{job}-{i}")
    store.insert(points[40_000:41_000], batch_id=f"{job}-again")  # a regrouped replay: no rewrite
    for max_points in (8, 100, 1000, 5000):
        got = rollup_reads(store, job, "loss", max_points)
        assert exact(got) == exact(store.series(job, "loss", max_points=max_points, rollup_reads=False))
        assert len(got) <= max_points and {0, 5, 123_457, n - 2, n - 1} <= {s for s, _, _ in got}


def test_rewritten_point_is_shown_not_its_older_value(store: MetricStore) -> None:
    job, n = new_job(), 50_000
    store.insert([pt(job, "loss", s, 1.0) for s in range(n)], batch_id=f"{job}-a")
    assert rollup_reads(store, job, "loss", 100)
    store.insert([pt(job, "loss", 777, -3.0, ms=n + 1)], batch_id=f"{job}-b")  # a newer ts: the point is now -3
    store.insert([pt(job, "loss", 999, 5.0, ms=0)], batch_id=f"{job}-c")  # an older ts: the point stays 1.0
    store.insert([pt(job, "loss", 999, 5.0, ms=0)], batch_id=f"{job}-d")
    got = store.series(job, "loss", max_points=100)
    assert exact(got) == exact(store.series(job, "loss", max_points=100, rollup_reads=False))
    assert (777, -3.0, T0 + timedelta(milliseconds=n + 1)) in got
    assert max(v for _, v, _ in got) == 1.0
    store.ch.command("OPTIMIZE TABLE metric_points FINAL")  # the older versions leave the raw table: still right
    assert store.series(job, "loss", max_points=100) == got


def test_a_kept_plan_follows_the_writes_so_a_read_is_one_query(clickhouse) -> None:
    recording = Recording(clickhouse)
    store = MetricStore(recording)  # writer and reader, as in serve
    job, n = new_job(), 40_000
    store.insert([pt(job, "loss", s, math.sin(s / 50)) for s in range(n)], batch_id=f"{job}-a")
    assert store.series(job, "loss", max_points=100) == store.series(job, "loss", 100, rollup_reads=False)
    store.insert([pt(job, "loss", s, 9.0 if s == n + 4_000 else 0.5) for s in range(n, 2 * n)], batch_id=f"{job}-b")
    recording.sql.clear()
    got = store.series(job, "loss", max_points=100)
    assert recording.sql == [rollup.DOWNSAMPLE]  # the plan was kept and grew with the write
    assert got == store.series(job, "loss", 100, rollup_reads=False) and got[-1][0] == 2 * n - 1
    assert (n + 4_000, 9.0) in {(s, v) for s, v, _ in got}
    # a second attempt resumed from step 30,000 is in the merged series at once
    store.insert([pt(job, "loss", s, -1.0, attempt=2) for s in range(30_001, 60_000)], batch_id=f"{job}-c")
    merged = store.series(job, "loss", max_points=100)
    assert merged == store.series(job, "loss", 100, rollup_reads=False)
    assert merged[-1][0] == 59_999 and min(v for _, v, _ in merged) == -1.0


series_st = st.lists(st.tuples(st.integers(1, 2), st.integers(0, 3000),
                               st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan])),
                     min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(points=series_st, data=st.data(), max_points=st.sampled_from([4, 8, 16, 64]))
def test_rollup_reads_equal_raw_reads(store: MetricStore, points, data, max_points: int) -> None:
    """Random series (gaps, NaN, ±inf, repeats and rewrites of steps, two attempts), inserted in random groups
    and partly replayed under other tokens: the rollup-backed downsample is the raw one."""
    job = new_job()
    rows = [pt(job, "loss", step, value, attempt, ms=i % 50) for i, (attempt, step, value) in enumerate(points)]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(rows)), max_size=4)) | {0, len(rows)})
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        store.insert(rows[a:b], batch_id=f"{job}-{k}")
    replay = data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=20))
    if replay:
        store.insert([rows[i] for i in replay], batch_id=f"{job}-replay")
    for attempt in (None, 1, 2):
        assert (exact(store.series(job, "loss", max_points=max_points, attempt=attempt))
                == exact(store.series(job, "loss", max_points=max_points, attempt=attempt, rollup_reads=False)))


def test_bucket_width_is_a_multiple_of_the_cell_and_bounds_the_buckets() -> None:
    for lo, hi, buckets in [(0, 999_999, 250), (5, 10_000_000, 250), (3, 40, 1), (0, 15, 4), (1 << 40, (1 << 41), 7)]:
        level, width = rollup.bucket_width(lo, hi, buckets)
        assert width % (1 << level) == 0 and hi // width - lo // width + 1 <= buckets
        assert level == 0 or (1 << level) * buckets <= hi - lo + buckets


def test_rollup_is_filled_from_points_stored_before_it(store: MetricStore) -> None:
    job = new_job()
    store.insert([pt(job, "loss", s, math.sin(s / 300)) for s in range(20_000)], batch_id=f"{job}-a")
    want = store.series(job, "loss", max_points=64, rollup_reads=False)
    store.ch.command("TRUNCATE TABLE metric_rollup")  # as if made now, for a table that has points
    store.ch.command("ALTER TABLE metric_rollup MODIFY COMMENT ''")
    store.ensure_schema()
    assert exact(rollup_reads(store, job, "loss", 64)) == exact(want)


def test_a_table_made_with_the_batch_id_column_loses_it_on_the_next_start(store: MetricStore) -> None:
    """Points no longer carry their batch id (the insert's deduplication token is enough): a table from before
    gets the column dropped by ensure_schema, and points go in and come out as before."""
    store.ch.command("ALTER TABLE metric_points ADD COLUMN IF NOT EXISTS batch_id String DEFAULT ''")
    store.ensure_schema()
    columns = [r[0] for r in store.ch.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                                             "AND table = 'metric_points'")]
    assert "batch_id" not in columns and "step" in columns
    job = str(uuid.uuid4())
    store.insert([pt(job, "loss", s, 1.0 / s) for s in range(1, 6)], batch_id=f"{job}-after")
    assert [s for s, _, _ in store.series(job, "loss")] == [1, 2, 3, 4, 5]


def test_a_resumed_attempt_continues_the_merged_series(store: MetricStore) -> None:
    """Attempt 1 logged steps 1..50 and checkpointed at 30; attempt 2 resumed there and logged 31..100: the merged
    series is attempt 1's 1..30 then attempt 2's 31..100, each step once; each attempt's own series stays whole."""
    job = new_job()
    store.insert([pt(job, "loss", s, 1.0, attempt=1) for s in range(1, 51)], batch_id=f"{job}-1")
    store.insert([pt(job, "loss", s, 2.0, attempt=2) for s in range(31, 101)], batch_id=f"{job}-2")
    merged = store.series(job, "loss", max_points=1000)
    assert [(s, v) for s, v, _ in merged] == [(s, 1.0) for s in range(1, 31)] + [(s, 2.0) for s in range(31, 101)]
    assert store.series_of(job, ["loss"])["loss"][0] == 2  # the latest attempt in it
    assert [s for s, _, _ in store.series(job, "loss", attempt=1)] == list(range(1, 51))
    assert exact(store.series(job, "loss", max_points=8)) == exact(
        store.series(job, "loss", max_points=8, rollup_reads=False))
    got = store.series(job, "loss", max_points=8)
    assert len(got) <= 8 and {1, 100} <= {s for s, _, _ in got}


def test_merged_segments_cut_each_attempt_at_the_first_step_of_any_later_one() -> None:
    assert merged_segments({1: 0}) == [(1, 2**64 - 1)]
    assert merged_segments({1: 1, 2: 31}) == [(1, 31), (2, 2**64 - 1)]
    assert merged_segments({1: 1, 2: 1}) == [(2, 2**64 - 1)]  # started over: the latest attempt only
    assert merged_segments({1: 1, 2: 31, 3: 21}) == [(1, 21), (3, 2**64 - 1)]  # 3 resumed before 2's first step


@settings(max_examples=40, deadline=None)
@given(points=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 120), st.floats(allow_nan=False)), min_size=1,
                       max_size=200),
       max_points=st.sampled_from([4, 16, 1000]))
def test_the_merged_series_shows_each_step_once_from_the_attempt_that_last_reached_it(store: MetricStore, points,
                                                                                      max_points: int) -> None:
    """Random attempts (resumed anywhere, or started over): a step is shown from the attempt that has it when no
    later attempt started at or before it; downsampled, the rollup-backed and raw reads agree."""
    job = new_job()
    store.insert([pt(job, "loss", step, value, attempt, ms=i) for i, (attempt, step, value) in enumerate(points)],
                 batch_id=f"{job}-1")
    latest = {(a, s): v for a, s, v in points}  # a repeated (attempt, step): the latest ts (the last one) wins
    first = {a: min(s for b, s in latest if b == a) for a, _ in latest}
    want = sorted((s, v) for (a, s), v in latest.items() if all(first[b] > s for b in first if b > a))
    full = store.series(job, "loss", max_points=1000)
    assert [(s, v) for s, v, _ in full] == want
    assert exact(store.series(job, "loss", max_points=max_points)) == exact(
        store.series(job, "loss", max_points=max_points, rollup_reads=False))


def test_a_groups_points_go_in_in_the_tables_key_order(store: MetricStore) -> None:
    """An insert's points are sorted as `metric_points` is ordered (job_id, name, attempt, step), so ClickHouse has
    nothing to sort: the series order MetricColumns gives is ClickHouse's own, UUIDs and non-ASCII names included."""
    jobs = [new_job() for _ in range(40)]
    cols = MetricColumns()
    for i, job in enumerate(reversed(jobs)):
        for name in ("β", "loss", "Loss", "a_b", "z"):
            cols.extend(job, 1 + i % 3, name, [1], [0.0], [0])
    keys, _ = cols.series()
    ordered = store.ch.query("SELECT toString(k.1) AS j, k.2 AS n, k.3 AS a FROM (SELECT arrayJoin(arrayZip("
                             "{j:Array(UUID)}, {n:Array(String)}, {a:Array(UInt32)})) AS k) ORDER BY k.1, n, a",
                             {"j": [k[0] for k in keys], "n": [k[1] for k in keys], "a": [k[2] for k in keys]})
    assert [tuple(r) for r in ordered] == keys
