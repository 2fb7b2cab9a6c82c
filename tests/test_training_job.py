"""The TrainingJob aggregate: any sequence of commands leaves a legal state, and its events rebuild it."""
from __future__ import annotations

import copy
from uuid import uuid4

import pytest
from hypothesis import given, settings, strategies as st

from domain.training_job import (FINISHED, CancelNotRequestedError, JobError, JobFinishedError, LeaseHeldError,
                                 StaleLeaseError, TrainingJob)
from tests.support.strategies import apply_job_command, job_commands


def new_job(max_attempts: int = 3) -> TrainingJob:
    return TrainingJob(id=uuid4(), name="j", framework="lightgbm", task="regression",
                       dataset={"uri": "builtin://diabetes"}, params={}, priority="medium", tags=["t"],
                       max_attempts=max_attempts)


@settings(max_examples=400, deadline=None)
@given(st.lists(job_commands, max_size=30))
def test_any_command_sequence_leaves_a_legal_state_and_replays_to_the_same_object(cmds: list[tuple]) -> None:
    job = new_job()
    events = list(job.collect_events())
    for cmd in cmds:
        before = (job.status, job.attempt, job.lease_id, job.lost_leases)
        state = copy.deepcopy({k: v for k, v in job.__dict__.items() if k != "_pending_events"})
        snapshot = copy.deepcopy(job)  # shares its attributes' values with `job` (LeasedWork.__deepcopy__)
        try:
            apply_job_command(job, cmd)
        except (JobError, ValueError):
            assert (job.status, job.attempt, job.lease_id, job.lost_leases) == before  # refused: nothing changed
        new = job.collect_events()
        events.extend(new)
        assert {k: v for k, v in snapshot.__dict__.items() if k != "_pending_events"} == state  # the copy kept
        if before[0] in FINISHED:
            assert not new and job.status == before[0]  # finished is final
        assert job.status in ("queued", "running", *FINISHED)
        assert job.attempt >= before[1] and job.lost_leases >= before[3]  # attempts and losses only grow
        assert job.lost_leases <= job.max_attempts
        # every run but a running one ended once: handed back, lost, or the end; hand-backs spend no attempt
        assert job.hand_backs + job.lost_leases <= job.attempt - (job.status == "running")
        if job.status == "running":
            assert job.lease_id is not None  # a running job is always held by exactly one lease
        if job.status == "queued":
            assert job.lease_id is None
        if job.status == "failed":
            assert job.error
        if job.status == "completed":
            assert job.artifact is not None and job.final_metrics
        if job.status == "cancelled":
            assert job.cancel_requested
        if job.total_steps is not None:
            assert 0 <= job.current_step <= job.total_steps
    rebuilt = None
    for e in events:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.__dict__ == job.__dict__
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))


def test_a_live_lease_cannot_be_taken_over_and_other_leases_are_refused() -> None:
    job = new_job()
    job.claim("lease-a", "h:1")
    with pytest.raises(LeaseHeldError):
        job.claim("lease-b", "h:2")  # a duplicated or re-published work item
    job.claim("lease-a", "h:1")  # the holder's retried claim is a no-op
    for refused in (lambda: job.record_progress("lease-b", 1, 10), lambda: job.hand_back("lease-b", "x"),
                    lambda: job.complete("lease-b", {"rmse": 1.0}, {"uri": "x"})):
        with pytest.raises(StaleLeaseError):
            refused()
    job.expire_lease("lease-b", "not the holder")  # a stale expiry changes nothing
    assert (job.status, job.lease_id, job.attempt, job.lost_leases) == ("running", job.lease_id, 1, 0)


def test_a_graceful_hand_back_spends_nothing_and_a_lost_lease_spends_one_attempt() -> None:
    job = new_job()
    for n in range(5):  # five graceful restarts
        job.claim(f"lease-{n}", "h:1")
        job.hand_back(f"lease-{n}", "runner stopping")
        assert (job.status, job.lost_leases) == ("queued", 0)
    job.claim("lease-x", "h:2")
    job.expire_lease("lease-x", "runner h:2 stopped renewing its lease")
    assert (job.status, job.lost_leases, job.attempt) == ("queued", 1, 6)
    job.claim("lease-y", "h:1")
    job.complete("lease-y", {"rmse": 1.0}, {"uri": "x"})
    assert job.status == "completed"


def test_the_job_fails_once_its_runner_is_lost_max_attempts_times() -> None:
    job = new_job(max_attempts=3)
    for n in range(3):
        job.claim(f"lease-{n}", "h:1")
        job.expire_lease(f"lease-{n}", "runner died")
    assert job.status == "failed" and "lost its runner 3 times" in job.error
    types = [type(e).__name__ for e in job.collect_events()]
    assert types[-2:] == ["LeaseLost", "Failed"] and types.count("Requeued") == 2


def test_repeated_reports_are_harmless() -> None:
    job = new_job()
    job.claim("lease-a", "h:1")
    job.claim("lease-a", "h:1")
    job.complete("lease-a", {"rmse": 1.0}, {"uri": "x"})
    job.complete("lease-a", {"rmse": 1.0}, {"uri": "x"})
    assert [type(e).__name__ for e in job.collect_events()] == ["Submitted", "Started", "Completed"]


def test_cancel_queued_ends_at_once_running_asks_the_runner_and_finished_is_refused() -> None:
    queued = new_job()
    queued.request_cancel()
    assert queued.status == "cancelled"
    running = new_job()
    running.claim("lease-a", "h:1")
    with pytest.raises(CancelNotRequestedError):
        running.confirm_cancelled("lease-a")  # nobody asked: a runner cannot cancel on its own
    running.request_cancel()
    assert (running.status, running.cancel_requested) == ("running", True)
    running.confirm_cancelled("lease-a")
    assert running.status == "cancelled"
    with pytest.raises(JobFinishedError):
        running.request_cancel()
