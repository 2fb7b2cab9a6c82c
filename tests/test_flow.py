"""End to end on real engines: `trainyard up` (serve + 2 runners) against PostgreSQL, NATS and chDB.

Each test tells one story a user would notice: a job trains and its metrics are queryable, a cancel
stops it, a killed runner or a killed serve process loses nothing and counts nothing twice.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.support.stack import FINISHED, JOBS, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def test_up_reports_where_every_part_listens(stack: Stack) -> None:
    ep = stack.endpoints()
    assert {"api", "postgres", "nats", "clickhouse", "data_dir"} <= set(ep)
    assert ep["clickhouse"].startswith("chdb://")
    assert len(ep["pids"]["runners"]) == 2


def test_a_lightgbm_job_trains_and_its_metrics_are_queryable(stack: Stack) -> None:
    job_id = stack.submit(framework="lightgbm", task="binary_classification",
                          dataset={"uri": "builtin://breast_cancer"}, params={"n_estimators": 60}, tags=["e2e"])
    assert stack.http.get(f"{JOBS}/{job_id}").status_code == 200  # read-your-writes: no 404 right after 202
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED)
    assert job["status"] == "completed", job
    assert job["final_metrics"]["auc"] > 0.95 and {"accuracy", "logloss"} <= set(job["final_metrics"])
    assert job["progress"]["percentage_complete"] == 100.0 and job["attempt"] == 1
    host, _, pid = job["runner_id"].rpartition(":")
    assert host and int(pid) in stack.endpoints()["pids"]["runners"]
    path = Path(urlparse(job["artifact"]["uri"]).path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == job["artifact"]["sha256"]

    names = stack.http.get(f"{JOBS}/{job_id}/metrics").json()["names"]
    assert {"train_loss", "valid_loss", "valid_auc"} <= set(names)
    points = stack.full_series(job_id, "valid_loss", 60)
    latest = stack.http.get(f"{JOBS}/{job_id}/metrics").json()["latest"]
    assert latest["valid_loss"] == {"step": 60, "value": points[-1]["value"]}
    assert [p["step"] for p in points] == list(range(1, 61))
    small = stack.series(job_id, "valid_loss", max_points=8)
    values = [p["value"] for p in points]
    assert len(small) <= 8 and small[0]["step"] == 1 and small[-1]["step"] == 60
    assert min(values) in [p["value"] for p in small] and max(values) in [p["value"] for p in small]

    listed = stack.http.get(JOBS, params={"tag": "e2e", "status": "completed"}).json()
    assert listed["total"] >= 1 and job_id in [j["job_id"] for j in listed["items"]]


def test_a_pytorch_job_trains_and_an_external_subscriber_hears_it_complete(stack: Stack) -> None:
    import nats

    async def scenario() -> tuple[str, list[dict]]:
        nc = await nats.connect(stack.nats_url)
        heard: list[dict] = []

        async def hear(msg: Any) -> None:
            heard.append(json.loads(msg.data))

        await nc.subscribe("trainyard.v1.training_job.completed", cb=hear)
        job_id = await asyncio.to_thread(stack.submit, framework="pytorch", task="regression",
                                         dataset={"uri": "builtin://diabetes"}, params={"epochs": 15})
        await asyncio.to_thread(eventually, lambda: any(h["aggregate_id"] == job_id for h in heard), timeout=120,
                                message=f"the subscriber never heard job {job_id} complete")
        await nc.close()
        return job_id, heard

    job_id, heard = asyncio.run(scenario())
    event = next(h for h in heard if h["aggregate_id"] == job_id)
    assert event["type"] == "training_job.completed" and {"rmse", "mae", "r2"} <= set(event["payload"]["final_metrics"])
    assert {"event_id", "aggregate_version", "occurred_at", "trace_id"} <= set(event)
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED)
    assert job["status"] == "completed" and job["final_metrics"] == event["payload"]["final_metrics"]
    assert len(stack.full_series(job_id, "train_loss", 15)) == 15


def test_an_idempotency_key_returns_the_same_job(stack: Stack) -> None:
    body = {"name": "idem", "framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://diabetes"},
            "params": {"n_estimators": 5}}
    first = stack.http.post(JOBS, json=body, headers={"Idempotency-Key": "idem-1"})
    again = stack.http.post(JOBS, json=body, headers={"Idempotency-Key": "idem-1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["job_id"] == again.json()["job_id"]
    other = stack.http.post(JOBS, json={**body, "name": "other"}, headers={"Idempotency-Key": "idem-1"})
    assert other.status_code == 409 and other.headers["content-type"] == "application/problem+json"


def test_cancel_stops_a_running_job_within_five_seconds(stack: Stack) -> None:
    job_id = stack.submit(framework="pytorch", task="binary_classification",
                          dataset={"uri": "builtin://breast_cancer"}, params={"epochs": 10_000})
    stack.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["current_step"] > 0, timeout=60)
    r = stack.http.delete(f"{JOBS}/{job_id}")
    assert r.status_code == 202
    asked = time.monotonic()
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=30)
    assert job["status"] == "cancelled" and time.monotonic() - asked < 5
    assert stack.http.delete(f"{JOBS}/{job_id}").status_code == 409


def test_a_runner_killed_mid_job_loses_nothing(stack: Stack) -> None:
    epochs = 400
    job_id = stack.submit(framework="pytorch", task="multiclass_classification",
                          dataset={"uri": "builtin://wine"}, params={"epochs": epochs})
    job = stack.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["current_step"] >= 5, timeout=60)
    first_runner = job["runner_id"]
    os.kill(int(first_runner.rpartition(":")[2]), signal.SIGKILL)
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=180)
    assert job["status"] == "completed" and job["attempt"] == 2 and job["runner_id"] != first_runner
    points = stack.full_series(job_id, "valid_loss", epochs)
    assert [p["step"] for p in points] == list(range(1, epochs + 1))  # the final attempt's series is whole


def test_serve_killed_mid_stream_restarts_and_counts_nothing_twice(stack: Stack) -> None:
    epochs = 300
    job_id = stack.submit(framework="pytorch", task="binary_classification",
                          dataset={"uri": "builtin://breast_cancer"}, params={"epochs": epochs})
    stack.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["current_step"] >= 5, timeout=60)
    os.kill(stack.endpoints()["pids"]["serve"], signal.SIGKILL)  # relay, projectors and API die together
    time.sleep(0.5)
    stack.wait_ready()
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=180)
    assert job["status"] == "completed"
    points = stack.full_series(job_id, "train_loss", epochs)
    assert [p["step"] for p in points] == list(range(1, epochs + 1))
    listed = stack.http.get(JOBS, params={"limit": 500}).json()
    assert [j["job_id"] for j in listed["items"]].count(job_id) == 1


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"framework": "xgboost", "task": "regression", "dataset": {"uri": "builtin://diabetes"}}, 422, "framework"),
    ({"framework": "lightgbm", "task": "ranking", "dataset": {"uri": "builtin://diabetes"}}, 422, "task"),
    ({"framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://mnist"}}, 422, "dataset.uri"),
    ({"framework": "lightgbm", "task": "regression", "dataset": {"uri": "file:///nope/x.csv", "target": "y"}}, 422, "dataset.uri"),
    ({"framework": "pytorch", "task": "regression", "dataset": {"uri": "builtin://diabetes"}, "params": {"epochs": "ten"}}, 422, "params.epochs"),
    ({"framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://diabetes"}, "priority": "urgent"}, 422, "priority"),
    ({"framework": "lightgbm", "task": "regression"}, 422, "dataset"),
])
def test_bad_submissions_get_a_problem_naming_the_field(stack: Stack, body: dict, status: int, field: str) -> None:
    r = stack.http.post(JOBS, json={"name": "bad", **body})
    assert r.status_code == status and r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == field


def test_a_file_dataset_without_its_target_column_is_refused(stack: Stack) -> None:
    (stack.data_dir / "datasets").mkdir(exist_ok=True)
    csv = stack.data_dir / "datasets" / "d.csv"
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n")
    r = stack.http.post(JOBS, json={"name": "f", "framework": "lightgbm", "task": "binary_classification",
                                    "dataset": {"uri": f"file://{csv}", "target": "label"}})
    assert r.status_code == 422 and r.json()["field"] == "dataset.target"


def test_malformed_requests_and_unknown_jobs_are_4xx(stack: Stack) -> None:
    r = stack.http.post(JOBS, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    assert stack.http.get(f"{JOBS}/00000000-0000-0000-0000-000000000000").status_code == 404
    assert stack.http.get(f"{JOBS}/not-a-uuid").status_code == 422
    assert stack.http.get(JOBS, params={"limit": 0}).status_code == 422
    assert stack.http.delete(f"{JOBS}/00000000-0000-0000-0000-000000000000").status_code == 404


def test_malformed_messages_go_to_the_dead_letter_subjects(stack: Stack) -> None:
    import nats

    async def scenario() -> tuple[dict, list[bytes]]:
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        marker = f"garbage-{time.time_ns()}".encode()
        await js.publish("trainyard.v1.telemetry.metrics", b'{"batch_id": "x", "points": "' + marker + b'"}')
        reply = json.loads((await nc.request("trainyard.rpc.runner.report", marker, timeout=10)).data)
        seen: list[bytes] = []

        async def dead_letter(msg: Any) -> None:
            seen.append(msg.data)

        await js.subscribe("trainyard.v1.dlq.>", stream="TRAINYARD_DLQ", ordered_consumer=True, cb=dead_letter)
        await asyncio.to_thread(eventually, lambda: sum(marker in d for d in seen) >= 2, timeout=10,
                                message="the metric batch and the runner report were not both dead-lettered")
        await nc.close()
        return reply, [d for d in seen if marker in d]

    reply, dead = asyncio.run(scenario())
    assert reply["ok"] is False and reply["code"] == "invalid"
    assert len(dead) == 2  # the metric batch and the runner report, each kept once


def test_the_cli_submits_watches_and_lists(stack: Stack) -> None:
    env = stack.cli_env()
    cli = [sys.executable, "-m", "entrypoints.cli"]
    out = subprocess.run([*cli, "submit", "--framework", "lightgbm", "--task", "regression", "--dataset",
                          "builtin://diabetes", "-p", "n_estimators=20", "--tag", "cli", "--watch"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.splitlines()[0].strip()
    assert '"status": "completed"' in out.stdout and '"rmse"' in out.stdout
    listed = subprocess.run([*cli, "jobs", "--tag", "cli"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and job_id[:8] in listed.stdout
    bad = subprocess.run([*cli, "submit", "--framework", "sklearn", "--task", "regression", "--dataset",
                          "builtin://diabetes"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "framework" in bad.stdout


def test_critical_work_is_taken_before_low_work_that_waited_longer(stack: Stack) -> None:
    forever = {"framework": "pytorch", "task": "binary_classification",
               "dataset": {"uri": "builtin://breast_cancer"}, "params": {"epochs": 10_000}}
    quick = {"framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://diabetes"},
             "params": {"n_estimators": 5}}
    blockers = [stack.submit(**forever) for _ in range(2)]  # both runners busy
    for b in blockers:
        stack.wait(b, lambda j: j["status"] == "running", timeout=60)
    low = stack.submit(**quick, priority="low")
    critical = stack.submit(**quick, priority="critical")
    time.sleep(0.5)
    assert stack.job(low)["status"] == stack.job(critical)["status"] == "queued"
    assert stack.http.delete(f"{JOBS}/{blockers[0]}").status_code == 202  # one runner frees up
    first = stack.wait(critical, lambda j: j["status"] == "completed", timeout=60)
    assert stack.http.delete(f"{JOBS}/{blockers[1]}").status_code == 202
    last = stack.wait(low, lambda j: j["status"] in FINISHED, timeout=60)
    assert last["status"] == "completed"
    assert first["started_at"] < last["started_at"]  # the freed runner took critical although low waited longer


def test_the_openapi_document_describes_problem_responses(stack: Stack) -> None:
    spec = stack.http.get("/openapi.json").json()
    submit = spec["paths"][JOBS]["post"]["responses"]
    assert {"202", "400", "409", "422"} <= set(submit)
    assert "application/problem+json" in submit["422"]["content"]
    assert "field" in spec["components"]["schemas"]["ProblemPublic"]["properties"]
    assert stack.http.get("/docs").status_code == 200 and stack.http.get("/healthz").json() == {"status": "ok"}


def test_a_kfold_job_with_early_stopping_keeps_its_best_round_and_reports_its_evaluation(
        stack: Stack, cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.cli import trainyard

    job_id = stack.submit(framework="lightgbm", task="multiclass_classification", dataset={"uri": "builtin://wine"},
                          params={"n_estimators": 300, "learning_rate": 0.5, "early_stopping_rounds": 5},
                          validation={"strategy": "kfold", "k": 3})
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED)
    assert job["status"] == "completed", job
    assert job["validation"] == {"strategy": "kfold", "k": 3}
    assert 5 < job["best_step"] < 300 and job["best_step"] == job["artifact"]["best_step"]
    assert {"accuracy", "accuracy_sd", "logloss", "logloss_sd"} <= set(job["final_metrics"])
    report = stack.http.get(f"{JOBS}/{job_id}/evaluation").json()
    assert len(report["folds"]["per_fold"]) == 3 and report["splits"]["validation"]["rows"] == 178
    assert report["folds"]["mean"]["accuracy"] == pytest.approx(job["final_metrics"]["accuracy"])
    assert report["splits"]["validation"]["confusion_matrix"]["labels"] == ["class_0", "class_1", "class_2"]
    compared = stack.http.get("/api/v1/experiments/compare", params={"job_ids": job_id}).json()["runs"][0]
    assert compared["evaluation"]["best_step"] == job["best_step"] and compared["evaluation"]["folds"]["sd"]

    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(stack.data_dir))
    code, output = trainyard("eval", job_id, "--api", stack.endpoints()["api"])
    assert code == 0, output
    assert "confusion matrix" in output and "mean ± sd" in output and "class_2" in output


def test_a_validation_that_cannot_split_the_dataset_is_a_422_naming_the_field(stack: Stack) -> None:
    base = {"name": "v", "framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://diabetes"}}
    for validation, field in [({"strategy": "kfold", "k": 1}, "validation.k"),
                              ({"strategy": "kfold", "test_fraction": 0.2}, "validation.test_fraction"),
                              ({"strategy": "time_series", "time_column": "day"}, "validation.time_column"),
                              ({"strategy": "holdout", "valid_fraction": 0.5, "test_fraction": 0.3},
                               "validation.test_fraction")]:
        r = stack.http.post(JOBS, json={**base, "validation": validation})
        assert r.status_code == 422 and r.json()["field"] == field, (validation, r.text)
    held = stack.submit(**base, params={"n_estimators": 20}, validation={"strategy": "time_series",
                                                                         "test_fraction": 0.2, "gap": 3})
    job = stack.wait(held, lambda j: j["status"] in FINISHED)
    assert job["status"] == "completed" and {"rmse", "test_rmse", "test_mape"} <= set(job["final_metrics"]), job


def test_a_forecasting_job_beats_seasonal_naive_and_a_wrong_forecast_block_is_a_422(stack: Stack) -> None:
    demand = {"uri": "builtin://demand", "forecast": {"horizon": 14, "lags": [1, 7, 14], "rolling": [7]}}
    job_id = stack.submit(framework="lightgbm", task="forecasting", dataset=demand, params={"n_estimators": 150})
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED)
    assert job["status"] == "completed", job
    assert job["final_metrics"]["skill_vs_seasonal_naive"] > 0 and job["final_metrics"]["test_skill_vs_seasonal_naive"] > 0
    assert job["dataset"]["forecast"]["horizon"] == 14  # the recipe is the model's lineage
    report = stack.http.get(f"{JOBS}/{job_id}/evaluation").json()
    assert report["baseline"]["kind"] == "seasonal_naive" and report["splits"]["test"]["rows"] == 4 * 14
    for body, field in [({"framework": "pytorch", "task": "forecasting", "dataset": demand}, "framework"),
                        ({"framework": "lightgbm", "task": "regression",
                          "dataset": {"uri": "builtin://diabetes", "forecast": {"horizon": 3}}}, "dataset.forecast"),
                        ({"framework": "lightgbm", "task": "forecasting", "dataset": demand,
                          "validation": {"strategy": "kfold"}}, "validation"),
                        ({"framework": "lightgbm", "task": "forecasting",
                          "dataset": {**demand, "forecast": {"horizon": 0}}}, "dataset.forecast.horizon")]:
        r = stack.http.post(JOBS, json={"name": "f", **body})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
