"""Training logs end to end on a live `trainyard up` stack: a runner captures what a job prints, logs and raises,
ships it on `trainyard.v1.telemetry.logs`, the LogsProjector stores it in ClickHouse, and the API and `trainyard
logs` read it back. One stack for the module."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from api.cli import cli
from tests.support.stack import JOBS, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
LIGHTGBM = {"framework": "lightgbm", "task": "binary_classification", "dataset": {"uri": "builtin://breast_cancer"}}


def logs(stack: Stack, job_id: str, **params: Any) -> list[dict[str, Any]]:
    r = stack.http.get(f"{JOBS}/{job_id}/logs", params=params)
    assert r.status_code == 200, r.text
    return r.json()["lines"]


def publish(stack: Stack, payloads: list[bytes]) -> None:
    async def main() -> None:
        nc = await nats.connect(stack.nats_url)
        try:
            for data in payloads:
                await nc.jetstream().publish("trainyard.v1.telemetry.logs", data)
        finally:
            await nc.close()
    asyncio.run(main())


def test_a_lightgbm_jobs_output_is_readable_while_it_runs_and_after(stack: Stack) -> None:
    long_id = stack.submit(**LIGHTGBM, params={"n_estimators": 20_000})
    job_id = stack.submit(**LIGHTGBM, params={"n_estimators": 50})

    def lightgbm_said() -> bool:
        return any(line["message"].startswith("[LightGBM] [Info]") for line in logs(stack, long_id))
    eventually(lightgbm_said, timeout=60, interval=0.2, message="LightGBM's output never showed in the logs")
    assert stack.job(long_id)["status"] == "running"
    assert stack.http.delete(f"{JOBS}/{long_id}").status_code == 202

    stack.wait(job_id, lambda j: j["status"] == "completed", timeout=120)

    def all_landed() -> list[dict[str, Any]]:  # the last batch may land a moment after the job shows completed
        lines = logs(stack, job_id, limit=10_000)
        return lines if any("run 1 completed" in line["message"] for line in lines) else []
    lines = eventually(all_landed, timeout=10, interval=0.1, message="the job's last log lines never landed")
    assert any("Start training from score" in line["message"] for line in lines)
    assert [(x["attempt"], x["seq"]) for x in lines] == sorted((x["attempt"], x["seq"]) for x in lines)
    assert {x["stream"] for x in lines} >= {"stdout"} and {x["level"] for x in lines} >= {"info"}
    warned = logs(stack, job_id, level="warning", tail=3)
    assert len(warned) == 3 and all(x["level"] in ("warning", "error", "critical") for x in warned)
    text = stack.http.get(f"{JOBS}/{job_id}/logs", params={"q": "Total Bins"}, headers={"Accept": "text/plain"})
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.count("\n") == 1 and " INFO [stdout] [LightGBM] [Info] Total Bins " in text.text

    bad = stack.http.get(f"{JOBS}/{job_id}/logs", params={"level": "loud"})
    assert bad.status_code == 422 and bad.json()["field"] == "level"
    bad = stack.http.get(f"{JOBS}/{job_id}/logs", params={"q": "a\u0000b"})
    assert bad.status_code == 422 and bad.json()["field"] == "q"

    # the CLI, by the short id
    result = CliRunner(env=stack.cli_env()).invoke(cli, ["logs", job_id[:8], "--tail", "5", "--level", "info"])
    assert result.exit_code == 0, result.output
    printed = result.output.strip().splitlines()
    assert len(printed) == 5 and all(" [stdout] " in p or " [logging] " in p for p in printed), printed
    assert printed[-1].endswith(lines[-1]["message"])
    result = CliRunner(env=stack.cli_env()).invoke(cli, ["logs", job_id, "-f", "--tail", "1"])
    assert result.exit_code == 0 and result.output.strip().endswith(lines[-1]["message"]), result.output


def test_a_failed_jobs_traceback_is_in_its_logs_when_it_shows_failed(stack: Stack) -> None:
    data = stack.data_dir / "datasets"
    data.mkdir(exist_ok=True)
    (data / "three_classes.csv").write_text("x,y\n" + "".join(f"{i},{'abc'[i % 3]}\n" for i in range(60)))
    job_id = stack.submit(framework="lightgbm", task="binary_classification",
                          dataset={"uri": f"file://{data / 'three_classes.csv'}", "target": "y"})
    job = stack.wait(job_id, lambda j: j["status"] in ("completed", "failed", "cancelled"), timeout=60)
    assert job["status"] == "failed" and "exactly 2 classes" in job["error"]
    errors = logs(stack, job_id, level="error")  # no waiting: flushed before the failure was reported
    assert errors[0]["message"] == "Traceback (most recent call last):", errors
    assert "exactly 2 classes" in errors[-2]["message"] and errors[-2]["stream"] == "stderr"
    assert any("lightgbm_trainer.py" in x["message"] for x in errors)
    assert errors[-1]["message"] == "training run 1 failed" and errors[-1]["stream"] == "logging"
    assert logs(stack, job_id)[0]["message"].startswith("training run 1 started on runner ")


def test_hostile_log_batches_are_dead_lettered_and_the_next_flows(stack: Stack) -> None:
    job_id = stack.submit(**LIGHTGBM, params={"n_estimators": 5})
    stack.wait(job_id, lambda j: j["status"] == "completed", timeout=60)
    poisoned = stack.http.get("/readyz").json()["stages"]["logs-projector"]["poisoned"]

    def batch(lines: Any, **over: Any) -> bytes:
        return json.dumps({"batch_id": str(uuid.uuid4()), "job_id": job_id, "attempt": 9, "runner_id": "evil:1",
                           "lines": lines, **over}).encode()

    def line(seq: Any, message: Any = "x", **over: Any) -> dict[str, Any]:
        # now: a line older than the log retention (30 days) is gone as it lands
        return {"seq": seq, "ts_ms": time.time_ns() // 1_000_000, "level": "info", "stream": "stdout",
                "message": message, **over}

    publish(stack, [
        batch([line(0, "a NUL \u0000 here")]),
        batch([line(0, "an escape \u001b[31m")]),
        batch([line("zero")]),
        batch([line(0, level="loud")]),
        batch([line(-1)]),
        batch([line(0, "x" * 16_385)]),
        batch([line(i) for i in range(1001)]),
        batch([line(0)], attempt="one"),
        b"not json",
        batch([line(7, "after the poison\tok")]),
    ])
    eventually(lambda: logs(stack, job_id, attempt=9), timeout=30, interval=0.2,
               message="the batch after the poison never landed")
    assert [(x["seq"], x["message"]) for x in logs(stack, job_id, attempt=9)] == [(7, "after the poison\tok")]

    def counted() -> bool:
        return stack.http.get("/readyz").json()["stages"]["logs-projector"]["poisoned"] >= poisoned + 9
    eventually(counted, timeout=10, interval=0.2, message="the poison batches were not all dead-lettered")


def test_another_projects_user_gets_404(stack: Stack) -> None:
    job_id = stack.submit(**LIGHTGBM, params={"n_estimators": 5})
    assert stack.http.post("/api/v1/projects", json={"name": "elsewhere"}).status_code in (201, 409)
    name, password = "logs-outsider", "a long enough password for this"
    assert stack.http.post("/api/v1/users", json={"name": name, "password": password}).status_code in (201, 409)
    assert stack.http.put(f"/api/v1/projects/elsewhere/members/{name}", json={"role": "admin"}).status_code == 200
    r = stack.http.post("/api/v1/auth/token", data={"username": name, "password": password}, headers={
        "Authorization": ""})
    assert r.status_code == 200, r.text
    outsider = {"Authorization": f"Bearer {r.json()['access_token']}", "X-Trainyard-Project": "elsewhere"}
    stack.wait(job_id, lambda j: j["status"] == "completed", timeout=60)
    eventually(lambda: logs(stack, job_id), timeout=10, interval=0.1, message="no lines")  # the owner sees them
    r = stack.http.get(f"{JOBS}/{job_id}/logs", headers=outsider)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), r.text
    r = stack.http.get(f"{JOBS}/{uuid.uuid4()}/logs")
    assert r.status_code == 404
