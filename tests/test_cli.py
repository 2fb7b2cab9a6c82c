"""The `trainyard` CLI end to end over HTTP: clear one-line errors, `job`, `status`, and a `watch` that rides out
an API restart.

The CLI talks to a real HTTP server: a small stand-in for the Trainyard API (`FakeApi`, tests/support/fakes.py)
that answers the same routes with the same bodies (validated by the API's own response models) and the same
problem+json errors, so the tests can make it answer 404, 422 and 503 and stop and restart it at will.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from api.client import TrainyardClient, TrainyardError, TrainyardUnavailable
from tests.support.cli import one_error_line, trainyard
from tests.support.fakes import SHA, FakeApi, free_port
from tests.support.waiting import eventually

COMMANDS = {  # every command that talks to the API, with valid arguments
    "submit": ["submit", "--framework", "lightgbm", "--task", "binary_classification",
               "--dataset", "builtin://breast_cancer", "--watch"],
    "watch": ["watch", str(uuid.uuid4())],
    "jobs": ["jobs"],
    "cancel": ["cancel", str(uuid.uuid4())],
    "job": ["job", str(uuid.uuid4())],
    "status": ["status"],
}


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    fake.start()
    yield fake
    if fake.thread is not None and fake.thread.is_alive():
        fake.stop()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unreachable_api_is_one_line_and_exit_1_for_every_command(command: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(*trainyard(*COMMANDS[command], "--api", closed))
    assert line == (f"error: cannot reach the Trainyard API at {closed} (connection refused); "
                    "is 'trainyard up' running?")


@pytest.mark.parametrize("command", ["watch", "cancel", "job"])
def test_an_unknown_job_is_one_line_with_the_404_and_its_field(api: FakeApi, command: str) -> None:
    unknown = str(uuid.uuid4())
    line = one_error_line(*trainyard(command, unknown, "--api", api.url))
    assert line == f"error: 404 Not found: no training job {unknown} (field job_id)"


@pytest.mark.parametrize("command", ["watch", "cancel", "job"])
def test_a_job_id_that_is_not_a_uuid_is_one_line_naming_the_field(api: FakeApi, command: str) -> None:
    line = one_error_line(*trainyard(command, "12ab", "--api", api.url))
    assert "'12ab' is not a job id" in line and line.endswith("(field job_id)")
    assert api.reads == 0


SHORT = "0565b60a"  # the short id the CLI shows of two jobs


@pytest.mark.parametrize("command", ["watch", "cancel", "job"])
def test_a_short_id_names_the_one_job_it_starts(api: FakeApi, command: str) -> None:
    job = api.add(job_id=f"{SHORT}-0000-4000-8000-000000000001")
    api.complete(job)  # the others stay queued: `watch` of one of them would not end
    api.add(job_id=f"{SHORT}-1111-4000-8000-000000000002", name="other")
    api.add(job_id="0565b60b-0000-4000-8000-000000000003", name="other")
    for given in (f"{SHORT}0000", f"{SHORT}-0000-40", f"{SHORT.upper()}00"):
        code, output = trainyard(command, given, "--api", api.url)
        if command == "cancel":  # the API refuses to cancel a completed job, naming it
            assert code == 1 and f"job {job['job_id']} is already completed" in output, (given, output)
        else:
            assert code == 0 and "completed" in output and "other" not in output, (given, output)


@pytest.mark.parametrize("command", ["watch", "cancel", "job"])
def test_an_ambiguous_short_id_lists_the_jobs_it_starts(api: FakeApi, command: str) -> None:
    both = [api.add(job_id=f"{SHORT}-{n}{n}{n}{n}-4000-8000-00000000000{n}")["job_id"] for n in (1, 2)]
    line = one_error_line(*trainyard(command, SHORT, "--api", api.url))
    assert line == (f"error: 422 Ambiguous id: '{SHORT}' starts 2 job ids: {both[0]}, {both[1]}; give more of its "
                    "digits (field job_id)")
    assert api.reads == 0


def test_an_ambiguous_short_id_lists_a_few_and_counts_the_rest(api: FakeApi) -> None:
    for n in range(8):
        api.add(job_id=f"{SHORT}-000{n}-4000-8000-000000000000")
    line = one_error_line(*trainyard("job", SHORT, "--api", api.url))
    assert "starts 8 job ids:" in line and line.count(SHORT) == 6 and "and 3 more; give more" in line, line


@pytest.mark.parametrize("command", ["watch", "cancel", "job"])
def test_an_unknown_short_id_says_no_job_id_starts_with_it(api: FakeApi, command: str) -> None:
    api.add(job_id=f"{SHORT}-0000-4000-8000-000000000001")
    line = one_error_line(*trainyard(command, "0565b60c", "--api", api.url))
    assert line == "error: 404 Not found: no job id starts with '0565b60c' (field job_id)"
    assert api.reads == 0


def test_a_whole_id_is_used_as_it_is(api: FakeApi) -> None:
    job = api.add()
    code, output = trainyard("job", job["job_id"], "--api", api.url)
    assert code == 0 and api.listings == 0, output


def test_invalid_requests_are_one_line_with_the_status_and_field(api: FakeApi) -> None:
    line = one_error_line(*trainyard("submit", "--framework", "sklearn", "--task", "regression",
                                            "--dataset", "builtin://diabetes", "--api", api.url))
    assert line.startswith("error: 422 Invalid request: framework:") and line.endswith("(field framework)")
    done = api.add()
    api.complete(done)
    line = one_error_line(*trainyard("cancel", done["job_id"], "--api", api.url))
    assert line == f"error: 409 Conflict: job {done['job_id']} is already completed"
    line = one_error_line(*trainyard("jobs", "--status", "bogus", "--api", api.url))
    assert line.startswith("error: 422 Invalid request: status:") and line.endswith("(field status)")


def test_submit_watch_follows_the_job_to_its_end(api: FakeApi) -> None:
    def runner() -> None:  # what the service's runners would do with the job
        eventually(lambda: api.jobs, timeout=10, interval=0.05, message="the job was never submitted")
        job = next(iter(api.jobs.values()))
        api.run(job, 10)
        time.sleep(1)
        api.complete(job)

    threading.Thread(target=runner, daemon=True).start()
    api.behind = 2  # the new job's first reads 404: its read model is behind; the watch waits for it
    code, output = trainyard(*COMMANDS["submit"], "-p", "n_estimators=20", "--api", api.url)
    assert code == 0, output
    job_id = output.splitlines()[0].strip()
    assert UUID(job_id) in api.jobs and '"status": "completed"' in output and SHA in output
    assert api.behind == 0


def test_watch_rides_out_an_api_restart(api: FakeApi) -> None:
    job = api.add()
    api.run(job, 5)

    def restart() -> None:
        eventually(lambda: api.reads >= 2, timeout=10, interval=0.05, message="the watch never read the job twice")
        api.stop()  # the API goes away for ~2 s (connection refused) ...
        time.sleep(2)
        api.complete(job)
        api.unavailable = 2  # ... and answers 503 twice while it starts
        api.start()

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    code, output = trainyard("watch", job["job_id"], "--api", api.url)
    restarter.join(15)
    assert code == 0, output
    assert '"status": "completed"' in output and SHA in output and "Traceback" not in output
    assert api.unavailable == 0  # it saw the 503s too, and carried on


def test_watch_gives_up_after_retry_for_seconds_with_the_one_line_error(api: FakeApi) -> None:
    job = api.add()
    api.run(job, 5)

    def go_away() -> None:
        eventually(lambda: api.reads >= 2, timeout=10, interval=0.05, message="the watch never read the job twice")
        api.stop()

    threading.Thread(target=go_away, daemon=True).start()
    started = time.monotonic()
    code, output = trainyard("watch", job["job_id"], "--retry-for", "2", "--api", api.url)
    assert code == 1 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == (f"error: cannot reach the Trainyard API at {api.url} "
                                               "(connection refused); is 'trainyard up' running?")
    assert 2 <= time.monotonic() - started < 10


def test_job_shows_the_job_its_latest_metrics_and_the_artifact(api: FakeApi) -> None:
    job = api.add(name="breast-cancer-gbm", tags=["nightly"])
    api.complete(job)
    code, output = trainyard("job", job["job_id"], "--api", api.url)
    assert code == 0, output
    for text in (job["job_id"], "breast-cancer-gbm", "completed", "lightgbm/binary_classification",
                 "builtin://breast_cancer", '{"n_estimators": 20}', "nightly", "100% (step 20/20",
                 "(queued 0.4 s)", "(ran 2.5 s)", "valid_auc", "0.97", "valid_logloss", "0.25", "auc", "0.991",
                 "file:///data/artifacts/model.txt", SHA, "47.1 KiB"):
        assert text in output, f"{text!r} not in\n{output}"

    code, output = trainyard("job", job["job_id"], "--json", "--api", api.url)
    assert code == 0, output
    data = json.loads(output)
    assert data["job"]["artifact"]["sha256"] == SHA and data["job"]["status"] == "completed"
    assert data["metrics"]["latest"]["valid_auc"] == {"step": 20, "value": 0.97}

    failed = api.add(status="failed", attempt=5, error="RuntimeError: CUDA out of memory")
    code, output = trainyard("job", failed["job_id"], "--api", api.url)
    assert code == 0 and "failed" in output and "CUDA out of memory" in output, output


def test_graceful_hand_backs_do_not_count_as_attempts_and_the_job_says_why_it_was_requeued(api: FakeApi) -> None:
    reason = "handed back by runner vm:7 as it stopped (no attempt spent; the run starts over)"
    job = api.add(status="running", attempt=6, lost_leases=1, max_attempts=3, hand_backs=4, requeue_reason=reason,
                  runner_id="vm:9")
    code, output = trainyard("job", job["job_id"], "--api", api.url)
    assert code == 0, output
    assert "2 of 3 (run 6: 4 handed back gracefully, no attempt spent) on vm:9" in output, output
    assert reason in " ".join(output.split()), output
    code, output = trainyard("jobs", "--api", api.url)
    row = next(line for line in output.splitlines() if job["job_id"] in line)
    assert row.split()[3] == "2", output


READYZ_503 = {
    "ready": False,
    "checks": {"postgres": "ok", "nats": "ok", "clickhouse": "error: ConnectionRefusedError"},
    "stages": {
        "relay": {"status": "ok", "position": 120, "head": 120, "lag": 0, "last_progress_s": 0.4,
                  "last_error": None, "poisoned": 0},
        "projection:jobs": {"status": "behind", "position": 90, "head": 120, "lag": 30, "last_progress_s": 1.2,
                            "last_error": None, "poisoned": 0},
        "metrics-projector": {"status": "stuck", "position": 77, "head": 120, "lag": 43, "last_progress_s": 95.0,
                              "last_error": "clickhouse: Connection refused " + "x" * 200, "poisoned": 2},
        "reconciler": {"status": "starting", "position": None, "head": None, "lag": None, "last_progress_s": None,
                       "last_error": None, "poisoned": 0},
    },
}


def test_status_prints_each_check_and_stage_and_exits_1_when_not_ready(api: FakeApi) -> None:
    api.ready = (503, READYZ_503)
    code, output = trainyard("status", "--api", api.url)
    assert code == 1 and "NOT READY" in output and "error:" not in output.splitlines()[0], output
    rows = {line.split()[0]: line for line in output.splitlines() if line.strip()}
    assert all(len(line) <= 80 for line in output.splitlines()), output  # fits an 80-column terminal
    for name in ("postgres", "nats", "clickhouse", "relay", "projection:jobs", "metrics-projector", "reconciler"):
        assert name in rows, f"no row for {name}:\n{output}"
    assert "error" in rows["clickhouse"] and "ConnectionRefusedError" in rows["clickhouse"]
    assert "stuck" in rows["metrics-projector"] and "43" in rows["metrics-projector"]
    assert "95.0 s ago" in rows["metrics-projector"] and "clickhouse: C" in rows["metrics-projector"]
    assert "x" * 100 not in output  # the last error is cut short
    assert "behind" in rows["projection:jobs"] and "starting" in rows["reconciler"]


def test_status_exits_0_when_ready(api: FakeApi) -> None:
    api.ready = (200, {"ready": True, "checks": {"postgres": "ok", "nats": "ok", "clickhouse": "ok"},
                       "stages": {name: {**READYZ_503["stages"]["relay"]} for name in ("relay", "reports")}})
    code, output = trainyard("status", "--api", api.url)
    assert code == 0 and "ready" in output and "NOT READY" not in output, output
    assert "reports" in output and "clickhouse" in output


def test_the_python_client(api: FakeApi) -> None:
    with TrainyardClient(api.url) as ty:
        job_id = ty.submit({"name": "bc", "framework": "lightgbm", "task": "binary_classification",
                            "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 20}})["job_id"]
        threading.Timer(0.5, lambda: api.complete(api.jobs[UUID(job_id)])).start()
        done = ty.wait(job_id, timeout=10, interval=0.1)
        assert done["status"] == "completed" and done["final_metrics"]["auc"] == 0.991
        assert ty.job(job_id)["artifact"]["sha256"] == SHA
        assert ty.metrics(job_id)["latest"]["valid_auc"]["value"] == 0.97
        assert ty.ready() == (200, api.ready[1])
        api.ready = (503, READYZ_503)
        assert ty.ready() == (503, READYZ_503)

        queued = api.add()["job_id"]
        with pytest.raises(TimeoutError):
            ty.wait(queued, timeout=0.3, interval=0.1)
        with pytest.raises(TrainyardError) as e:
            ty.job(str(uuid.uuid4()))
        assert e.value.status == 404 and e.value.field == "job_id" and not e.value.retryable
    with pytest.raises(TrainyardUnavailable) as gone:
        TrainyardClient(f"http://127.0.0.1:{free_port()}").jobs()
    assert gone.value.status is None and gone.value.retryable and "connection refused" in str(gone.value)


def test_the_readme_python_example_runs(api: FakeApi, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("TRAINYARD_API_URL", api.url)

    def runner() -> None:
        eventually(lambda: api.jobs, timeout=60, interval=0.05, message="the README example never submitted its job")
        api.complete(next(iter(api.jobs.values())))

    threading.Thread(target=runner, daemon=True).start()
    exec(compile(example, "README.md", "exec"), {})
    (job,) = api.jobs.values()
    assert job["framework"] == "lightgbm" and job["dataset"]["uri"] == "builtin://breast_cancer"
    assert job["params"]["n_estimators"] <= 100
    assert capsys.readouterr().out.strip() == "completed {'auc': 0.991, 'logloss': 0.09}"


# ---- piped output -----------------------------------------------------------------------------------------------
def test_watch_piped_prints_a_plain_line_for_each_change_as_it_happens(api: FakeApi) -> None:
    job = api.add()

    def runner() -> None:
        # read 1: the check that the job exists; 2: the first look, whole before read 3 is counted
        eventually(lambda: api.reads >= 3, timeout=10, interval=0.02, message="the watch never looked")
        api.run(job, 10)
        eventually(lambda: api.reads >= 5, timeout=10, interval=0.02, message="the watch never looked again")
        api.complete(job)

    threading.Thread(target=runner, daemon=True).start()
    code, output = trainyard("watch", job["job_id"], "--api", api.url)  # CliRunner's output is not a terminal
    assert code == 0, output
    lines = output.splitlines()
    short, end = job["job_id"][:8], lines.index("{")
    progress = lines[:end]  # (the fake changes a job between two reads of one look: a state may show twice)
    assert progress[0].startswith(f"{short} queued attempt 0 0%"), output
    assert f"{short} running attempt 1 50% valid_logloss=0.25 valid_auc=0.97" in progress, output
    assert progress[-1] == f"{short} completed attempt 1 100% valid_logloss=0.25 valid_auc=0.97", output
    assert all(a != b for a, b in zip(progress, progress[1:])), output  # a line per change, not per look
    assert json.loads("\n".join(lines[end:]))["status"] == "completed"


def test_piped_tables_and_errors_are_never_cut(api: FakeApi) -> None:
    long_name = "a-very-long-job-name-" * 8
    api.add(name=long_name)
    code, output = trainyard("jobs", "--api", api.url)
    assert code == 0 and any(long_name in row for row in output.splitlines()), output

    long = "params: unknown parameter 'mi'; allowed: " + ", ".join(f"param_{i}" for i in range(80))
    error = TrainyardError(422, {"title": "Invalid request", "detail": long, "field": "params.mi"})
    assert str(error) == f"422 Invalid request: {long} (field params.mi)"


def test_a_param_without_equals_says_the_syntax(api: FakeApi) -> None:
    code, output = trainyard("submit", "--framework", "lightgbm", "--task", "binary_classification",
                             "--dataset", "builtin://breast_cancer", "-p", "n_estimators", "--api", api.url)
    assert code == 2 and "syntax is name=value" in " ".join(output.replace("│", " ").split()), output
    assert not api.jobs
