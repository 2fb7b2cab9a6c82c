"""LogStore on real chDB (conftest's session `clickhouse`); tests isolate by job id."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from domain.contract import LogBatch, LogLine
from projections.telemetry.log_store import LogQuery, LogStore

T0_MS = 1_714_521_600_000  # 2024-05-01 UTC
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(clickhouse) -> LogStore:
    s = LogStore(clickhouse)
    s.ensure_schema()
    s.ensure_schema()  # idempotent
    return s


def batch(job: str, attempt: int, lines: list[tuple[int, str, str]], batch_id: str | None = None) -> LogBatch:
    """Lines (seq, level, message); line seq is at T0 + seq seconds."""
    return LogBatch(batch_id=batch_id or str(uuid.uuid4()), job_id=job, attempt=attempt, runner_id="host:1",
                    lines=[LogLine(seq=s, ts_ms=T0_MS + 1000 * s, level=lv, stream="stdout", message=m)
                           for s, lv, m in lines])


def messages(store: LogStore, job: str, **query) -> list[str]:
    return [line.message for line in store.lines(job, LogQuery(**query))]


def test_filters_and_order(store: LogStore) -> None:
    job = str(uuid.uuid4())
    store.insert_batches([batch(job, 2, [(0, "info", "second run starts")]),
                          batch(job, 1, [(1, "warning", "no further splits"), (0, "info", "Total Bins 5676")])], "a")
    store.insert_batches([batch(job, 1, [(2, "error", "ValueError: 100% bad"), (3, "debug", "tick")])], "b")
    assert messages(store, job) == ["Total Bins 5676", "no further splits", "ValueError: 100% bad", "tick",
                                    "second run starts"]
    assert messages(store, job, level="warning") == ["no further splits", "ValueError: 100% bad"]
    assert messages(store, job, attempt=1, tail=True, limit=2) == ["ValueError: 100% bad", "tick"]
    assert messages(store, job, q="100%") == ["ValueError: 100% bad"]
    assert messages(store, job, q="' OR 1=1 --") == []  # a bound parameter, never SQL
    assert messages(store, job, since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3),
                    attempt=1) == ["no further splits", "ValueError: 100% bad"]
    assert messages(store, job, after=(1, 2)) == ["tick", "second run starts"]
    assert messages(store, job, limit=1) == ["Total Bins 5676"]
    first = store.lines(job, LogQuery(limit=1))[0]
    assert (first.attempt, first.seq, first.level, first.stream, first.ts) == (1, 0, "info", "stdout", T0)
    assert store.lines(str(uuid.uuid4())) == []


line_st = st.tuples(st.integers(1, 2), st.integers(0, 40), st.sampled_from(["debug", "info", "warning", "error"]),
                    st.sampled_from(["a", "b", "ab", "bé\t"]))
QUERIES = [LogQuery(), LogQuery(level="warning"), LogQuery(attempt=2), LogQuery(q="b"), LogQuery(tail=True, limit=5),
           LogQuery(after=(1, 20), limit=7), LogQuery(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=30))]


def paged(store: LogStore, job: str, after: tuple[int, int] | None, page: int) -> list:
    """What a live stream reads: pages after `after` until one comes back empty (a page drops repeated rows, so
    its length may vary; what the pages add up to may not)."""
    out: list = []
    while lines := store.lines_after(job, after, page):
        out += lines
        after = (lines[-1].attempt, lines[-1].seq)
    return out


def snapshot(store: LogStore, job: str) -> list:
    rows = [store.lines(job, q) for q in QUERIES] + [paged(store, job, None, 1000), paged(store, job, (1, 20), 3)]
    return [[(x.attempt, x.seq, x.ts, x.level, x.stream, x.message) for x in r] for r in rows]


@settings(max_examples=30, deadline=None)
@given(lines=st.lists(line_st, min_size=1, max_size=40, unique_by=lambda x: (x[0], x[1])), data=st.data())
def test_replayed_and_regrouped_batches_change_nothing(store: LogStore, lines, data) -> None:
    """Lines cut into batches and inserted once; then, for another job, the same batches inserted, then any subset
    of them again (same insert token or not) and regrouped ones (the lines cut differently, in one insert or
    several): every query answers the same for both jobs, and the first one is what was sent."""
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(lines) - 1)), max_size=5)))
    groups = [lines[a:b] for a, b in zip([0, *cuts], [*cuts, len(lines)]) if lines[a:b]]
    once, replayed = str(uuid.uuid4()), str(uuid.uuid4())

    def batches(job: str, parts: list) -> list[LogBatch]:
        out = []
        for part in parts:
            for attempt in (1, 2):
                mine = [(s, lv, m) for a, s, lv, m in part if a == attempt]
                if mine:
                    out.append(batch(job, attempt, mine, batch_id=f"{job}-{attempt}-{mine[0][0]}-{len(mine)}"))
        return out

    for i, b in enumerate(batches(once, groups)):
        store.insert_batches([b], b.batch_id)
    again = batches(replayed, groups)
    for b in again:
        store.insert_batches([b], b.batch_id)
    for k, i in enumerate(data.draw(st.lists(st.integers(0, len(again) - 1), max_size=2 * len(again)))):
        token = again[i].batch_id if data.draw(st.booleans()) else f"{again[i].batch_id}-replay{k}"
        store.insert_batches([again[i]], token)
    regrouped = batches(replayed, [data.draw(st.permutations(lines))[:data.draw(st.integers(1, len(lines)))]])
    store.insert_batches(regrouped, f"{replayed}-regrouped-{uuid.uuid4()}")

    assert snapshot(store, replayed) == snapshot(store, once)
    expected = sorted((a, s, lv, m) for a, s, lv, m in lines)
    assert [(x.attempt, x.seq, x.level, x.message) for x in store.lines(once)] == expected
