"""GET …/jobs/{id}/metrics?names=: several series in one request, on the real app (PostgreSQL, chDB, the read
models running), the points stored as the metrics projector stores them."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from projections.telemetry.metric_store import MetricPoint, MetricStore
from tests.support.tenants import isolated_app

JOBS = "/api/v1/training/jobs"


@pytest.fixture(scope="module")
def client(module_database_url: str, clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # chDB allows one data path per process: share the session's (data_dir/chdb is the clickhouse fixture's path)
    with isolated_app(module_database_url, clickhouse.path.parent, tmp_path_factory.mktemp("root")) as (c, _):
        yield c


def test_several_series_in_one_request(client: Any, clickhouse: Any) -> None:
    r = client.post(JOBS, json={"name": "series", "framework": "lightgbm", "task": "binary_classification",
                                "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}})
    job_id = r.json()["job_id"]
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    MetricStore(clickhouse).insert([MetricPoint(job_id, 1, name, s, s * k, t0 + timedelta(seconds=s))
                                    for k, name in ((1.0, "loss"), (2.0, "acc")) for s in range(5_000)]
                                   + [MetricPoint(job_id, 2, "loss", s, -1.0, t0) for s in range(3)],
                                   batch_id=f"{job_id}-a")

    body = client.get(f"{JOBS}/{job_id}/metrics", params={"names": "acc,loss,nope,acc", "max_points": 8}).json()
    assert [(s["name"], s["attempt"]) for s in body["series"]] == [("acc", 1), ("loss", 2)]  # latest attempts
    assert body["missing"] == ["nope"] and body["names"] == ["acc", "loss"] and body["latest"]["acc"]["step"] == 4999
    acc = body["series"][0]["points"]
    assert len(acc) <= 8 and acc[0]["step"] == 0
    assert acc[-1] == {"step": 4999, "value": 9998.0, "ts": "2025-01-01T01:23:19Z"}
    assert [p["value"] for p in body["series"][1]["points"]] == [-1.0] * 3

    one = client.get(f"{JOBS}/{job_id}/metrics", params={"names": "loss", "attempt": 1, "max_points": 8}).json()
    alone = client.get(f"{JOBS}/{job_id}/metrics/loss", params={"attempt": 1, "max_points": 8}).json()
    assert one["series"] == [alone]  # the same answer as the one-series route
    assert set(client.get(f"{JOBS}/{job_id}/metrics").json()) == {"job_id", "names", "latest"}  # no names: as before

    from api.client import TrainyardClient  # the Python client asks the same

    ty = TrainyardClient("http://testserver", transport=client._transport, project="default",
                         token=client.headers["Authorization"].removeprefix("Bearer "))
    assert ty.metric_series(job_id, ["acc", "loss", "nope", "acc"], max_points=8) == body
    assert ty.metric_series(job_id, ["loss"], max_points=8, attempt=1)["series"] == [alone]
