"""The A/B report's per-minute aggregates (projections/prediction_store.py) on real chDB: what the report reads stays
equal to what the raw tables say — through corrections, repeats, stale labels, shadows, redeliveries and regrouped
batches — and a rebuild from the raw tables gives the same aggregates as the live inserts (property test)."""
from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from projections.telemetry.ab_queries import timeseries, variant_stats
from projections.telemetry.prediction_store import METRICS, PredictionStore
from tests.support.batches import CLASSES, T0, feedback, predictions

@pytest.fixture(scope="module")
def store(clickhouse: Any) -> PredictionStore:
    s = PredictionStore(clickhouse)
    s.ensure_schema()
    return s


def report_figures(store: PredictionStore, deployment: str, metric: str = "accuracy", **window: int) -> dict:
    rows, per_revision = variant_stats(store.ch, deployment, metric, window.get("since", 0),
                                       window.get("until", 2**50))
    return {(r["variant"], r["shadow"]): (r["requests"], r["errors"], r["labelled"], round(r["metric_sum"], 9))
            for r in rows}


def test_corrections_repeats_stale_labels_and_shadows_count_once_as_the_latest_label(store: PredictionStore) -> None:
    d = f"minutes-{uuid.uuid4().hex[:8]}"
    rows = [{"request_id": "r1", "ts_ms": T0, "variant": "control", "p_yes": 0.9},
            {"request_id": "r2", "ts_ms": T0 + 1000, "variant": "control", "p_yes": 0.2},
            {"request_id": "r3", "ts_ms": T0 + 61_000, "variant": "challenger", "p_yes": 0.7},
            {"request_id": "r3", "ts_ms": T0 + 61_000, "variant": "shadow", "p_yes": 0.4, "shadow": True},
            {"request_id": "r4", "ts_ms": T0 + 62_000, "variant": "challenger", "p_yes": None}]
    store.insert_batches([predictions(d, rows)], "t-" + d)
    store.insert_feedback([feedback(d, [("r1", "yes"), ("r2", "yes"), ("r3", "yes"), ("r4", "no")], T0 + 120_000)])
    # served: control r1 right, r2 wrong; challenger r3 right, r4 an error (not labelled); shadow r3 wrong
    assert report_figures(store, d) == {("control", False): (2, 0, 2, 1.0), ("challenger", False): (2, 1, 1, 1.0),
                                        ("shadow", True): (1, 0, 1, 0.0)}
    store.insert_feedback([feedback(d, [("r2", "no")], T0 + 180_000)])  # a correction: r2 now right
    store.insert_feedback([feedback(d, [("r2", "no"), ("r1", "yes")], T0 + 190_000)])  # repeats change nothing
    store.insert_feedback([feedback(d, [("r3", "no")], T0 + 100_000)])  # older than what is stored: ignored
    store.insert_feedback([feedback(d, [("r3", "no"), ("r3", "yes")], T0 + 200_000)])  # last of a batch wins
    assert report_figures(store, d) == {("control", False): (2, 0, 2, 2.0), ("challenger", False): (2, 1, 1, 1.0),
                                        ("shadow", True): (1, 0, 1, 0.0)}
    # logloss sums −log p(true label): r1 yes 0.9, r2 no 0.8
    logloss = {(r["variant"], r["shadow"]): r["metric_sum"] for r in variant_stats(store.ch, d, "logloss", 0, 2**50)[0]}
    assert math.isclose(logloss[("control", False)], -math.log(0.9) - math.log(0.8), rel_tol=1e-6)
    # the window is whole minutes of the prediction: r3/r4 are in the second minute
    assert report_figures(store, d, since=T0 + 60_000 + 5) == {("challenger", False): (2, 1, 1, 1.0),
                                                                ("shadow", True): (1, 0, 1, 0.0)}
    assert report_figures(store, d, until=T0 + 60_000) == {("control", False): (2, 0, 2, 2.0)}
    series = timeseries(store.ch, d, "accuracy", 60, 0, 2**50)
    assert [(p["t_ms"], p["variant"], p["requests"], p["labelled"]) for p in series] == [
        (T0, "control", 2, 2), (T0 + 60_000, "challenger", 2, 1)]


def test_a_redelivered_batch_counts_once_even_when_regrouped(store: PredictionStore) -> None:
    d = f"minutes-{uuid.uuid4().hex[:8]}"
    a = predictions(d, [{"request_id": f"a{i}", "ts_ms": T0, "variant": "control", "p_yes": 0.8} for i in range(3)])
    b = predictions(d, [{"request_id": f"b{i}", "ts_ms": T0, "variant": "control", "p_yes": 0.8} for i in range(2)])
    store.insert_batches([a], a.batch_id)
    store.insert_batches([a], a.batch_id)  # the same insert again (crash before the ack)
    store.insert_batches([a, b], f"{a.batch_id},{b.batch_id}")  # redelivered together with a new batch
    fb = feedback(d, [("a0", "yes"), ("b1", "no")], T0 + 5000)
    store.insert_feedback([fb])
    store.insert_feedback([fb])  # redelivered
    assert report_figures(store, d) == {("control", False): (5, 0, 2, 1.0)}
    fix = feedback(d, [("a0", "no")], T0 + 6000)  # in one insert: a correction after a first label
    first = feedback(d, [("a1", "no"), ("a2", "yes")], T0 + 6000)
    store.insert_feedback([first, fix])
    assert report_figures(store, d) == {("control", False): (5, 0, 4, 1.0)}
    store.insert_feedback([fix, feedback(d, [("b0", "yes")], T0 + 7000)])  # regrouped: only the new one counts
    assert report_figures(store, d) == {("control", False): (5, 0, 5, 2.0)}


def test_srm_and_policy_figures_per_revision(store: PredictionStore) -> None:
    d = f"minutes-{uuid.uuid4().hex[:8]}"
    rows = [{"request_id": f"r{i}", "ts_ms": T0 + i, "variant": "ab"[i % 2], "p_yes": 0.9, "revision": 1 + i // 4}
            for i in range(8)]
    store.insert_batches([predictions(d, rows)], "t-" + d)
    whole, per_revision = variant_stats(store.ch, d, "accuracy", 0, 2**50)
    assert sorted((r["variant"], r["requests"]) for r in whole) == [("a", 4), ("b", 4)]
    assert sorted((r["revision"], r["variant"], r["requests"]) for r in per_revision) == [
        (1, "a", 2), (1, "b", 2), (2, "a", 2), (2, "b", 2)]
    only_2, _ = variant_stats(store.ch, d, "accuracy", 0, 2**50, revision=2)
    assert sorted((r["variant"], r["requests"]) for r in only_2) == [("a", 2), ("b", 2)]


def snapshot(store: PredictionStore, deployment: str) -> tuple[dict, dict]:
    sums = ", ".join(f"sum({m}_{p})" for m in METRICS for p in ("n", "s", "ss"))
    labels = store.ch.query(f"SELECT revision, variant, shadow, toUnixTimestamp(minute), {sums} FROM label_minutes "
                            "WHERE deployment = {d:String} GROUP BY ALL", {"d": deployment})
    requests = store.ch.query("SELECT revision, variant, shadow, toUnixTimestamp(minute), sum(requests), sum(errors) "
                              "FROM prediction_minutes WHERE deployment = {d:String} GROUP BY ALL", {"d": deployment})
    return ({r[:4]: r[4:] for r in requests},
            {r[:4]: tuple(round(x, 6) for x in r[4:]) for r in labels if any(abs(x) > 1e-9 for x in r[4:])})


request_ids = st.sampled_from([f"q{i}" for i in range(8)])
operation = st.one_of(
    st.tuples(st.just("predict"), st.lists(st.tuples(request_ids, st.sampled_from(["a", "b"]),
                                                     st.one_of(st.none(), st.floats(0.01, 0.99)),
                                                     st.integers(0, 180), st.booleans()), min_size=1, max_size=4)),
    st.tuples(st.just("feedback"), st.lists(st.tuples(request_ids, st.sampled_from(CLASSES + ["maybe"])),
                                            min_size=1, max_size=4), st.integers(-100, 300)),
    st.tuples(st.just("redeliver")))


def latest_label_per_landed_prediction(store: PredictionStore, deployment: str) -> dict:
    """The oracle: label_minutes recomputed from the raw tables by a rebuild (the latest label per landed copy)."""
    store.rebuild_minutes()
    return snapshot(store, deployment)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(operation, min_size=1, max_size=12))
def test_any_interleaving_gives_the_latest_label_per_landed_prediction(store: PredictionStore, ops: list) -> None:
    """Whatever order predictions, labels, relabels and redeliveries come in, labels before their prediction
    included, the aggregates the inserts kept equal the ones recomputed from the raw tables."""
    d = f"prop-{uuid.uuid4().hex[:8]}"
    seen: set[tuple[str, bool]] = set()
    last: tuple[str, Any] | None = None
    clock = T0 + 600_000
    for op in ops:
        if op[0] == "predict":
            rows = []
            for rid, variant, p_yes, second, shadow in op[1]:
                if (rid, shadow) in seen:  # a request is answered once (and its shadow copy once)
                    continue
                seen.add((rid, shadow))
                rows.append({"request_id": rid, "ts_ms": T0 + second * 1000, "variant": variant, "p_yes": p_yes,
                             "shadow": shadow})
            if rows:
                batch = predictions(d, rows)
                store.insert_batches([batch], batch.batch_id)
                last = ("predict", batch)
        elif op[0] == "feedback":
            clock += op[2]  # feedback arrives mostly in time order, some late, some in the same millisecond
            batch = feedback(d, op[1], clock)  # for requests answered or not yet
            store.insert_feedback([batch])
            last = ("feedback", batch)
        elif last is not None:
            if last[0] == "predict":
                store.insert_batches([last[1]], "again-" + last[1].batch_id)
            else:
                store.insert_feedback([last[1]])
    live = snapshot(store, d)
    assert live == latest_label_per_landed_prediction(store, d)


def test_a_label_that_came_before_its_prediction_counts_once_it_lands(store: PredictionStore) -> None:
    d = f"minutes-{uuid.uuid4().hex[:8]}"
    store.insert_feedback([feedback(d, [("r1", "yes"), ("r2", "no")], T0 + 5000)])
    assert report_figures(store, d) == {}
    store.insert_batches([predictions(d, [{"request_id": "r1", "ts_ms": T0, "variant": "a", "p_yes": 0.9}])], "t1" + d)
    assert report_figures(store, d) == {("a", False): (1, 0, 1, 1.0)}
    store.insert_feedback([feedback(d, [("r1", "no")], T0 + 6000)])  # a correction after the late landing
    store.insert_batches([predictions(d, [{"request_id": "r2", "ts_ms": T0, "variant": "a", "p_yes": 0.9},
                                          {"request_id": "r2", "ts_ms": T0, "variant": "a", "p_yes": 0.1,
                                           "shadow": True}])], "t2" + d)
    # r1 now wrong (no), r2 wrong for the served copy (yes predicted), right for the shadow (no predicted)
    assert report_figures(store, d) == {("a", False): (2, 0, 2, 0.0), ("a", True): (1, 0, 1, 1.0)}


def test_the_clickhouse_connect_driver_keeps_the_same_aggregates(clickhouse: Any, store: PredictionStore) -> None:
    """The server driver (clickhouse-connect, here on its embedded chDB interface and the fixture's data path): the
    feedback INSERT … SELECT with its array parameters and token, and the report's query."""
    clickhouse_connect = pytest.importorskip("clickhouse_connect")
    from infra.clickhouse import HttpClickHouse

    ch = HttpClickHouse.from_client(clickhouse_connect.get_client(interface="chdb", path=str(clickhouse.path)))
    try:
        over_http = PredictionStore(ch)
        over_http.ensure_schema()
        d = f"minutes-{uuid.uuid4().hex[:8]}"
        over_http.insert_batches([predictions(d, [{"request_id": f"r{i}", "ts_ms": T0 + i, "variant": "a",
                                                   "p_yes": 0.9} for i in range(4)])], "t-" + d)
        fb = feedback(d, [("r0", "yes"), ("r1", "no"), ("r2", "it's \\ odd")], T0 + 5000)
        over_http.insert_feedback([fb])
        over_http.insert_feedback([fb])
        assert report_figures(over_http, d) == report_figures(store, d) == {("a", False): (4, 0, 3, 1.0)}
    finally:
        ch.close()
    assert clickhouse.query("SELECT 1") == [(1,)]


UPGRADE = r'''
import sys, json
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from infra.clickhouse import connect
from projections.telemetry.ab_queries import variant_stats
from projections.telemetry.prediction_store import DDL, FEEDBACK_COLUMNS, FEEDBACK_DDL, PredictionStore
from tests.support.batches import T0, predictions

ch = connect(None, Path(sys.argv[1]))
ch.command(DDL)
ch.command(FEEDBACK_DDL)  # the schema before the aggregates: raw tables only, feedback without effects
store = PredictionStore(ch)
batch = predictions("old", [{"request_id": f"r{i}", "ts_ms": T0 + i, "variant": "a", "p_yes": 0.9} for i in range(3)])
store._insert_predictions([batch], batch.batch_id)  # the raw insert alone, as before the aggregates
ch.insert("feedback", FEEDBACK_COLUMNS, [(T0 + 9, "old", "r0", "no", None, "f1"), (T0 + 10, "old", "r0", "yes", None, "f2"),
                                         (T0 + 10, "old", "r1", "no", None, "f2")], dedup_token="f")
assert not ch.query("EXISTS TABLE prediction_minutes")[0][0]
store.ensure_schema()  # what a process does at start after the upgrade
rows, _ = variant_stats(ch, "old", "accuracy", 0, 2**50)
print(json.dumps([(r["requests"], r["labelled"], r["metric_sum"]) for r in rows]))
'''


def test_tables_from_before_the_aggregates_are_backfilled_at_start(tmp_path: Any) -> None:
    """An existing chDB with raw tables only (a data dir from before): the start's ensure_schema adds the
    aggregates and fills them from what is there (in a child process: one chDB path per process)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", UPGRADE, str(tmp_path / "chdb"), str(root)], capture_output=True,
                         text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[3, 2, 1.0]]  # r0 yes (latest) right, r1 no wrong
