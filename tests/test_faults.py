"""Faults on the embedded engines: `trainyard up` with no URLs set, then SIGKILL of NATS and of PostgreSQL mid-job.

The supervisor restarts each engine on its old port; every process reconnects; the job completes with its
whole metric series and nothing accepted is lost.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import FINISHED, Stack, running_up

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded_stack() -> Iterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="trainyard-faults-"))  # embedded PostgreSQL's user must reach it
    try:
        with running_up(data_dir, {"TRAINYARD_RUNNERS": "1", "TRAINYARD_LEASE_TTL_S": "5"}) as s:  # no URLs: embedded engines
            yield s
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("engine", ["nats", "postgres"])
def test_an_engine_killed_mid_job_is_restarted_and_the_job_loses_nothing(embedded_stack: Stack, engine: str) -> None:
    s = embedded_stack
    epochs = 1000  # ~10 s: live progress (a heartbeat a second with ttl 5 s) shows it running before the kill
    endpoints = s.endpoints()
    assert endpoints["nats"] and endpoints["postgres"] and endpoints["pids"][engine]
    job_id = s.submit(framework="pytorch", task="binary_classification",
                      dataset={"uri": "builtin://breast_cancer"}, params={"epochs": epochs})
    s.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["current_step"] >= 3, timeout=60)
    os.kill(endpoints["pids"][engine], signal.SIGKILL)
    job = s.wait(job_id, lambda j: j["status"] in FINISHED, timeout=120)
    assert job["status"] == "completed", job
    assert [p["step"] for p in s.full_series(job_id, "valid_loss", epochs)] == list(range(1, epochs + 1))
    after = s.endpoints()
    assert after[engine] == endpoints[engine] and after["pids"][engine] != endpoints["pids"][engine]
    s.wait_ready()


def test_a_full_restart_resumes_a_running_job_at_once_and_keeps_everything() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="trainyard-restart-"))
    epochs = 1000
    try:
        with running_up(data_dir, {"TRAINYARD_RUNNERS": "2", "TRAINYARD_LEASE_TTL_S": "5"}) as s:
            done = s.submit(framework="lightgbm", task="regression", dataset={"uri": "builtin://diabetes"},
                            params={"n_estimators": 10})
            s.wait(done, lambda j: j["status"] == "completed", timeout=60)
            job_id = s.submit(framework="pytorch", task="binary_classification",
                              dataset={"uri": "builtin://breast_cancer"}, params={"epochs": epochs})
            s.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["current_step"] >= 3, timeout=60)
        # SIGTERM stopped everything (exit 0); the same data dir brings it all back
        with running_up(data_dir, {"TRAINYARD_RUNNERS": "2", "TRAINYARD_LEASE_TTL_S": "5"}) as s:
            assert s.job(done)["status"] == "completed" and len(s.full_series(done, "train_loss", 10)) == 10
            resumed = s.wait(job_id, lambda j: j["attempt"] == 2, timeout=15)  # not after the 30 s ack wait
            assert resumed["status"] in ("running", "completed")
            job = s.wait(job_id, lambda j: j["status"] in FINISHED, timeout=120)
            assert job["status"] == "completed" and job["attempt"] == 2
            # the shutdown was a graceful hand-back: no attempt spent, and the job says why it ran again
            assert (job["lost_leases"], job["hand_backs"]) == (0, 1) and "handed back" in job["requeue_reason"]
            assert [p["step"] for p in s.full_series(job_id, "valid_loss", epochs)] == list(range(1, epochs + 1))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
