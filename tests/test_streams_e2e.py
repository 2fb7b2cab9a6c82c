"""Live streams end to end on a live `trainyard up` stack (real runners): what the Python client and the CLI read
from a job's and a study's stream is what the REST reads show, a resumed stream loses and repeats nothing, and the
CLI's `watch` and `logs -f` follow the streams. Prints the publish→stream lag of a job's points (an upper bound:
a point's ts is when its trainer reported it)."""
from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from api.cli import cli
from api.client import TrainyardClient
from tests.support.auth import admin_token
from tests.support.stack import JOBS, Stack

pytestmark = pytest.mark.integration
LIGHTGBM = {"framework": "lightgbm", "task": "binary_classification", "dataset": {"uri": "builtin://breast_cancer"}}


def client(stack: Stack) -> TrainyardClient:
    return TrainyardClient(str(stack.http.base_url).rstrip("/"), token=admin_token(stack.data_dir), project="default")


def read(messages: Any, stop_after: int | None = None) -> list[tuple[str, str | None, Any, float]]:
    """(event, id, data, arrival time in ms) up to "end" (or `stop_after` messages, then the stream is closed)."""
    out = []
    for event, message_id, data in messages:
        out.append((event, message_id, data, time.time() * 1000))
        if stop_after is not None and len(out) >= stop_after:
            messages.close()
            break
    return out


def points(messages: list[tuple[str, str | None, Any, float]]) -> list[tuple[str, int, int, Any]]:
    return [(p["name"], p["attempt"], p["step"], p["value"]) for e, _, d, _ in messages if e == "metrics"
            for p in d["points"]]


def lines(messages: list[tuple[str, str | None, Any, float]]) -> list[tuple[int, int, str]]:
    return [(x["attempt"], x["seq"], x["message"]) for e, _, d, _ in messages if e == "logs" for x in d["lines"]]


def test_a_jobs_stream_delivers_its_statuses_points_and_lines_and_resumes_with_no_gap_or_repeat(stack: Stack) -> None:
    job_id = stack.submit(**LIGHTGBM, params={"n_estimators": 400, "learning_rate": 0.02})
    whole: list[Any] = []
    live = threading.Thread(target=lambda: whole.extend(read(client(stack).stream_job(job_id))), daemon=True)
    live.start()  # one uninterrupted read, from the start, as the job runs

    # a reader that drops its connection after a few messages and comes back with the last id it saw
    first = read(client(stack).stream_job(job_id), stop_after=3)
    rest = read(client(stack).stream_job(job_id, first[-1][1]))
    live.join(120)
    assert not live.is_alive() and whole[-1][0] == rest[-1][0] == "end"
    assert all(e != "end" for e, *_ in whole[:-1])

    done = stack.job(job_id)
    assert done["status"] == "completed"
    statuses = [d["status"] for e, _, d, _ in whole if e == "status"]
    assert "running" in statuses and statuses[-1] == "completed"
    assert [d for e, _, d, _ in whole if e == "status"][-1]["final_metrics"] == done["final_metrics"]

    # every point, each series in step order, as GET …/metrics/{name} has them; resumed = uninterrupted
    streamed = points(whole)
    assert points(first) + points(rest) == streamed
    names = {n for n, *_ in streamed}
    assert names and names == set(stack.http.get(f"{JOBS}/{job_id}/metrics").json()["names"])
    for name in names:
        stored = [(p["step"], p["value"]) for p in stack.series(job_id, name)]
        assert [(s, v) for n, _, s, v in streamed if n == name] == stored, name

    # every log line in order, as GET …/logs has them; resumed = uninterrupted
    assert lines(first) + lines(rest) == lines(whole)
    stored_lines = stack.http.get(f"{JOBS}/{job_id}/logs", params={"limit": 10_000}).json()["lines"]
    assert lines(whole) == [(x["attempt"], x["seq"], x["message"]) for x in stored_lines] and stored_lines

    # a stream of the ended job replays the same and ends
    replay = read(client(stack).stream_job(job_id))
    assert points(replay) == streamed and lines(replay) == lines(whole) and replay[-1][0] == "end"

    lag = sorted(arrived - p["ts"] for e, _, d, arrived in whole if e == "metrics" for p in d["points"])
    print(f"\npublish→stream lag over {len(lag)} points of job {job_id}: p50 {statistics.median(lag):.0f} ms, "
          f"p99 {lag[min(len(lag) - 1, int(len(lag) * 0.99))]:.0f} ms, max {lag[-1]:.0f} ms")


def test_the_cli_watches_and_follows_logs_from_the_streams(stack: Stack) -> None:
    job_id = stack.submit(**LIGHTGBM, params={"n_estimators": 200, "learning_rate": 0.05})
    follow = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "logs", job_id, "-f", "--tail", "5",
                               "--level", "info"], env=stack.cli_env(), stdout=subprocess.PIPE, text=True)
    watched = CliRunner(env=stack.cli_env()).invoke(cli, ["watch", job_id[:8]])
    followed, _ = follow.communicate(timeout=120)
    assert watched.exit_code == 0, watched.output
    progress = watched.output.split("\n{", 1)[0].splitlines()
    latest = stack.http.get(f"{JOBS}/{job_id}/metrics").json()["latest"]
    shown = " ".join(f"{n}={p['value']:.4g}" for n, p in latest.items())
    assert progress[-1] == f"{job_id[:8]} completed attempt 1 100% {shown}", watched.output
    assert len(progress) == len(set(progress)) >= 2  # a line per change

    assert follow.returncode == 0, followed
    stored = [f"{x['ts']} {x['level'].upper()} [{x['stream']}] {x['message']}" for x in stack.http.get(
        f"{JOBS}/{job_id}/logs", params={"limit": 10_000, "level": "info"}).json()["lines"]]
    printed = followed.splitlines()  # the tail when it started, then every line that came after, as GET has it
    assert printed and printed == stored[-len(printed):], followed


def test_a_studys_stream_delivers_each_trial_and_ends(stack: Stack) -> None:
    body = {"name": "streamed-study", **LIGHTGBM, "objective": {"metric": "auc", "direction": "maximize"},
            "search_space": {"num_leaves": {"type": "int", "low": 4, "high": 32}},
            "fixed_params": {"n_estimators": 10}, "sampler": {"type": "random", "seed": 3}, "n_trials": 3,
            "max_parallel": 2}
    r = stack.http.post("/api/v1/studies", json=body)
    assert r.status_code == 202, r.text
    study_id = r.json()["study_id"]
    messages = read(client(stack).stream_study(study_id))
    assert messages[-1][0] == "end"
    final = {d["number"]: d for e, _, d, _ in messages if e == "trial"}
    stored = stack.http.get(f"/api/v1/studies/{study_id}/trials").json()["items"]
    assert sorted(final) == [t["number"] for t in stored] == [0, 1, 2]
    assert all(final[t["number"]]["state"] == t["state"] == "completed" for t in stored)
    study = [d for e, _, d, _ in messages if e == "study"][-1]
    best = max(stored, key=lambda t: t["value"])
    assert study["status"] == "completed" and study["best_trial"]["value"] == best["value"]
