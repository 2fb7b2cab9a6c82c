"""The policy's decisions (commands/ab_policy.py `decide`, pure) and the Deployment's guard that makes acting on an
evaluation idempotent: an action based on a revision that is no longer current is refused."""
from __future__ import annotations

import pytest

from domain.ab_policy import decide
from domain.deployment import Deployment
from domain.deployment_spec import DeploymentError, StaleEvaluationError

POLICY = {"metric": "accuracy", "min_samples": 100, "min_lift": 0.0, "max_p_value": 0.05, "max_p99_latency_ms": 50,
          "max_error_rate": 0.05, "ramp": [10, 50, 100], "step_every_s": 60}


def arm(n: int, accuracy: float, requests: int | None = None, errors: int = 0, p99: float = 5.0) -> dict:
    hits = round(n * accuracy)
    return {"requests": requests if requests is not None else n, "errors": errors, "labelled": n,
            "metric_sum": float(hits), "metric_sum_sq": float(hits), "latency_p99_ms": p99}


def act(weights: dict, overall: dict, current: dict | None = None, seconds: float = 120, halted=(), **policy):
    action, figures = decide({**POLICY, **policy}, weights, "control", list(halted), overall, current or overall,
                             seconds)
    return action, figures


def test_a_challenger_at_zero_steps_to_the_first_ramp_weight_once_the_step_time_passed() -> None:
    assert act({"control": 100, "challenger": 0}, {}, seconds=10)[0] is None
    action, _ = act({"control": 100, "challenger": 0}, {}, seconds=61)
    assert (action.action, action.weight) == ("step", 10)


def test_a_step_needs_min_samples_on_both_sides_in_the_current_revision() -> None:
    overall = {"control": arm(2000, 0.80), "challenger": arm(300, 0.80)}
    assert act({"control": 90, "challenger": 10}, overall, {"control": arm(900, 0.8), "challenger": arm(99, 0.8)})[0] \
        is None
    action, figures = act({"control": 90, "challenger": 10}, overall,
                          {"control": arm(900, 0.8), "challenger": arm(100, 0.8)})
    assert (action.action, action.weight) == ("step", 50) and "not worse" in action.reason
    assert figures["comparison"]["decision"] == "no_difference_yet"


def test_significantly_better_at_the_last_step_is_promoted_but_not_before() -> None:
    overall = {"control": arm(5000, 0.80), "challenger": arm(5000, 0.86)}
    action, figures = act({"control": 50, "challenger": 50}, overall)
    assert (action.action, action.weight) == ("promote", 100)
    assert figures["comparison"]["decision"] == "challenger_better"
    action, _ = act({"control": 90, "challenger": 10}, overall)
    assert action.action == "step"  # better, but the ramp is not done: step first
    assert act({"control": 0, "challenger": 100}, overall)[0] is None  # promoted already: nothing more to do
    assert act({"control": 50, "challenger": 50}, overall, min_lift=0.1)[0] is None  # better, not by enough


def test_worse_slow_or_failing_challengers_are_halted_and_halted_ones_are_left_alone() -> None:
    worse = {"control": arm(5000, 0.86), "challenger": arm(5000, 0.80)}
    action, _ = act({"control": 90, "challenger": 10}, worse)
    assert (action.action, action.weight) == ("halt", 0) and "significantly worse" in action.reason
    slow = {"control": arm(200, 0.8), "challenger": arm(200, 0.8, p99=80.0)}
    assert "p99 latency" in act({"control": 90, "challenger": 10}, slow)[0].reason
    failing = {"control": arm(200, 0.8), "challenger": arm(200, 0.8, requests=200, errors=20)}
    assert "error rate" in act({"control": 90, "challenger": 10}, failing)[0].reason
    assert act({"control": 100, "challenger": 0}, worse, halted=["challenger"])[0] is None


def test_decisions_replay_from_their_recorded_figures() -> None:
    overall = {"control": arm(5000, 0.80), "challenger": arm(5000, 0.86)}
    action, figures = act({"control": 50, "challenger": 50}, overall)
    again, _ = decide({**POLICY}, figures["weights"], figures["control"], figures["halted"], figures["overall"],
                      figures["current"], figures["seconds_at_revision"])
    assert again == action


def variant(name: str, weight: int) -> dict:
    return {"name": name, "model": "m", "version": 1, "weight": weight, "artifact": {"uri": "file:///m.onnx"}}


def test_an_action_on_a_revision_that_moved_on_is_refused_so_two_evaluators_act_once() -> None:
    d = Deployment.create("d", [variant("control", 100), variant("challenger", 0)], policy=POLICY, project="default")
    evaluated = d.revision
    d.policy_action("step", "challenger", 10, evaluated, "first evaluator", {"n": 1})
    with pytest.raises(StaleEvaluationError):
        d.policy_action("step", "challenger", 10, evaluated, "second evaluator, same window", {"n": 1})
    assert d.weights == {"control": 90, "challenger": 10} and d.revision == 2
    d.policy_action("halt", "challenger", 0, d.revision, "worse", {"n": 2})
    assert d.halted == ["challenger"] and d.weights == {"control": 100, "challenger": 0}
    with pytest.raises(DeploymentError):
        d.policy_action("step", "challenger", 10, d.revision, "again", {})
    assert d.revisions[-1]["figures"] == {"n": 2} and d.revisions[-1]["change"] == "policy_halt"


def test_no_action_says_why_for_each_challenger() -> None:
    from domain.ab_policy import ramp_steps
    overall = {"control": arm(2000, 0.80), "challenger": arm(300, 0.80)}
    _, figures = act({"control": 90, "challenger": 10}, overall, {"control": arm(900, 0.8), "challenger": arm(40, 0.8)})
    assert figures["why_no_action"] == ("challenger at 10%: needs 100 labelled predictions per side at this "
                                        "revision, has 40 (control 900)")
    _, figures = act({"control": 90, "challenger": 10}, overall, seconds=15)
    assert figures["why_no_action"].startswith("challenger at 10%: next step possible in 45 s (accuracy diff")
    _, figures = act({"control": 50, "challenger": 50}, overall)
    assert "the last ramp step: waiting for a significant result" in figures["why_no_action"]
    _, figures = act({"control": 100, "challenger": 0}, overall, halted=["challenger"])
    assert figures["why_no_action"] == "challenger was halted by the policy and stays at 0%"
    action, figures = act({"control": 90, "challenger": 10}, overall, {"control": arm(900, .8), "challenger": arm(100, .8)})
    assert action is not None and "why_no_action" not in figures  # an action's figures are as they were
    assert ramp_steps(POLICY, {"control": 50, "challenger": 50, "other": 0}, "control", ["other"]) == [
        {"variant": "challenger", "weight": 50, "step": 2, "of": 3, "ramp": [10, 50, 100], "halted": False},
        {"variant": "other", "weight": 0, "step": 0, "of": 3, "ramp": [10, 50, 100], "halted": True}]
