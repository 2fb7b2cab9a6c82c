"""Per-project quotas on real PostgreSQL (in-process app, every read model running beside it): an admin sets them
as an event with a reason, usage shows use against each, and a request over a hard quota is a 429 problem naming
the quota, its limit and its use (Retry-After where waiting helps). The running-jobs quota keeps a job queued:
a runner's claim is answered `wait` and nothing is recorded."""
from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from commands.reports import ReportHandler
from tests.support.tenants import isolated_app, make_tenants

QUICK = {"framework": "lightgbm", "task": "binary_classification", "dataset": {"uri": "builtin://breast_cancer"},
         "params": {"n_estimators": 5}}


@pytest.fixture(scope="module")
def app(module_database_url: str, clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root: Path = tmp_path_factory.mktemp("quota-datasets")
    with isolated_app(module_database_url, clickhouse.path.parent, root) as (client, services):
        yield client, services, make_tenants(client)


def set_quotas(client: Any, tenants: Any, quotas: dict[str, Any], project: str = "alpha") -> Any:
    return client.put(f"/api/v1/projects/{project}/quotas", json={"quotas": quotas, "reason": "test budget"},
                      headers=tenants.headers(project, "admin"))


def test_quotas_are_set_by_admins_and_usage_shows_them(app: Any) -> None:
    client, services, tenants = app
    r = set_quotas(client, tenants, {"max_queued_jobs": 5}, project="beta")
    assert r.status_code == 200 and r.json()["quotas"] == {"max_queued_jobs": 5.0}, r.text
    assert client.put("/api/v1/projects/beta/quotas", json={"quotas": {"max_queued_jobs": 9}},
                      headers=tenants.headers("beta", "deployer")).status_code == 403
    bad = set_quotas(client, tenants, {"max_gpus": 3}, project="beta")
    assert bad.status_code == 422 and bad.json()["field"] == "quotas.max_gpus", bad.text
    bad = set_quotas(client, tenants, {"max_queued_jobs": -1}, project="beta")
    assert bad.status_code == 422 and bad.json()["field"] == "quotas.max_queued_jobs"
    use = client.get("/api/v1/projects/beta/usage", headers=tenants.headers("beta", "viewer")).json()["quotas"]
    assert use["max_queued_jobs"]["limit"] == 5 and use["max_queued_jobs"]["used"] == 0
    assert use["max_running_jobs"]["limit"] is None
    assert client.get("/api/v1/projects/beta/usage", headers=tenants.headers("alpha", "viewer")).status_code == 404


def test_a_submit_over_the_queued_jobs_quota_is_429_and_other_projects_are_not_held(app: Any) -> None:
    client, services, tenants = app
    assert set_quotas(client, tenants, {"max_queued_jobs": 1}).status_code == 200
    alpha = tenants.headers("alpha", "engineer")
    first = client.post("/api/v1/training/jobs", json={"name": "q1", **QUICK}, headers=alpha)
    assert first.status_code == 202, first.text  # queued: no runner here
    over = client.post("/api/v1/training/jobs", json={"name": "q2", **QUICK}, headers=alpha)
    assert over.status_code == 429, over.text
    body = over.json()
    assert (body["quota"], body["limit"], body["used"], body["field"]) == (
        "max_queued_jobs", 1.0, 1, "quotas.max_queued_jobs")
    assert over.headers["content-type"].startswith("application/problem+json") and over.headers["Retry-After"]
    beta = client.post("/api/v1/training/jobs", json={"name": "b", **QUICK}, headers=tenants.headers("beta", "engineer"))
    assert beta.status_code == 202
    set_quotas(client, tenants, {})


def test_the_running_jobs_quota_keeps_a_job_queued(app: Any) -> None:
    client, services, tenants = app
    assert set_quotas(client, tenants, {"max_running_jobs": 0}).status_code == 200
    job_id = client.post("/api/v1/training/jobs", json={"name": "waits", **QUICK},
                         headers=tenants.headers("alpha", "engineer")).json()["job_id"]
    from api.quotas import may_start

    handler = ReportHandler(services.app, services.leases, may_start=lambda project: may_start(services, project))
    claim = {"type": "claim", "job_id": job_id, "lease": "a-lease-token-of-24-chars", "runner_id": "r:1",
             "report_id": str(uuid.uuid4())}
    reply = handler.handle(json.dumps(claim).encode())
    assert (reply.ok, reply.code) == (False, "wait") and "running-jobs quota" in reply.error
    assert services.app.get_job(uuid.UUID(job_id)).status == "queued"
    set_quotas(client, tenants, {"max_running_jobs": 1})
    reply = handler.handle(json.dumps({**claim, "report_id": str(uuid.uuid4())}).encode())
    assert reply.ok and reply.status == "running"
    set_quotas(client, tenants, {})


def test_uploads_over_the_storage_quota_are_429(app: Any) -> None:
    client, services, tenants = app
    csv = "a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(50))
    assert set_quotas(client, tenants, {"upload_bytes": len(csv) + 10}).status_code == 200
    engineer = tenants.headers("alpha", "engineer")
    ok = client.post("/api/v1/datasets", files={"file": ("one.csv", io.BytesIO(csv.encode()), "text/csv")},
                     headers=engineer)
    assert ok.status_code == 201, ok.text
    over = client.post("/api/v1/datasets", files={"file": ("two.csv", io.BytesIO(csv.encode()), "text/csv")},
                       headers=engineer)
    assert over.status_code == 429 and over.json()["quota"] == "upload_bytes"
    set_quotas(client, tenants, {})


def test_quota_changes_are_events_with_actor_and_reason(app: Any) -> None:
    client, services, tenants = app
    set_quotas(client, tenants, {"max_running_studies": 2})
    with services.pool.connection() as conn:
        rows = conn.execute("SELECT convert_from(state, 'UTF8') FROM trainingapplication_events "
                            "WHERE topic LIKE %s", ("%Project.QuotasSet%",)).fetchall()
    assert any('"test budget"' in r[0] and "max_running_studies" in r[0] for r in rows)


def test_the_api_schema_names_every_quota() -> None:
    from api.schemas.identity import QuotaLimits
    from domain.quotas import QUOTAS

    assert set(QuotaLimits.model_fields) == set(QUOTAS)
