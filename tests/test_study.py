"""The Study aggregate: any sequence of commands leaves a legal state, and its events rebuild it."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
from hypothesis import given, settings, strategies as st

from domain.study import (Study, StudyError, StudyFinishedError, Trial, TrialLimitError, TrialNumberError,
                          TrialOutcomeError)
from domain.vocabulary import STUDY_ENDED as FINISHED
from tests.support.strategies import TRIAL_JOBS, apply_study_command, new_study, study_commands


def expected_best(study: Study) -> tuple[int, float] | None:
    done = [(n, t.value) for n, t in study.trials.items() if t.state == "completed"]
    if not done:
        return None
    sign = -1 if study.objective["direction"] == "maximize" else 1
    return min(done, key=lambda nv: (sign * nv[1], nv[0]))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["maximize", "minimize"]), st.integers(1, 4), st.integers(1, 3),
       st.lists(study_commands, min_size=15, max_size=60))
def test_any_command_sequence_leaves_a_legal_state_and_replays_to_the_same_object(
        direction: str, n_trials: int, max_parallel: int, cmds: list[tuple]) -> None:
    study = new_study(direction, n_trials, max_parallel)
    events = list(study.collect_events())
    outcomes: dict[int, str] = {}
    for cmd in cmds:
        before = copy.deepcopy({k: v for k, v in study.__dict__.items() if k != "_pending_events"})
        snapshot = copy.deepcopy(study)  # shares the trials' records with `study` (Study.__deepcopy__)
        try:
            apply_study_command(study, cmd)
            refused = False
        except (StudyError, ValueError):
            refused = True
        # what the command changed did not reach the copy (the repository's cache and the driver's draft rely on it)
        assert {k: v for k, v in snapshot.__dict__.items() if k != "_pending_events"} == before
        new = study.collect_events()
        events.extend(new)
        if refused:  # refused: nothing changed
            assert not new and {k: v for k, v in study.__dict__.items() if k != "_pending_events"} == before
        if before["status"] in FINISHED:
            assert study.status == before["status"]  # an ended study never changes status
            assert all(type(e).__name__ not in ("Completed", "Cancelled", "Failed", "CancelRequested",
                                                 "TrialAsked") for e in new)
        assert study.status in ("running", "cancelling", *FINISHED)
        assert sorted(study.trials) == list(range(len(study.trials))) and len(study.trials) <= study.n_trials
        assert len({t.job_id for t in study.trials.values()}) == len(study.trials)
        assert sum(study.counts.values()) == len(study.trials)
        assert study.unfinished == [n for n, t in study.trials.items() if t.state in ("queued", "running")]
        for n, t in study.trials.items():
            assert t.number == n
            if n in outcomes:
                assert t.state == outcomes[n]  # an outcome is recorded once
            elif t.state in ("completed", "pruned", "failed"):
                outcomes[n] = t.state
            if t.state == "completed":
                assert isinstance(t.value, float) and math.isfinite(t.value)
            if t.state == "pruned":
                assert t.pruned_at_step == t.prune_requested_at_step
        best = expected_best(study)
        if best is None:
            assert study.best is None
        else:
            assert study.best is not None and (study.best["number"], study.best["value"]) == best
            assert study.best["params"] == study.trials[best[0]].params
            assert study.best["job_id"] == study.trials[best[0]].job_id
        if study.status == "cancelling":
            assert study.unfinished and study.cancel_reason
        if study.status == "running" and len(study.trials) == study.n_trials:
            assert study.unfinished  # the last outcome completes the study
        if study.is_finished:
            assert study.finished_reason
        history = study.history()
        assert [h[0] for h in history] == sorted(n for n, t in study.trials.items() if t.state == "completed")
        assert (history[-1][2] if history else None) == (best[1] if best else None)
    rebuilt = events[0].mutate(None)
    for e in events[1:]:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.__dict__ == study.__dict__
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))


def run_trial(study: Study, number: int, value: float) -> None:
    study.ask_trial(number, {"lr": 0.1 * (number + 1)}, TRIAL_JOBS[number])
    study.trial_started(number)
    study.finish_trial(number, "completed", value)


@pytest.mark.parametrize("direction, best_number", [("maximize", 1), ("minimize", 2)])
def test_a_full_study_completes_with_the_best_trial(direction: str, best_number: int) -> None:
    study = new_study(direction)
    for n, v in enumerate([0.5, 0.9, 0.1]):
        run_trial(study, n, v)
    assert study.status == "completed" and study.finished_reason == "all 3 trials finished"
    assert study.best == {"number": best_number, "value": [0.5, 0.9, 0.1][best_number],
                          "params": {"lr": 0.1 * (best_number + 1)}, "job_id": TRIAL_JOBS[best_number]}
    assert study.counts == {"queued": 0, "running": 0, "completed": 3, "pruned": 0, "failed": 0}
    assert [h[2] for h in study.history()] == ([0.5, 0.9, 0.9] if direction == "maximize" else [0.5, 0.5, 0.1])
    types = [type(e).__name__ for e in study.collect_events()]
    assert types[-1] == "Completed" and types[-3:-1] == (
        ["TrialFinished", "BestTrialImproved"] if direction == "minimize" else ["TrialStarted", "TrialFinished"])
    assert types.count("BestTrialImproved") == 2


def test_ties_keep_the_lower_numbered_trial_whatever_order_they_end_in() -> None:
    study = new_study("minimize")
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])
    study.ask_trial(1, {"lr": 0.2}, TRIAL_JOBS[1])
    study.ask_trial(2, {"lr": 0.3}, TRIAL_JOBS[2])
    study.finish_trial(1, "completed", 0.3)
    study.finish_trial(0, "completed", 0.3)
    study.finish_trial(2, "completed", 0.3)
    assert study.best is not None and study.best["number"] == 0
    assert [type(e).__name__ for e in study.collect_events()].count("BestTrialImproved") == 2


def test_cancel_with_running_trials_waits_for_them() -> None:
    study = new_study(n_trials=5)
    for n in range(3):
        study.ask_trial(n, {"lr": 0.1}, TRIAL_JOBS[n])
    study.trial_started(0)
    study.finish_trial(2, "completed", 0.7)
    study.request_cancel("user asked")
    assert study.status == "cancelling"
    assert study.collect_events()[-1].running == [0, 1]
    with pytest.raises(StudyFinishedError):
        study.ask_trial(3, {"lr": 0.1}, TRIAL_JOBS[3])
    study.prune_trial(0, 4, 0.2)
    study.finish_trial(0, "pruned")
    assert study.status == "cancelling" and study.trials[0].pruned_at_step == 4
    study.finish_trial(1, "failed", error="cancelled")
    assert study.status == "cancelled" and study.finished_reason == "user asked"
    with pytest.raises(StudyFinishedError):
        study.request_cancel()


def test_confirm_cancelled_forces_the_end_and_late_outcomes_are_still_recorded() -> None:
    study = new_study()
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])
    with pytest.raises(StudyError):
        study.confirm_cancelled()  # nobody asked
    study.request_cancel()
    study.confirm_cancelled()
    study.confirm_cancelled()
    assert study.status == "cancelled"
    study.finish_trial(0, "completed", 0.4)
    assert study.status == "cancelled" and study.best is not None and study.best["number"] == 0


def test_ask_beyond_n_trials_and_gaps_are_refused_and_a_repeat_ask_is_a_no_op() -> None:
    study = new_study(n_trials=2, max_parallel=5)
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])  # at-least-once delivery
    assert len(study.trials) == 1 and len(study.collect_events()) == 2
    with pytest.raises(TrialNumberError):
        study.ask_trial(0, {"lr": 0.2}, TRIAL_JOBS[0])
    with pytest.raises(TrialNumberError):
        study.ask_trial(2, {"lr": 0.1}, TRIAL_JOBS[2])
    with pytest.raises(StudyError):
        study.ask_trial(1, {"lr": 0.1}, TRIAL_JOBS[0])  # a job runs one trial
    study.ask_trial(1, {"lr": 0.1}, TRIAL_JOBS[1])
    assert not study.can_ask
    with pytest.raises(TrialLimitError):
        study.ask_trial(2, {"lr": 0.1}, TRIAL_JOBS[2])


def test_outcomes_are_recorded_once_and_completed_needs_a_finite_value() -> None:
    study = new_study()
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])
    for bad in (None, math.nan, math.inf):
        with pytest.raises(ValueError):
            study.finish_trial(0, "completed", bad)
    study.finish_trial(0, "failed", error="oom")
    study.finish_trial(0, "failed", error="oom again")
    study.trial_started(0)  # a late start report changes nothing
    with pytest.raises(TrialOutcomeError):
        study.finish_trial(0, "completed", 1.0)
    with pytest.raises(TrialNumberError):
        study.finish_trial(7, "failed")
    assert study.trials[0].state == "failed" and study.trials[0].error == "oom"


def test_complete_early_needs_no_unfinished_trials_and_fail_ends_the_study() -> None:
    study = new_study(n_trials=10)
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])
    with pytest.raises(StudyError):
        study.complete("timeout")
    study.finish_trial(0, "completed", 0.2)
    study.complete("grid exhausted")
    study.complete("again")
    assert (study.status, study.finished_reason) == ("completed", "grid exhausted")
    with pytest.raises(StudyFinishedError):
        study.fail("x")
    failing = new_study()
    failing.fail("every trial failed")
    with pytest.raises(StudyFinishedError):
        failing.complete("x")
    assert failing.status == "failed"


def test_creation_needs_an_objective_with_a_direction_and_at_least_one_trial() -> None:
    for direction, n_trials, max_parallel in (("sideways", 3, 1), ("maximize", 0, 1), ("minimize", 3, 0)):
        with pytest.raises(ValueError):
            new_study(direction, n_trials, max_parallel)


def test_a_trial_record_is_frozen_and_round_trips_through_json() -> None:
    study = new_study()
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])
    study.prune_trial(0, 3, 0.2)
    study.finish_trial(0, "pruned")
    trial = study.trial(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        trial.state = "running"  # type: ignore[misc]
    assert trial.to_json() == {"number": 0, "params": {"lr": 0.1}, "job_id": str(TRIAL_JOBS[0]), "state": "pruned",
                               "value": None, "prune_requested_at_step": 3, "pruned_at_step": 3, "error": None}
    assert Trial.from_json(trial.to_json()) == trial


def test_a_copy_of_a_study_shares_its_trial_records_and_misses_later_ones() -> None:
    study = new_study()
    study.ask_trial(0, {"lr": 0.1}, TRIAL_JOBS[0])
    copied = copy.deepcopy(study)
    assert copied.trials is not study.trials and copied.trials[0] is study.trials[0]
    study.trial_started(0)
    study.ask_trial(1, {"lr": 0.2}, TRIAL_JOBS[1])
    assert copied.trials[0].state == "queued" and list(copied.trials) == [0]
