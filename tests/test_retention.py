"""ClickHouse retention on real chDB (the session's `clickhouse` fixture): TTLs follow the settings at each start."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from infra.clickhouse import apply_retention
from infra.settings import Settings
from projections.telemetry.log_store import LogStore
from projections.telemetry.metric_store import MetricPoint, MetricStore
from projections.telemetry.prediction_store import PredictionStore


def engine(ch, table: str) -> str:
    return ch.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
                    {"t": table})[0][0]


def test_rows_past_the_retention_leave_and_the_setting_changes_on_the_next_start(clickhouse) -> None:
    table = f"retention_{uuid.uuid4().hex}"
    clickhouse.command(f"CREATE TABLE {table} (ts DateTime64(3, 'UTC'), n UInt32) ENGINE = MergeTree ORDER BY n")
    now = datetime.now(timezone.utc)
    clickhouse.insert(table, ["ts", "n"], [(now - timedelta(days=40), 1), (now - timedelta(days=10), 2), (now, 3)])

    apply_retention(clickhouse, table, "ts", 30)
    assert "TTL toDateTime(ts) + toIntervalDay(30)" in engine(clickhouse, table)
    clickhouse.command(f"OPTIMIZE TABLE {table} FINAL")
    assert clickhouse.query(f"SELECT n FROM {table} ORDER BY n") == [(2,), (3,)]

    apply_retention(clickhouse, table, "ts", 30)  # a start with the same setting: unchanged
    apply_retention(clickhouse, table, "ts", 5)  # the setting changed
    assert "toIntervalDay(5)" in engine(clickhouse, table)
    clickhouse.command(f"OPTIMIZE TABLE {table} FINAL")
    assert clickhouse.query(f"SELECT n FROM {table} ORDER BY n") == [(3,)]

    apply_retention(clickhouse, table, "ts", 0)  # forever
    apply_retention(clickhouse, table, "ts", 0)
    assert " TTL " not in engine(clickhouse, table)
    with pytest.raises(ValueError):
        apply_retention(clickhouse, table, "ts", -1)
    clickhouse.command(f"DROP TABLE {table}")


def test_stores_apply_their_retention_settings(clickhouse) -> None:
    settings = Settings()
    assert (settings.metric_retention_days, settings.prediction_retention_days, settings.log_retention_days) == (0, 90, 30)
    try:
        MetricStore(clickhouse, retention_days=7).ensure_schema()
        PredictionStore(clickhouse, retention_days=90).ensure_schema()
        LogStore(clickhouse, retention_days=30).ensure_schema()
        assert "TTL toDateTime(ts) + toIntervalDay(30)" in engine(clickhouse, "log_lines")
        assert "toIntervalDay(7)" in engine(clickhouse, "metric_points")
        assert "TTL toDateTime(last_ts) + toIntervalDay(7)" in engine(clickhouse, "metric_rollup")
        for table in ("predictions", "feedback"):
            assert "TTL toDateTime(ts) + toIntervalDay(90)" in engine(clickhouse, table)
        assert "TTL toDateTime(minute) + toIntervalDay(90)" in engine(clickhouse, "label_effects")
        assert " TTL " not in engine(clickhouse, "prediction_minutes")  # the aggregates are kept
    finally:  # other tests' points are older than 7 days
        MetricStore(clickhouse).ensure_schema()
        PredictionStore(clickhouse).ensure_schema()
        LogStore(clickhouse).ensure_schema()
    assert all(" TTL " not in engine(clickhouse, t) for t in ("metric_points", "metric_rollup", "predictions", "log_lines"))


def test_series_with_points_past_the_retention_are_read_from_what_is_left(clickhouse) -> None:
    """The rollup's cells may outlive some of their points: such series are read from the raw points."""
    store, job = MetricStore(clickhouse, retention_days=30), str(uuid.uuid4())
    old = datetime.now(timezone.utc) - timedelta(days=31)
    points = [MetricPoint(job, 1, "loss", s, float(s % 97), old + timedelta(seconds=s)) for s in range(20_000)]
    store.insert(points, batch_id=f"{job}-a")
    clickhouse.command(f"ALTER TABLE metric_points DELETE WHERE job_id = '{job}' AND step < 10000 "
                       "SETTINGS mutations_sync = 1")  # what the TTL does to the older half, without one
    got = store.series(job, "loss", max_points=40)
    assert got == store.series(job, "loss", max_points=40, rollup_reads=False)
    assert min(s for s, _, _ in got) == 10_000
