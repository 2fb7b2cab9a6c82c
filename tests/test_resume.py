"""Checkpoints and resume end to end (`trainyard up` on PostgreSQL, NATS and chDB): a runner SIGKILLed mid-training
leaves a checkpoint, the job's next attempt resumes from it (`resumed_from_step`) and completes, and the job's merged
metric series holds each step once; a retry with `from_checkpoint` starts from its original's latest checkpoint.

The stack checkpoints every half second whatever the step count, so a checkpoint exists soon after training starts.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import FINISHED, JOBS, Stack, up_on_a_fresh_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
CHECKPOINT_EVERY = {"TRAINYARD_CHECKPOINT_EVERY_STEPS": "1000000", "TRAINYARD_CHECKPOINT_EVERY_S": "0.5"}
PYTORCH = {"framework": "pytorch", "task": "multiclass_classification", "dataset": {"uri": "builtin://wine"},
           "params": {"epochs": 400}}
# Deep trees on a small dataset: a few ms a round, so the kill lands mid-training.
LIGHTGBM = {"framework": "lightgbm", "task": "regression", "dataset": {"uri": "builtin://diabetes"},
            "params": {"n_estimators": 1000, "num_leaves": 256, "min_data_in_leaf": 1, "min_sum_hessian_in_leaf": 0,
                       "learning_rate": 0.001, "max_bin": 1024}}


@pytest.fixture(scope="module")
def stack(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("resume"),
                                **CHECKPOINT_EVERY) as s:
        yield s


def checkpoints(stack: Stack, job_id: str) -> list[Path]:
    return sorted((stack.data_dir / "artifacts" / "checkpoints" / job_id).glob("attempt-*/ckpt-*"))


def running_with_a_checkpoint(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job once it runs its first attempt and has saved a checkpoint (and progressed past it)."""
    eventually(lambda: checkpoints(stack, job_id), timeout=60, interval=0.1,
               message=f"job {job_id} never saved a checkpoint")
    return stack.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["current_step"] > 0, timeout=30)


def assert_resumed_and_whole(stack: Stack, job_id: str, steps: int, metric: str) -> dict[str, Any]:
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=180)
    assert job["status"] == "completed" and job["attempt"] == 2, job
    resumed = job["resumed_from_step"]
    assert resumed is not None and 0 < resumed < steps
    merged = stack.full_series(job_id, metric, steps)
    assert [p["step"] for p in merged] == list(range(1, steps + 1))  # each step once, none missing
    second = stack.http.get(f"{JOBS}/{job_id}/metrics/{metric}", params={"attempt": 2, "max_points": 100_000}).json()
    assert [p["step"] for p in second["points"]] == list(range(resumed + 1, steps + 1))  # continues the series
    first = stack.http.get(f"{JOBS}/{job_id}/metrics/{metric}", params={"attempt": 1, "max_points": 100_000}).json()
    assert first["points"][0]["step"] == 1 and first["points"][-1]["step"] >= resumed  # still there on its own
    return job


@pytest.mark.parametrize("body,metric", [(PYTORCH, "valid_loss"), (LIGHTGBM, "valid_rmse")],
                         ids=["pytorch", "lightgbm"])
def test_a_runner_killed_mid_training_is_resumed_from_its_checkpoint(stack: Stack, body: dict, metric: str) -> None:
    job_id = stack.submit(**body)
    job = running_with_a_checkpoint(stack, job_id)
    os.kill(int(job["runner_id"].rpartition(":")[2]), signal.SIGKILL)
    steps = body["params"].get("epochs") or body["params"]["n_estimators"]
    done = assert_resumed_and_whole(stack, job_id, steps, metric)
    assert done["lost_leases"] == 1 and done["runner_id"] != job["runner_id"]
    assert len(checkpoints(stack, job_id)) <= 2  # pruned as it went


def test_a_retry_from_checkpoint_starts_where_its_original_stopped(stack: Stack) -> None:
    original = stack.submit(**PYTORCH)
    running_with_a_checkpoint(stack, original)
    assert stack.http.delete(f"{JOBS}/{original}").status_code == 202
    assert stack.wait(original, lambda j: j["status"] in FINISHED, timeout=30)["status"] == "cancelled"
    saved = max(int(p.name.removeprefix("ckpt-").split(".")[0]) for p in checkpoints(stack, original))

    r = stack.http.post(f"{JOBS}/{original}/retry", json={"from_checkpoint": True})
    assert r.status_code == 202, r.text
    retry = r.json()["job_id"]
    job = stack.wait(retry, lambda j: j["status"] in FINISHED, timeout=120)
    assert job["status"] == "completed" and job["attempt"] == 1 and job["resumed_from_step"] == saved
    points = stack.full_series(retry, "valid_loss", 400 - saved)
    assert [p["step"] for p in points] == list(range(saved + 1, 401))

    fresh = stack.http.post(f"{JOBS}/{original}/retry", json={"from_checkpoint": False}).json()["job_id"]
    assert stack.wait(fresh, lambda j: j["status"] == "running" or j["status"] in FINISHED,
                      timeout=60)["resumed_from_step"] is None


RESUMABLE = '''
import json
import time

import trainyard.sdk as ty

run = ty.init()
start = 0
if (saved := run.latest_checkpoint()) is not None:
    start = json.loads(saved.read_bytes())["step"]
for step in range(start + 1, 201):
    time.sleep(0.05)
    run.log({"loss": 1.0 / step}, step=step)
    run.progress(step, 200)
    if step % 10 == 0:
        run.save_checkpoint(json.dumps({"step": step}).encode(), step=step)
    if run.should_stop():
        break
run.finish(metrics={"loss": 1.0 / 200})
'''


def test_a_code_job_whose_runner_is_killed_resumes_from_the_checkpoint_its_script_saved(stack: Stack) -> None:
    from tests.test_code_jobs import upload

    code_id = upload(stack.http, {"train.py": RESUMABLE})
    job_id = stack.submit(name="resumable", framework="python", task="regression",
                          code={"code_id": code_id, "entrypoint": "train.py"})
    job = running_with_a_checkpoint(stack, job_id)
    os.kill(int(job["runner_id"].rpartition(":")[2]), signal.SIGKILL)  # its script dies with it (PDEATHSIG)
    done = assert_resumed_and_whole(stack, job_id, 200, "loss")
    assert done["resumed_from_step"] % 10 == 0 and done["lost_leases"] == 1
