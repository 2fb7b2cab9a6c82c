"""Resources and GPUs (issue 19 item 8): runners say what they have (measured, overridable), work that needs a GPU
is routed to GPU runners only, a runner too small for a job does not claim it, a job no runner can hold is a 422
naming the field once the service has watched long enough (before that it waits, `waiting_for: "gpu"`), and a job
given a GPU sees it (a code job's CUDA_VISIBLE_DEVICES, the PyTorch trainer's cuda device). Real CUDA runs only
where a device is (skipped cleanly elsewhere)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import httpx
import pytest

from domain.contract import RunnerCapabilities, RunnerReport
from domain.registry import needs_gpu, queues_work
from domain.resources import shortfall, waiting_for
from domain.training_job import TrainingJob
from infra.messaging import work_consumers
from projections.relay import encode
from runners.capabilities import detect, device_ids, memory_mb
from tests.support.database import create_database, drop_database
from tests.support.stack import FAST_LEASES, FINISHED, JOBS, Stack, running_up
from tests.support.stored_events import store_and_read
from tests.support.waiting import eventually
from tests.test_code_jobs import upload
from tests.test_code_sandbox import Recorder, area, run  # noqa: F401 - `area` is a fixture

try:
    import torch
    CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a dependency; a machine without it has no CUDA either
    CUDA = False

WINDOW_S = 30  # the stack's runner_seen_window_s: long enough to submit before it passes, short for a test
SHOWS_DEVICES = '''
import os
import trainyard.sdk as ty

run = ty.init()
print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), flush=True)
run.finish(metrics={"ok": 1.0})
'''


def settings(**over: Any) -> SimpleNamespace:
    base = {"runner_cpus": None, "runner_memory_mb": None, "runner_gpus": None, "runner_gpu_model": None}
    return SimpleNamespace(**{**base, **over})


# ---- what a runner has --------------------------------------------------------------------------
def test_a_runner_measures_its_machine_and_settings_override_each_measure(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:  1 kB\n")
    measured = detect(settings(runner_gpus=0), meminfo=meminfo)
    assert measured.cpus == len(os.sched_getaffinity(0)) and measured.memory_mb == 16000
    assert (measured.gpus, measured.gpu_model) == (0, None)
    told = detect(settings(runner_cpus=96, runner_memory_mb=512_000, runner_gpus=2, runner_gpu_model="H100"),
                  runner_id="gpu-box:1", meminfo=meminfo)
    assert (told.cpus, told.memory_mb, told.gpus, told.gpu_model, told.runner_id) == (96, 512_000, 2, "H100",
                                                                                        "gpu-box:1")
    if not CUDA:  # nothing overrides the GPU count: torch is asked, and says none here
        assert detect(settings(), meminfo=meminfo).gpus == 0
    assert memory_mb(tmp_path / "absent") == 1024  # unreadable: a modest default, not a crash


def test_a_job_is_given_the_runners_own_devices() -> None:
    assert device_ids(2, visible="") == (0, 1)
    assert device_ids(1, visible="3,5") == (3,)  # a runner started on devices 3 and 5: its index 0 is device 3
    assert device_ids(2, visible="GPU-uuid-a,GPU-uuid-b") == (0, 1)
    assert device_ids(0, visible="1") == ()


def test_fit_is_named_by_the_field_that_falls_short() -> None:
    has = {"cpus": 8, "memory_mb": 16_000, "gpus": 0}
    assert shortfall({"cpus": 1, "memory_mb": 2048, "gpus": 0}, has) is None
    assert shortfall({"cpus": 1, "memory_mb": 2048, "gpus": 1}, has) == "gpus"
    assert shortfall({"cpus": 16, "memory_mb": 32_000, "gpus": 0}, has) == "memory_mb"
    assert shortfall(None, has) is None  # a built-in job without resources fits any runner
    assert waiting_for("queued", {"gpus": 1}) == "gpu" and waiting_for("running", {"gpus": 1}) is None
    assert waiting_for("queued", {"gpus": 0}) is None
    report = RunnerReport(type="claim", job_id=uuid4(), lease="x" * 20, runner_id="r",
                          capacity=RunnerCapabilities(cpus=1, memory_mb=1, gpus=2048 // 2))
    assert report.capacity is not None
    with pytest.raises(ValueError):
        RunnerCapabilities(cpus=0, memory_mb=1)


def test_a_claim_from_a_runner_too_small_is_refused_naming_what_it_lacks() -> None:
    from commands.reports import _unfit

    job = _job(gpus=0)
    job.resources = {"cpus": 4, "memory_mb": 8192, "gpus": 0}

    def claim(**has: int) -> RunnerReport:
        return RunnerReport(type="claim", job_id=job.id, lease="x" * 20, runner_id="small:1",
                            capacity=RunnerCapabilities(**{"cpus": 8, "memory_mb": 16_000, **has}))
    assert _unfit(job, claim()) is None
    assert _unfit(job, claim(memory_mb=4096)).startswith("needs memory_mb 8192; runner small:1 has 4096")
    assert _unfit(job, claim(cpus=2)).startswith("needs cpus 4")
    assert _unfit(job, RunnerReport(type="claim", job_id=job.id, lease="x" * 20, runner_id="old:1")) is None


def test_the_registry_keeps_what_each_runner_said_and_drops_what_does_not_parse(database_url: str) -> None:
    from infra.postgres import pool
    from infra.runner_registry import MAX_HELLO_BYTES, RUNNERS_DDL, RunnerRegistry

    connections = pool(database_url)
    try:
        with connections.connection() as conn:
            conn.execute(RUNNERS_DDL)
        registry = RunnerRegistry(connections)
        assert registry.hear(b"{") is None and registry.hear(b" " * (MAX_HELLO_BYTES + 1)) is None
        assert registry.hear(RunnerCapabilities(cpus=2, memory_mb=1).model_dump_json().encode()) is None  # no id
        assert registry.dropped == 3
        for gpus in (0, 2):  # the latest hello of a runner is what it has
            hello = RunnerCapabilities(runner_id="box:1", cpus=16, memory_mb=64_000, gpus=gpus, gpu_model="H100")
            registry.saw(registry.hear(hello.model_dump_json().encode()))
        (seen,) = registry.seen(60)
        assert (seen["runner_id"], seen["gpus"], seen["gpu_model"]) == ("box:1", 2, "H100")
        time.sleep(0.3)
        assert registry.seen(0.2) == [] and registry.listened_for() == 0.0
    finally:
        connections.close()


# ---- routing --------------------------------------------------------------------------------------
def _job(framework: str = "python", gpus: int = 1) -> TrainingJob:
    code = {"code_id": "a" * 32, "sha256": "a" * 64, "entrypoint": "train.py", "args": []}
    return TrainingJob.create(uuid4(), project="alpha", name="j", framework=framework, task="regression",
                              dataset={} if framework == "python" else {"uri": "builtin://diabetes"}, params={},
                              priority="high", tags=[], code=code if framework == "python" else None,
                              resources={"cpus": 1, "memory_mb": 512, "gpus": gpus})


def test_work_that_needs_a_gpu_goes_where_only_gpu_runners_read_and_goes_back_there() -> None:
    submitted, = store_and_read(_job())
    subjects = [subject for subject, *_ in encode(submitted)]
    assert subjects[1] == f"trainyard.work.high.gpu.code.{submitted.originator_id}"
    torch_job = _job("pytorch")
    assert [s for s, *_ in encode(store_and_read(torch_job)[0])][1].startswith("trainyard.work.high.gpu.training.")
    assert not needs_gpu(store_and_read(_job(gpus=0))[0])
    def handed_back() -> TrainingJob:
        job = _job()
        job.claim("lease-1", "host:1")
        job.hand_back("lease-1", "stopping")
        return job

    requeued = store_and_read(handed_back())[-1]
    assert requeued.gpus == 1 and queues_work(requeued) == ("code", "high")
    assert [s for s, *_ in encode(requeued)][1].startswith("trainyard.work.high.gpu.code.")

    def as_v3(topic: str, state: dict[str, Any]) -> None:  # a requeue stored before GPU routing
        if topic.endswith(".Requeued"):
            state["class_version"] = 3
            del state["gpus"]
    assert store_and_read(handed_back(), as_v3)[-1].gpus == 0


def test_only_a_gpu_runner_reads_the_gpu_consumers_and_it_reads_them_first() -> None:
    from runners.runner import Runner

    cpu = Runner(None, None, None, 5.0, code_root=Path("/nonexistent"),  # type: ignore[arg-type]
                 capabilities=RunnerCapabilities(cpus=2, memory_mb=4096))
    gpu = Runner(None, None, None, 5.0, code_root=Path("/nonexistent"),  # type: ignore[arg-type]
                 capabilities=RunnerCapabilities(cpus=2, memory_mb=4096, gpus=1))
    assert not any("-gpu" in d for _, d in cpu.consumers)
    assert [d for _, d in gpu.consumers][:4] == ["work-critical-gpu", "work-critical-gpu-code", "work-critical",
                                                 "work-critical-code"]
    assert {d for _, d in work_consumers(gpu=True)} - {d for _, d in cpu.consumers} == {
        d for _, d in gpu.consumers if "-gpu" in d}


# ---- end to end -------------------------------------------------------------------------------------
@contextlib.contextmanager
def a_stack(postgres_server: str, nats_url: str, data_dir: Path) -> Iterator[tuple[Stack, dict[str, str]]]:
    """`trainyard up` with two CPU-only runners (even on a GPU machine) that say hello every second, and a short
    runner_seen_window_s; also the settings another runner of it needs."""
    database_url = create_database(postgres_server)
    env = {"TRAINYARD_DATABASE_URL": database_url, "TRAINYARD_NATS_URL": nats_url, "TRAINYARD_RUNNERS": "2",
           "TRAINYARD_RUNNER_GPUS": "0", "TRAINYARD_RUNNER_HELLO_S": "1",
           "TRAINYARD_RUNNER_SEEN_WINDOW_S": str(WINDOW_S), **FAST_LEASES}
    try:
        with running_up(data_dir, env, nats_url) as s:
            yield s, {**env, "TRAINYARD_DATA_DIR": str(data_dir)}
    finally:
        drop_database(postgres_server, database_url)


@contextlib.contextmanager
def a_gpu_runner(env: dict[str, str], log: Path, gpus: int = 1) -> Iterator[subprocess.Popen]:
    """One more runner of the stack, told it has `gpus` GPUs (the edge of the world: no device is needed to route)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    child_env.update(env, TRAINYARD_RUNNER_GPUS=str(gpus), TRAINYARD_RUNNER_GPU_MODEL="Test GPU")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "runner"], env=child_env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()


def gpu_runner_id(stack: Stack, job_id: str) -> str:
    """The runner that ran `job_id` (the GPU runner, for the jobs only it may take)."""
    return stack.job(job_id)["runner_id"]


def gpu_job(code_id: str, gpus: int = 1) -> dict[str, Any]:
    return {"name": "gpu", "framework": "python", "task": "regression", "code": {"code_id": code_id,
            "entrypoint": "train.py"}, "resources": {"cpus": 1, "memory_mb": 1024, "gpus": gpus}}


@pytest.mark.integration
def test_a_gpu_job_waits_for_a_gpu_runner_is_refused_when_none_exists_and_runs_on_one(
        postgres_server: str, nats_url: str, tmp_path: Path) -> None:
    with a_stack(postgres_server, nats_url, tmp_path) as (stack, env):
        http = stack.http
        code_id = upload(http, {"train.py": SHOWS_DEVICES})
        # Within the window the service cannot know that no GPU runner will come: the job waits, visibly.
        one, two = (http.post(JOBS, json=gpu_job(code_id, gpus)) for gpus in (1, 2))
        assert (one.status_code, two.status_code) == (202, 202), (one.text, two.text)
        one_id, two_id = one.json()["job_id"], two.json()["job_id"]
        time.sleep(3)  # the CPU runners look for work every second: none of them may take it
        job = stack.job(one_id)
        assert (job["status"], job["attempt"], job["waiting_for"]) == ("queued", 0, "gpu"), job
        assert stack.job(two_id)["waiting_for"] == "gpu"

        # Once the window has passed with only CPU runners heard from, a GPU job is refused, naming the field.
        def refused() -> httpx.Response | None:
            r = http.post(JOBS, json=gpu_job(code_id), headers={"Idempotency-Key": f"gpu-{one_id}"})
            return r if r.status_code == 422 else None
        r = eventually(refused, timeout=WINDOW_S + 30, message="a GPU job was never refused without GPU runners")
        problem = r.json()
        assert problem["field"] == "resources.gpus" and "at most 0 gpus" in problem["detail"], problem
        assert http.post(JOBS, json={**gpu_job(code_id), "resources": {"gpus": 0}}).status_code == 202

        # A runner with a GPU takes the waiting job; the job sees the device it was given.
        with a_gpu_runner(env, tmp_path / "gpu-runner.log"):
            job = stack.wait(one_id, lambda j: j["status"] in FINISHED, timeout=120)
            assert job["status"] == "completed" and job["waiting_for"] is None, job
            lines = eventually(lambda: [x["message"] for x in http.get(f"{JOBS}/{one_id}/logs").json()["lines"]
                                        if "CUDA_VISIBLE_DEVICES" in x["message"]] or None, timeout=30,
                               message="the script's output never reached its logs")
            assert lines == ["CUDA_VISIBLE_DEVICES=0"], lines
            # Its one GPU is too few for the job that needs two: it never claims it (no attempt is recorded) ...
            time.sleep(2)
            two = stack.job(two_id)
            assert (two["status"], two["attempt"], two["waiting_for"]) == ("queued", 0, "gpu"), two
            # ... and now that a runner with a GPU has been heard from, a one-GPU job is accepted again.
            assert eventually(lambda: http.post(JOBS, json=gpu_job(code_id)).status_code == 202 or None,
                              timeout=10, message="a GPU job was refused with a GPU runner up")
            r = http.post(JOBS, json=gpu_job(code_id, gpus=2))
            assert r.status_code == 422 and "resources.gpus" in r.json()["detail"], r.text
            # A PyTorch job that asks for a GPU goes the same way (the GPU training consumers); this runner's GPU is
            # a fake, so its trainer says so in the job's logs and trains on the CPU.
            r = http.post(JOBS, json={"name": "torch", "framework": "pytorch", "task": "regression",
                                      "dataset": {"uri": "builtin://diabetes"}, "params": {"epochs": 2},
                                      "resources": {"gpus": 1}})
            assert r.status_code == 202, r.text
            job = stack.wait(r.json()["job_id"], lambda j: j["status"] in FINISHED, timeout=120)
            assert job["status"] == "completed" and job["runner_id"] == gpu_runner_id(stack, one_id), job
            assert eventually(lambda: any("given CUDA device 0" in x["message"] for x in http.get(
                f"{JOBS}/{job['job_id']}/logs").json()["lines"]) or None, timeout=30, message="no word of the GPU")
            # A runner with two GPUs comes: the job the first one handed back is its, and sees both devices.
            with a_gpu_runner(env, tmp_path / "gpu-runner-2.log", gpus=2):
                two = stack.wait(two_id, lambda j: j["status"] in FINISHED, timeout=120)
                assert two["status"] == "completed" and two["attempt"] == 1, two
                lines = eventually(lambda: [x["message"] for x in http.get(f"{JOBS}/{two_id}/logs").json()["lines"]
                                            if "CUDA_VISIBLE_DEVICES" in x["message"]] or None, timeout=30,
                                   message="the script's output never reached its logs")
                assert lines == ["CUDA_VISIBLE_DEVICES=0,1"], lines

        # A built-in job asks for a GPU only with PyTorch, whose trainer can use one.
        base = {"name": "t", "task": "regression", "dataset": {"uri": "builtin://diabetes"}, "params": {"epochs": 1}}
        r = http.post(JOBS, json={**base, "framework": "lightgbm", "resources": {"gpus": 1}})
        assert r.status_code == 422 and "resources" in r.json()["detail"], r.text
        r = http.post(JOBS, json={**base, "framework": "pytorch", "resources": {"gpus": 0}})
        assert r.status_code == 202, r.text
        job = stack.wait(r.json()["job_id"], lambda j: j["status"] in FINISHED)
        assert job["status"] == "completed" and job["resources"]["gpus"] == 0, job


# ---- real CUDA ------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_the_pytorch_trainer_trains_on_the_gpu_it_was_given() -> None:
    from runners.trainers import TrainSpec
    from runners.trainers.pytorch_trainer import PyTorchMLPTrainer, load_model, training_device

    assert training_device((0,)).type == "cuda" and training_device(()).type == "cpu"

    class Quiet:
        def step(self, *args: Any, **kwargs: Any) -> None:
            pass

        def should_stop(self) -> bool:
            return False

    spec = TrainSpec(framework="pytorch", task="regression", dataset_uri="builtin://diabetes", target=None,
                     params={"epochs": 3}, gpus=(0,))
    result = PyTorchMLPTrainer().fit(spec, Quiet())  # type: ignore[arg-type]
    assert result.final_metrics and load_model(result.model_bytes) is not None


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_a_code_job_given_a_gpu_runs_on_cuda(area: Path) -> None:  # noqa: F811 - the imported fixture
    from runners.code_sandbox import Resources

    outcome, sink = run(area, """
        import torch
        x = torch.ones(1000, device="cuda")
        print("cuda", torch.cuda.device_count(), float((x * 2).sum()), flush=True)
    """, resources=Resources(cpus=1, memory_mb=8192, gpus=(0,)), timeout_s=120)
    assert outcome.status == "completed", (outcome, sink.text())
    assert "cuda 1 2000.0" in sink.text()
