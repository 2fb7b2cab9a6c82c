"""Retrying a failed or cancelled job on a live `trainyard up` (issue 19 item 7): `POST …/jobs/{id}/retry` submits a
new job with the original's spec and the overrides, checked and admitted exactly as a submit; the new job names its
original (`retry_of`) and the original its retries (`retried_by`, `retries`), both read from the events. Any other
state is a 409, another project's job a 404, and `trainyard retry` does the same from the CLI. One stack for the
module."""
from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from api.cli import cli
from tests.support.auth import bearer
from tests.support.stack import FINISHED, JOBS, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
TORCH = {"framework": "pytorch", "task": "binary_classification", "dataset": {"uri": "builtin://breast_cancer"}}


def retry(stack: Stack, job_id: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    return stack.http.post(f"{JOBS}/{job_id}/retry", json=body, **kw)


def accepted(r: httpx.Response, status: int = 202) -> str:
    assert r.status_code == status, r.text
    assert r.headers["location"] == f"{JOBS}/{r.json()['job_id']}"
    assert r.json()["status"] == "queued" or status == 200  # a repeat answers with the job as it is now
    return r.json()["job_id"]


def refused(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem.get("field") == field, problem
    return problem


@pytest.fixture(scope="module")
def cancelled(stack: Stack) -> str:
    """A PyTorch job that was running (a retry of it then was a 409) until it was cancelled."""
    job_id = stack.submit(**TORCH, params={"epochs": 10_000, "hidden_sizes": [16]}, tags=["retry"])
    stack.wait(job_id, lambda j: j["status"] != "queued", timeout=60)
    problem = refused(retry(stack, job_id), 409)
    assert "running" in problem["detail"] and "failed or cancelled" in problem["detail"]
    assert stack.http.delete(f"{JOBS}/{job_id}").status_code == 202
    assert stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=60)["status"] == "cancelled"
    return job_id


@pytest.fixture(scope="module")
def failed(stack: Stack) -> str:
    """A job whose dataset passes the submit's checks but fails at training (three classes for a binary task)."""
    data = stack.data_dir / "datasets"
    data.mkdir(exist_ok=True)
    (data / "three_classes.csv").write_text("x,y\n" + "".join(f"{i},{'abc'[i % 3]}\n" for i in range(60)))
    job_id = stack.submit(framework="lightgbm", task="binary_classification",
                          dataset={"uri": f"file://{data / 'three_classes.csv'}", "target": "y"})
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=60)
    assert job["status"] == "failed", job
    return job_id


def test_a_cancelled_job_retried_with_overrides_runs_and_each_names_the_other(stack: Stack, cancelled: str) -> None:
    key = f"retry-{uuid.uuid4()}"
    new = accepted(retry(stack, cancelled, {"params": {"epochs": 2}, "priority": "high"},
                         headers={"Idempotency-Key": key}))
    again = retry(stack, cancelled, {"params": {"epochs": 2}, "priority": "high"}, headers={"Idempotency-Key": key})
    assert accepted(again, 200) == new  # the same key: the same retry, nothing new
    refused(retry(stack, cancelled, {"params": {"epochs": 3}}, headers={"Idempotency-Key": key}), 409,
            "Idempotency-Key")

    job = stack.job(new)  # read-your-writes: visible right after the 202
    original = stack.job(cancelled)
    assert job["retry_of"] == cancelled and job["from_checkpoint"] is True and job["retries"] == []
    assert job["params"] == {"epochs": 2, "hidden_sizes": [16]} and job["priority"] == "high"
    assert (job["name"], job["framework"], job["task"], job["dataset"], job["tags"], job["timeout_s"]) == (
        original["name"], original["framework"], original["task"], original["dataset"], original["tags"],
        original["timeout_s"])
    assert original["retried_by"] == new and original["retries"] == [new] and original["retry_of"] is None
    assert original["status"] == "cancelled" and original["version"] == stack.job(cancelled)["version"]

    done = stack.wait(new, lambda j: j["status"] in FINISHED, timeout=90)
    assert done["status"] == "completed" and done["final_metrics"]["accuracy"] > 0.5, done
    refused(retry(stack, new), 409)  # a completed job is not retried
    assert "completed" in retry(stack, new).json()["detail"]

    # a second retry is the latest; both are listed, oldest first, and the list view shows the links too
    second = accepted(retry(stack, cancelled, {"params": {"epochs": 1}, "from_checkpoint": False}))
    assert stack.job(second)["from_checkpoint"] is False and stack.job(second)["priority"] == "medium"
    original = stack.job(cancelled)
    assert original["retried_by"] == second and original["retries"] == [new, second]
    listed = {j["job_id"]: j for j in stack.http.get(JOBS, params={"tag": "retry", "limit": 500}).json()["items"]}
    assert listed[cancelled]["retries"] == [new, second] and listed[second]["retry_of"] == cancelled


def test_a_failed_job_is_retried_with_its_spec(stack: Stack, failed: str) -> None:
    new = accepted(retry(stack, failed))  # no body at all: the original's spec as it was
    job = stack.job(new)
    assert job["retry_of"] == failed and job["dataset"] == stack.job(failed)["dataset"]
    assert stack.job(failed)["retried_by"] == new
    assert stack.wait(new, lambda j: j["status"] in FINISHED, timeout=60)["status"] == "failed"  # the same data


def test_overrides_are_checked_as_a_submits_params_are(stack: Stack, cancelled: str) -> None:
    before = stack.job(cancelled)["retries"]
    refused(retry(stack, cancelled, {"params": {"no_such_param": 1}}), 422, "params.no_such_param")
    refused(retry(stack, cancelled, {"params": {"epochs": -1}}), 422, "params.epochs")
    refused(retry(stack, cancelled, {"params": {"hidden_sizes": ["a\u0000b"]}}), 422, "params.hidden_sizes.0")
    infinite = stack.http.post(f"{JOBS}/{cancelled}/retry", content=b'{"params": {"lr": Infinity}}',
                               headers={"content-type": "application/json"})
    refused(infinite, 422, "params.lr")
    refused(retry(stack, cancelled, {"priority": "urgent"}), 422, "priority")
    refused(retry(stack, cancelled, {"from_checkpoint": "yes"}), 422, "from_checkpoint")
    refused(retry(stack, cancelled, {"resources": {"gpus": 1}}), 422, "resources")
    refused(retry(stack, str(uuid.uuid4())), 404, "job_id")
    refused(retry(stack, "not-a-uuid"), 422, "job_id")
    assert stack.job(cancelled)["retries"] == before  # nothing was submitted


def test_another_projects_job_is_not_found_and_a_viewer_may_not_retry(stack: Stack, cancelled: str) -> None:
    project, password = f"rt{uuid.uuid4().hex[:8]}", "a long enough passphrase for retries"
    for path, body in (("/api/v1/projects", {"name": project}),
                       ("/api/v1/users", {"name": f"{project}-eng", "password": password}),
                       ("/api/v1/users", {"name": f"{project}-viewer", "password": password})):
        assert stack.http.post(path, json=body).status_code == 201
    for name, project_of, role in ((f"{project}-eng", project, "engineer"), (f"{project}-viewer", "default", "viewer")):
        r = stack.http.put(f"/api/v1/projects/{project_of}/members/{name}", json={"role": role})
        assert r.status_code == 200, r.text

    def token(name: str) -> str:
        r = httpx.post(f"{stack.http.base_url}/api/v1/auth/token", data={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    other = {**bearer(token(f"{project}-eng")), "X-Trainyard-Project": project}
    problem = refused(retry(stack, cancelled, headers=other), 404, "job_id")
    assert problem["detail"] == f"no training job {cancelled}"  # as for an id that names nothing
    refused(retry(stack, cancelled, headers={**other, "X-Trainyard-Project": "default"}), 404)  # not a member
    viewer = {**bearer(token(f"{project}-viewer")), "X-Trainyard-Project": "default"}
    assert retry(stack, cancelled, headers=viewer).status_code == 403  # job.submit is an engineer's


def test_trainyard_retry_submits_the_retry_and_job_shows_the_links(stack: Stack, cancelled: str) -> None:
    runner = CliRunner(env=stack.cli_env())
    result = runner.invoke(cli, ["retry", cancelled[:8], "-p", "epochs=1", "-p", "hidden_sizes=[8]",
                                 "--priority", "low", "--no-from-checkpoint"])
    assert result.exit_code == 0, result.output
    new = result.output.strip()
    job = stack.job(new)
    assert (job["retry_of"], job["params"], job["priority"], job["from_checkpoint"]) == (
        cancelled, {"epochs": 1, "hidden_sizes": [8]}, "low", False)

    shown = runner.invoke(cli, ["job", cancelled])
    assert shown.exit_code == 0 and f"retried by  {new}" in shown.output, shown.output
    assert f"retry of  {cancelled}" in runner.invoke(cli, ["job", new]).output

    stack.wait(new, lambda j: j["status"] in FINISHED, timeout=90)
    result = runner.invoke(cli, ["retry", new])  # completed: one error line
    assert result.exit_code == 1 and result.output.startswith("error: ") and "completed" in result.output, \
        result.output
    result = runner.invoke(cli, ["retry", cancelled, "-p", "epochs"])
    assert result.exit_code == 2 and "name=value" in result.output


def test_a_retry_is_admitted_by_the_projects_quotas_as_a_submit_is(stack: Stack) -> None:
    project = f"rq{uuid.uuid4().hex[:8]}"
    assert stack.http.post("/api/v1/projects", json={"name": project}).status_code == 201
    in_project = {"X-Trainyard-Project": project}
    r = stack.http.post(JOBS, json={"name": "q", **TORCH, "params": {"epochs": 10_000}}, headers=in_project)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert stack.http.delete(f"{JOBS}/{job_id}", headers=in_project).status_code == 202
    eventually(lambda: stack.http.get(f"{JOBS}/{job_id}", headers=in_project).json()["status"] == "cancelled",
               timeout=60, interval=0.1, message=f"job {job_id} was never cancelled")
    r = stack.http.put(f"/api/v1/projects/{project}/quotas", json={"quotas": {"max_queued_jobs": 0}})
    assert r.status_code == 200, r.text
    over = retry(stack, job_id, headers=in_project)
    refused(over, 429, "quotas.max_queued_jobs")
    assert over.headers["Retry-After"]
