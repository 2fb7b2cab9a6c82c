"""The TrainingJob aggregate: any sequence of commands leaves a legal state, and its events rebuild it."""
from __future__ import annotations

from uuid import uuid4

import pytest
from hypothesis import given, settings, strategies as st

from domain.training_job import FINISHED, JobError, JobFinishedError, StaleAttemptError, TrainingJob


def new_job() -> TrainingJob:
    return TrainingJob(id=uuid4(), name="j", framework="lightgbm", task="regression",
                       dataset={"uri": "builtin://diabetes"}, params={}, priority="medium", tags=["t"])


attempts = st.integers(min_value=1, max_value=4)
commands = st.one_of(
    st.tuples(st.just("start"), attempts, st.sampled_from(["h:1", "h:2"])),
    st.tuples(st.just("progress"), attempts, st.integers(0, 12), st.integers(1, 10)),
    st.tuples(st.just("complete"), attempts),
    st.tuples(st.just("fail"), attempts),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("give_up")),
    st.tuples(st.just("confirm_cancelled"), attempts),
)


def apply(job: TrainingJob, cmd: tuple) -> None:
    name, *args = cmd
    if name == "start":
        job.start(args[0], args[1])
    elif name == "progress":
        job.report_progress(args[0], args[1], args[2])
    elif name == "complete":
        job.complete(args[0], {"rmse": 1.0}, {"uri": "file:///m", "sha256": "x"})
    elif name == "fail":
        job.fail(args[0], "boom")
    elif name == "cancel":
        job.request_cancel()
    elif name == "give_up":
        job.give_up("runners kept dying")
    else:
        job.confirm_cancelled(args[0])


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=25))
def test_any_command_sequence_leaves_a_legal_state_and_replays_to_the_same_object(cmds: list[tuple]) -> None:
    job = new_job()
    events = list(job.collect_events())
    for cmd in cmds:
        before = (job.status, job.attempt)
        try:
            apply(job, cmd)
        except (JobError, ValueError):
            assert (job.status, job.attempt) == before  # a refused command changes nothing
        new = job.collect_events()
        events.extend(new)
        if before[0] in FINISHED:
            assert not new and job.status == before[0]  # finished is final
        assert job.status in ("queued", "running", *FINISHED)
        assert job.attempt >= before[1]  # attempts only move forward
        if job.status == "queued":
            assert job.attempt == 0 and job.runner_id is None
        if job.status == "failed":
            assert job.error
        if job.status == "completed":
            assert job.artifact is not None and job.final_metrics
        if job.total_steps is not None:
            assert 0 <= job.current_step <= job.total_steps
    rebuilt = None
    for e in events:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.__dict__ == job.__dict__
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))


def test_a_lost_runner_is_replaced_by_a_new_attempt_and_the_old_one_is_refused() -> None:
    job = new_job()
    job.start(1, "h:1")
    job.report_progress(1, 3, 10)
    job.start(2, "h:2")
    assert (job.status, job.attempt, job.runner_id, job.current_step) == ("running", 2, "h:2", 0)
    with pytest.raises(StaleAttemptError):
        job.complete(1, {"rmse": 1.0}, {"uri": "x"})
    job.complete(2, {"rmse": 1.0}, {"uri": "x"})
    assert job.status == "completed"


def test_repeated_reports_are_harmless() -> None:
    job = new_job()
    job.start(1, "h:1")
    job.start(1, "h:1")
    job.complete(1, {"rmse": 1.0}, {"uri": "x"})
    job.complete(1, {"rmse": 1.0}, {"uri": "x"})
    assert [type(e).__name__ for e in job.collect_events()] == ["Submitted", "Started", "Completed"]


def test_cancel_queued_ends_at_once_running_asks_the_runner_and_finished_is_refused() -> None:
    queued = new_job()
    queued.request_cancel()
    assert queued.status == "cancelled"
    running = new_job()
    running.start(1, "h:1")
    running.request_cancel()
    assert (running.status, running.cancel_requested) == ("running", True)
    running.confirm_cancelled(1)
    assert running.status == "cancelled"
    with pytest.raises(JobFinishedError):
        running.request_cancel()
