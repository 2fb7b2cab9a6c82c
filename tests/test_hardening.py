"""Issue 5 end to end on real engines (`trainyard up` against PostgreSQL, NATS and chDB): no input stops a stage,
leases belong to the domain, nothing accepted is left stuck, cancels are authorised by the aggregate, events say
who and why. Each reproduction from the issue is a regression test here."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid
from typing import Any

import httpx
import nats
import numpy as np
import pytest

from tests.support.stack import FINISHED, JOBS, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
QUICK = {"framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://diabetes"},
         "params": {"n_estimators": 5}}
FOREVER = {"framework": "pytorch", "task": "binary_classification", "dataset": {"uri": "builtin://breast_cancer"},
           "params": {"epochs": 10_000}}


def runner_pid(job: dict[str, Any]) -> int:
    return int(job["runner_id"].rpartition(":")[2])


def nats_run(stack: Stack, scenario: Any) -> Any:
    async def main() -> Any:
        nc = await nats.connect(stack.nats_url)
        try:
            return await scenario(nc, nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(main())


def assert_healthy(stack: Stack) -> dict[str, Any]:
    last: list[httpx.Response] = []

    def ready() -> bool:
        last[:] = [stack.http.get("/readyz")]
        return last[0].status_code == 200

    eventually(ready, timeout=30, interval=0.5, message=lambda: f"the service never became ready: {last[0].text}")
    r = last[0]
    body = r.json()
    assert r.status_code == 200, body
    assert {"relay", "projection:jobs", "metrics-projector", "reconciler", "reports"} <= set(body["stages"])
    return body


def test_hostile_requests_from_the_issue_get_4xx_and_the_pipeline_keeps_flowing(stack: Stack) -> None:
    base = {"name": "ok", **QUICK}
    hostile = [
        {**base, "name": "a\u0000b"},
        {**base, "params": {"n_estimators": 5, "x": "y" * 1_100_000}},
        {**base, "tags": ["t" * 1_000_000]},
        {**base, "params": {"n_estimators": 5, "x": "y" * 10_000_000}},
    ]
    for body in hostile:
        r = stack.http.post(JOBS, json=body)
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/problem+json", r.text[:300]
    raw = b'{"name": "x", "framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://diabetes"},' \
          b' "params": {"learning_rate": Infinity}}'
    r = stack.http.post(JOBS, content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["field"]
    for params in ({"offset": 2**63}, {"tag": "\x00"}, {"status": ["queued", "running"], "limit": 1}):
        r = stack.http.get(JOBS, params=params)
        assert r.status_code in (200, 422) and r.headers["content-type"].startswith("application/")
    job_id = stack.submit(**QUICK)
    assert stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=60)["status"] == "completed"
    body = assert_healthy(stack)
    assert all(s["status"] == "ok" for s in body["stages"].values()), body


def test_five_graceful_runner_restarts_spend_no_attempt(stack: Stack) -> None:
    job_id = stack.submit(framework="pytorch", task="binary_classification",
                          dataset={"uri": "builtin://breast_cancer"}, params={"epochs": 250})
    attempt = 0
    for _ in range(5):
        job = stack.wait(job_id, lambda j, a=attempt: j["status"] == "running" and j["attempt"] > a
                         and j["progress"]["current_step"] >= 2, timeout=60)
        attempt = job["attempt"]
        os.kill(runner_pid(job), signal.SIGTERM)  # a graceful stop: the runner hands the job back
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=120)
    assert job["status"] == "completed" and job["lost_leases"] == 0 and job["attempt"] >= 6


def test_a_duplicate_work_item_cannot_take_over_a_live_lease(stack: Stack) -> None:
    job_id = stack.submit(framework="pytorch", task="binary_classification",
                          dataset={"uri": "builtin://breast_cancer"}, params={"epochs": 300})
    job = stack.wait(job_id, lambda j: j["status"] == "running", timeout=60)

    async def republish(nc: Any, js: Any) -> None:
        item = {"kind": "training", "aggregate_id": job_id, "priority": "medium", "work_id": str(uuid.uuid4())}
        await js.publish(f"trainyard.work.medium.training.{job_id}", json.dumps(item).encode(),
                         headers={"Nats-Msg-Id": f"replayed-{uuid.uuid4()}"})  # past any dedup window

    nats_run(stack, republish)
    done = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=120)
    assert done["status"] == "completed" and (done["attempt"], done["runner_id"]) == (1, job["runner_id"])


def test_a_job_whose_runner_dies_three_times_fails_saying_so(stack: Stack) -> None:
    job_id = stack.submit(**FOREVER)
    for n in range(1, 4):
        job = stack.wait(job_id, lambda j, n=n: j["status"] == "running" and j["attempt"] == n, timeout=60)
        os.kill(runner_pid(job), signal.SIGKILL)
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=60)
    assert job["status"] == "failed" and "lost its runner 3 times" in job["error"] and job["lost_leases"] == 3


def test_a_queued_job_whose_work_item_vanished_still_runs(stack: Stack) -> None:
    blockers = [stack.submit(**FOREVER) for _ in range(2)]
    for b in blockers:
        stack.wait(b, lambda j: j["status"] == "running", timeout=60)
    job_id = stack.submit(**QUICK)

    async def purge(nc: Any, js: Any) -> None:
        await js.purge_stream("TRAINYARD_WORK", subject=f"trainyard.work.medium.training.{job_id}")

    nats_run(stack, purge)
    for b in blockers:
        assert stack.http.delete(f"{JOBS}/{b}").status_code == 202
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=90)  # the reconciler requeued it
    assert job["status"] == "completed"


def test_a_forged_cancel_on_nats_cancels_nothing_and_a_real_one_stops_it_mid_epoch(stack: Stack) -> None:
    # One long epoch (4 layers of 2048 units, batch size 1): the cancel must land inside it.
    job_id = stack.submit(framework="pytorch", task="binary_classification", dataset={"uri": "builtin://breast_cancer"},
                          params={"epochs": 3, "batch_size": 1, "hidden_sizes": [2048, 2048, 2048]})
    stack.wait(job_id, lambda j: j["status"] == "running", timeout=60)

    async def forge(nc: Any, js: Any) -> dict:
        fake = {"event_id": str(uuid.uuid4()), "aggregate": "training_job", "aggregate_id": job_id,
                "type": "training_job.cancel_requested", "payload": {}}
        await nc.publish("trainyard.v1.training_job.cancel_requested", json.dumps(fake).encode())
        report = {"type": "cancelled", "job_id": job_id, "lease": "forged-lease-token-123456", "runner_id": "evil"}
        return json.loads((await nc.request("trainyard.rpc.runner.report", json.dumps(report).encode(), 10)).data)

    reply = nats_run(stack, forge)
    assert reply["ok"] is False and reply["code"] == "stale_lease"
    time.sleep(2)
    assert stack.job(job_id)["status"] == "running"
    assert stack.http.delete(f"{JOBS}/{job_id}").status_code == 202
    asked = time.monotonic()
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=30)
    assert job["status"] == "cancelled" and time.monotonic() - asked < 5
    assert job["progress"]["current_step"] == 0  # stopped inside the first epoch


def test_a_telemetry_batch_with_out_of_range_numbers_is_dead_lettered_and_the_next_flows(stack: Stack) -> None:
    job_id = stack.submit(**QUICK)
    stack.wait(job_id, lambda j: j["status"] == "completed", timeout=60)
    before = stack.http.get("/readyz").json()["stages"]["metrics-projector"]["poisoned"]

    def packed(dtype: str, values: list) -> str:
        return base64.b64encode(np.asarray(values, dtype).tobytes()).decode()

    poison = [{"steps": [2**64], "values": [1.5], "ts_ms": [1]},
              # packed columns (what runners send): not base64, a partial value, a step out of range, unequal lengths
              {"steps": "not base64!", "values": [1.5], "ts_ms": [1]},
              {"steps": packed("<u8", [1])[:-4], "values": [1.5], "ts_ms": [1]},
              {"steps": packed("<u8", [2**63]), "values": packed("<f8", [1.5]), "ts_ms": packed("<i8", [1])},
              {"steps": packed("<u8", [1, 2]), "values": packed("<f8", [1.5]), "ts_ms": packed("<i8", [1])}]

    async def publish(nc: Any, js: Any) -> None:
        good = [{"steps": [7], "values": [1.5], "ts_ms": [1]},
                {"steps": packed("<u8", [8, 9]), "values": packed("<f8", [float("nan"), 2.5]),
                 "ts_ms": packed("<i8", [2, 3])}]
        for chunk, name in [*((c, "poison") for c in poison), *((c, "after_poison") for c in good)]:
            batch = {"batch_id": str(uuid.uuid4()), "job_id": job_id, "attempt": 1, "runner_id": "h:1",
                     "series": {name: chunk}}
            await js.publish("trainyard.v1.telemetry.metrics", json.dumps(batch).encode())

    nats_run(stack, publish)
    points = stack.full_series(job_id, "after_poison", 3)
    assert [p["step"] for p in points] == [7, 8, 9] and points[2]["value"] == 2.5
    stages = stack.http.get("/readyz").json()["stages"]
    assert stages["metrics-projector"]["poisoned"] >= before + len(poison)
    assert stages["metrics-projector"]["last_error"]


def test_events_carry_who_and_why_end_to_end(stack: Stack) -> None:
    async def scenario(nc: Any, js: Any) -> tuple[httpx.Response, list[dict]]:
        everything: list[dict] = []

        async def hear(msg: Any) -> None:
            everything.append(json.loads(msg.data))

        await nc.subscribe("trainyard.v1.training_job.>", cb=hear)
        r = await asyncio.to_thread(stack.http.post, JOBS, json={"name": "who", **QUICK}, headers={
            "X-Trainyard-Actor": "alice", "X-Request-Id": "req-42",  # a header no longer names the actor
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
        job_id = r.json()["job_id"]

        def until_completed() -> list[dict] | None:
            heard = [h for h in list(everything) if h["aggregate_id"] == job_id]
            ends = [i for i, h in enumerate(heard) if h["type"] == "training_job.completed"]
            return heard[:ends[0] + 1] if ends else None

        heard = await asyncio.to_thread(eventually, until_completed, timeout=60,
                                        message=f"job {job_id}'s completed event was never heard")
        return r, heard

    r, heard = nats_run(stack, scenario)
    assert r.status_code == 202 and r.headers["X-Request-Id"] == "req-42"
    submitted, completed = heard[0], heard[-1]
    assert (submitted["actor"], submitted["correlation_id"]) == ("admin", "req-42")  # the token's principal
    assert submitted["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert completed["type"] == "training_job.completed" and completed["actor"].startswith("runner:")
    assert completed["correlation_id"] == "req-42" and completed["trace_id"] == submitted["trace_id"]
    assert completed["causation_id"]  # the runner report that caused it
    assert stack.job(r.json()["job_id"])["created_by"] == "admin"
    assert stack.http.get("/healthz").headers["X-Request-Id"]  # generated when not given


def test_hostile_reports_and_work_items_are_refused_or_dead_lettered_and_work_still_flows(stack: Stack) -> None:
    unknown = str(uuid.uuid4())
    base = {"type": "heartbeat", "job_id": unknown, "lease": "a-lease-token-of-24-chars", "runner_id": "h:1"}
    hostile = [
        {**base, "runner_id": "h\u0000x"},                                      # NUL
        {**base, "type": "completed", "final_metrics": {"auc": float("nan")}},   # NaN (sent as a JSON token)
        {**base, "type": "completed", "artifact": {"uri": {"deep": {"er": [1]}}}},  # deep JSON
        {**base, "current_step": "ten"},                                        # wrong type
        {**base, "error": "e" * 900_000},                                       # huge field
    ]

    async def scenario(nc: Any, js: Any) -> tuple[list[dict], dict, bytes]:
        replies = []
        for report in hostile:
            data = json.dumps(report).encode()
            replies.append(json.loads((await nc.request("trainyard.rpc.runner.report", data, timeout=10)).data))
        missing = json.loads((await nc.request("trainyard.rpc.runner.report", json.dumps(base).encode(), 10)).data)
        marker = f"bad-work-{uuid.uuid4()}"
        await js.publish(f"trainyard.work.high.training.{marker}", b'{"kind": "training", "aggregate_id": "\x00"}')
        loop = asyncio.get_running_loop()

        def dead_letter() -> Any:
            last = js.get_last_msg("TRAINYARD_DLQ", f"trainyard.v1.dlq.work.high.training.{marker}")
            return asyncio.run_coroutine_threadsafe(last, loop).result()

        dead = await asyncio.to_thread(eventually, dead_letter, timeout=15, interval=0.2,
                                       ignoring=(nats.js.errors.NotFoundError,),
                                       message="the malformed work item was never dead-lettered")
        return replies, missing, dead.data

    replies, missing, dead = nats_run(stack, scenario)
    assert [r["code"] for r in replies] == ["invalid"] * len(hostile)
    assert missing["code"] == "not_found"
    assert b"aggregate_id" in dead
    job_id = stack.submit(**QUICK)
    assert stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=60)["status"] == "completed"


def test_the_readme_python_example_runs_as_written(stack: Stack) -> None:
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    env = stack.cli_env()
    out = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("completed {") and "'auc'" in out.stdout
