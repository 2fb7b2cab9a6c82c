"""GET /api/v1/stats and `trainyard stats`: the queue and its capacity (the in-process API on real PostgreSQL; jobs,
exports and runners are written straight into the read models with known times, no projector runs here)."""
from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

import api.cli.app
from api.client import TrainyardClient
from entrypoints.bootstrap import build_services
from infra.settings import Settings
from tests.support.auth import admin_token, signed_in_client
from tests.support.cli import trainyard

STATS = "/api/v1/stats"


@pytest.fixture(scope="module")
def services(module_database_url: str, clickhouse) -> Iterator[Any]:
    s = build_services(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222",
                                clickhouse_url=None, data_dir=clickhouse.path.parent))
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(services) -> Iterator[TestClient]:
    with signed_in_client(services) as c:
        yield c


@pytest.fixture
def db(module_database_url: str, client) -> Iterator[psycopg.Connection]:
    """A connection to the read models, emptied of jobs, exports and runners first."""
    with psycopg.connect(module_database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM jobs; DELETE FROM model_exports; DELETE FROM runners_seen")
        yield conn


def ago(**delta: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(**delta)


def add_job(conn: psycopg.Connection, *, status: str = "completed", priority: str = "medium",
            framework: str = "lightgbm", task: str = "binary_classification", project: str = "default",
            created: datetime, started: datetime | None = None, finished: datetime | None = None,
            first_started: datetime | None = None, attempt: int = 1, runner: str | None = None) -> uuid.UUID:
    job_id = uuid.uuid4()
    if started is not None and first_started is None and attempt == 1:
        first_started = started  # what the projection records on a first start
    conn.execute("INSERT INTO jobs (id, project, name, framework, task, dataset, params, priority, tags, status, "
                 "attempt, runner_id, created_at, updated_at, started_at, first_started_at, finished_at, version) "
                 "VALUES (%s, %s, 'j', %s, %s, '{}', '{}', %s, '{}', %s, %s, %s, %s, %s, %s, %s, %s, 1)",
                 (job_id, project, framework, task, priority, status, attempt if started else 0, runner, created,
                  finished or started or created, started, first_started, finished))
    return job_id


def add_runner(conn: psycopg.Connection, runner_id: str, first_seen: datetime, seen_at: datetime,
               gpus: int = 0) -> None:
    conn.execute("INSERT INTO runners_seen (runner_id, cpus, memory_mb, gpus, gpu_model, accepts_code, first_seen, "
                 "seen_at) VALUES (%s, 8, 16384, %s, %s, true, %s, %s)",
                 (runner_id, gpus, "H100" if gpus else None, first_seen, seen_at))


def test_jobs_by_status_and_priority_count_only_the_callers_project(client, db):
    for status, priority, n in (("queued", "high", 3), ("queued", "low", 2), ("running", "high", 1),
                                ("completed", "medium", 4), ("failed", "critical", 1), ("cancelled", "low", 1)):
        for i in range(n):
            started = ago(minutes=5) if status != "queued" else None
            add_job(db, status=status, priority=priority, created=ago(minutes=10 + i), started=started,
                    finished=ago(minutes=1) if status not in ("queued", "running") else None)
    add_job(db, status="queued", priority="high", project="other", created=ago(hours=5))  # never counted

    r = client.get(STATS)
    assert r.status_code == 200, r.text
    jobs = r.json()["jobs"]
    assert (jobs["total"], jobs["queued"], jobs["running"]) == (12, 5, 1)
    assert jobs["by_status"] == {"queued": 5, "running": 1, "completed": 4, "failed": 1, "cancelled": 1}
    rows = {p["priority"]: p for p in jobs["by_priority"]}
    assert [p["priority"] for p in jobs["by_priority"]] == ["critical", "high", "medium", "low"]
    assert rows["high"]["counts"] == {"queued": 3, "running": 1, "completed": 0, "failed": 0, "cancelled": 0}
    assert rows["low"]["total"] == 3 and rows["medium"]["oldest_queued_at"] is None
    oldest = datetime.fromisoformat(rows["high"]["oldest_queued_at"])  # the high job queued 12 min ago, not other's
    assert timedelta(minutes=11) < datetime.now(timezone.utc) - oldest < timedelta(minutes=13)


def test_duration_and_queue_wait_per_framework_and_task_match_numpy(client, db):
    rng = random.Random(3)
    durations, waits = {}, {}
    for key in (("lightgbm", "binary_classification"), ("pytorch", "regression")):
        durations[key], waits[key] = [], []
        for _ in range(23):
            wait, run = rng.uniform(0, 300), rng.uniform(5, 3000)
            created = ago(hours=rng.uniform(2, 48))
            started = created + timedelta(seconds=wait)
            add_job(db, framework=key[0], task=key[1], created=created, started=started,
                    finished=started + timedelta(seconds=run))
            durations[key].append(run)
            waits[key].append(wait)
    # a job requeued onto a second attempt: its wait ends at its first start, its duration is its last run
    created = ago(hours=3)
    add_job(db, created=created, first_started=created + timedelta(seconds=40), attempt=2,
            started=created + timedelta(seconds=900), finished=created + timedelta(seconds=1000))
    durations["lightgbm", "binary_classification"].append(100.0)
    waits["lightgbm", "binary_classification"].append(40.0)
    # one projected before first starts were recorded, on its second attempt: its first start is unknown
    add_job(db, created=created, attempt=2, started=created + timedelta(seconds=500),
            finished=created + timedelta(seconds=520))
    durations["lightgbm", "binary_classification"].append(20.0)
    # a running job waited; a failed one waited and ran, but only completed runs are durations
    add_job(db, status="running", created=ago(minutes=20), started=ago(minutes=15))
    add_job(db, status="failed", created=ago(minutes=50), started=ago(minutes=49), finished=ago(minutes=1))
    waits["lightgbm", "binary_classification"] += [300.0, 60.0]
    # outside the window, or another project's: none of them counts
    add_job(db, created=ago(days=9), started=ago(days=9) + timedelta(seconds=1), finished=ago(days=8))
    add_job(db, project="other", created=ago(hours=1), started=ago(minutes=1), finished=ago(seconds=1))

    r = client.get(STATS)
    assert r.status_code == 200, r.text
    assert r.json()["window_s"] == 7 * 86400
    rows = {(t["framework"], t["task"]): t for t in r.json()["timings"]}
    assert set(rows) == set(durations)
    for key, row in rows.items():
        assert row["completed"] == len(durations[key]) and row["started"] == len(waits[key])
        assert row["duration_mean_s"] == pytest.approx(np.mean(durations[key]), abs=0.01)
        assert row["duration_p95_s"] == pytest.approx(np.percentile(durations[key], 95), abs=0.01)
        assert row["queue_wait_mean_s"] == pytest.approx(np.mean(waits[key]), abs=0.5)  # two waits end "now"
        assert row["queue_wait_p95_s"] == pytest.approx(np.percentile(waits[key], 95), abs=0.5)


def test_the_window_bounds_the_timings_and_a_bad_one_is_a_422_naming_it(client, db):
    add_job(db, created=ago(hours=5), started=ago(hours=5) + timedelta(seconds=10), finished=ago(hours=4))
    add_job(db, created=ago(minutes=30), started=ago(minutes=29), finished=ago(minutes=19))
    (row,) = client.get(STATS, params={"window": "1h"}).json()["timings"]
    assert (row["completed"], row["started"]) == (1, 1)
    assert row["duration_mean_s"] == pytest.approx(600, abs=0.01) and row["queue_wait_mean_s"] == pytest.approx(60)
    assert client.get(STATS, params={"window": 86400}).json()["timings"][0]["completed"] == 2
    for bad in ("abc", "0", "30s", "91d", "1w"):
        r = client.get(STATS, params={"window": bad})
        assert r.status_code == 422, bad
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == "window"


def test_runners_show_capacity_current_use_and_last_hour_utilisation(client, db):
    add_runner(db, "r1", first_seen=ago(hours=2), seen_at=ago(seconds=1), gpus=1)
    add_runner(db, "r2", first_seen=ago(minutes=30), seen_at=ago(seconds=5))
    add_runner(db, "gone", first_seen=ago(hours=4), seen_at=ago(hours=3))  # not there in the last hour
    mine = add_job(db, status="running", created=ago(minutes=11), started=ago(minutes=10), runner="r1")
    add_job(db, created=ago(hours=2), started=ago(hours=2), finished=ago(minutes=30), runner="r1")
    add_job(db, status="running", project="other", created=ago(minutes=21), started=ago(minutes=20), runner="r2")
    db.execute("INSERT INTO model_exports (id, project, model_name, model_version, format, tolerance, status, "
               "runner_id, created_at, started_at, finished_at, updated_at, version) VALUES (%s, 'default', 'm', 1, "
               "'onnx', 0.0001, 'completed', 'r2', %s, %s, %s, %s, 1)",
               (uuid.uuid4(), ago(minutes=26), ago(minutes=25), ago(minutes=24), ago(minutes=24)))

    body = client.get(STATS).json()
    runners = {r["runner_id"]: r for r in body["runners"]}
    assert set(runners) == {"r1", "r2"}
    r1, r2 = runners["r1"], runners["r2"]
    assert (r1["cpus"], r1["memory_mb"], r1["gpus"], r1["gpu_model"], r1["live"]) == (8, 16384, 1, "H100", True)
    assert (r1["running"], r1["running_jobs"]) == (1, [str(mine)])
    assert (r2["running"], r2["running_jobs"]) == (1, [])  # busy with another project's job, which is not named
    # r1: there the whole hour, busy 30 min (the finished job) + 10 min (the running one)
    assert r1["present_s"] == pytest.approx(3600, abs=3) and r1["busy_s"] == pytest.approx(2400, abs=3)
    assert r1["utilisation"] == pytest.approx(2400 / 3600, abs=0.002)
    # r2: there 30 min, busy 20 min (other's job) + 1 min (the export)
    assert r2["present_s"] == pytest.approx(1800, abs=3) and r2["busy_s"] == pytest.approx(1260, abs=3)
    use = body["utilisation"]
    assert use["window_s"] == 3600 and use["runners"] == 2
    assert use["busy_s"] == pytest.approx(3660, abs=5) and use["capacity_s"] == pytest.approx(5400, abs=5)
    assert use["utilisation"] == pytest.approx(3660 / 5400, abs=0.002)
    assert use["project_busy_s"] == pytest.approx(2460, abs=5)  # r1's two jobs and the export


def test_no_runner_means_no_utilisation_rather_than_zero(client, db):
    use = client.get(STATS).json()["utilisation"]
    assert (use["runners"], use["capacity_s"], use["utilisation"]) == (0, 0, None)


def test_the_cli_prints_the_queue_the_runners_and_the_timings(client, services, db, cli_env, monkeypatch):
    add_runner(db, "runner-a", first_seen=ago(hours=2), seen_at=ago(seconds=1))
    add_job(db, status="queued", priority="high", created=ago(minutes=3))
    add_job(db, status="running", created=ago(minutes=40), started=ago(minutes=30), runner="runner-a")
    for minutes in (4, 6, 8):
        add_job(db, framework="pytorch", task="regression", created=ago(minutes=60),
                started=ago(minutes=60 - minutes), finished=ago(minutes=50 - minutes))
    transport = client._transport  # the in-process app, over HTTP semantics
    monkeypatch.setenv("TRAINYARD_TOKEN", admin_token(services.settings.data_dir))
    monkeypatch.delenv("TRAINYARD_PROJECT", raising=False)
    monkeypatch.setattr(api.cli.app, "TrainyardClient",
                        lambda *a, **kw: TrainyardClient("http://testserver", transport=transport))

    code, out = trainyard("stats")
    assert code == 0, out
    assert "project default: 1 queued, 1 running, 5 jobs" in out
    high = next(line for line in out.splitlines() if line.strip().startswith("high"))
    assert high.split() == ["high", "1", "0", "0", "0", "0", "1", "3.0", "min"]  # queued 3 minutes ago
    assert "utilisation, last hour: 50.0%" in out or "utilisation, last hour: 49.9%" in out
    runner = next(line for line in out.splitlines() if line.strip().startswith("runner-a"))
    assert "yes" in runner and "1 (1 yours)" in runner
    timing = next(line for line in out.splitlines() if line.strip().startswith("pytorch"))
    assert timing.split()[:4] == ["pytorch", "regression", "3", "10.0"]  # 3 completed, 10 min each

    code, out = trainyard("stats", "--json", "--window", "2h")
    assert code == 0 and json.loads(out)["window_s"] == 7200
    code, out = trainyard("stats", "--window", "forever")
    assert code == 1 and out.startswith("error: 422") and "window" in out
