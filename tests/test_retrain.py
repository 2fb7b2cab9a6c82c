"""The retrain's gate and aggregate, in memory: the verdict from the figures, each step once, the stored form."""
from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from domain.retrain import (Retrain, RetrainError, RetrainSpecError, RetrainStatus, check_gate, decide_gate,
                            retrain_id, retrain_validation)
from domain.training_job import TrainingJob
from tests.support.stored_events import store_and_load

CHAMPION = {"uri": "file:///m.onnx", "sha256": "0" * 64, "feature_names": ["a", "b"], "model": "bc", "version": 1}


def _retrain(**over: Any) -> Retrain:
    fields = dict(job_id=uuid4(), project="alpha", deployment="bc", variant="a", model="bc", version=1,
                  gate={"metric": "auc", "max_regression": 0.0}, register_as="bc", challenger=None, champion=CHAMPION)
    return Retrain.request(**{**fields, **over})


def test_a_better_candidate_passes_and_a_worse_one_fails_with_both_figures_in_the_reason() -> None:
    gate = check_gate({"metric": "auc", "max_regression": 0.01})
    better = decide_gate(gate, {"test_auc": 0.97, "champion_test_auc": 0.91})
    assert better.passed and "0.9700" in better.reason and "0.9100" in better.reason
    worse = decide_gate(gate, {"test_auc": 0.85, "champion_test_auc": 0.91})
    assert not worse.passed
    assert "0.8500" in worse.reason and "0.9100" in worse.reason and "0.0600" in worse.reason
    assert worse.figures["regression"] == pytest.approx(0.06)
    assert decide_gate(gate, {"test_auc": 0.905, "champion_test_auc": 0.91}).passed  # within the allowed 0.01


def test_lower_is_better_metrics_regress_upwards_and_min_value_is_their_ceiling() -> None:
    gate = check_gate({"metric": "rmse", "min_value": 10, "max_regression": 0})
    assert decide_gate(gate, {"test_rmse": 8.0, "champion_test_rmse": 9.0}).passed
    worse = decide_gate(gate, {"test_rmse": 9.5, "champion_test_rmse": 9.0})
    assert not worse.passed and "over the allowed" in worse.reason
    over = decide_gate(gate, {"test_rmse": 11.0, "champion_test_rmse": 12.0})
    assert not over.passed and "misses the threshold ≤ 10.0000" in over.reason


def test_a_champion_that_could_not_be_scored_fails_a_regression_gate_but_not_a_threshold_one() -> None:
    problem = "the deployed version takes 2 features, the new data has 3"
    failed = decide_gate(check_gate({"metric": "auc", "max_regression": 0}), {"test_auc": 0.99}, problem)
    assert not failed.passed and problem in failed.reason
    assert decide_gate(check_gate({"metric": "auc", "min_value": 0.9}), {"test_auc": 0.99}, problem).passed
    assert not decide_gate(check_gate({"metric": "auc", "min_value": 0.9}), {"auc": 0.99}).passed  # no test split
    assert decide_gate(None, {}).passed


@pytest.mark.parametrize("gate, field", [({"metric": "speed"}, "gate.metric"),
                                         ({"metric": "auc", "min_value": "high"}, "gate.min_value"),
                                         ({"metric": "auc", "max_regression": -1}, "gate.max_regression"),
                                         ({"metric": "auc", "min_value": float("nan")}, "gate.min_value")])
def test_a_gate_that_cannot_be_judged_is_refused_naming_its_field(gate: dict[str, Any], field: str) -> None:
    with pytest.raises(RetrainSpecError) as e:
        check_gate(gate)
    assert e.value.field == field


def test_a_challenger_needs_a_registered_version() -> None:
    with pytest.raises(RetrainSpecError) as e:
        _retrain(register_as=None, challenger={"weight": 10})
    assert e.value.field == "challenger"


def test_the_retrain_job_always_holds_out_a_test_split() -> None:
    assert retrain_validation(None) == {"strategy": "holdout", "test_fraction": 0.2}
    assert retrain_validation({"strategy": "kfold", "k": 5, "seed": 3}) == {"strategy": "holdout",
                                                                            "test_fraction": 0.2, "seed": 3}
    assert retrain_validation({"strategy": "time_series", "gap": 2})["test_fraction"] == 0.2
    kept = {"strategy": "holdout", "test_fraction": 0.3}
    assert retrain_validation(kept) == kept


def test_each_step_is_taken_once_in_order_and_replays_to_the_same_state() -> None:
    retrain = _retrain(challenger={"weight": 10})
    assert retrain.id == retrain_id(retrain.job_id) and retrain.is_open
    with pytest.raises(RetrainError):
        retrain.version_registered(2)  # not judged yet
    retrain.judge({"test_auc": 0.95, "champion_test_auc": 0.9})
    with pytest.raises(RetrainError):
        retrain.judge({"test_auc": 0.95, "champion_test_auc": 0.9})
    retrain.version_registered(2)
    export_id = uuid4()
    retrain.export_requested(export_id)
    retrain.challenger_added("retrain-v2", 10, 4)
    assert not retrain.is_open
    loaded = store_and_load(retrain)
    assert (loaded.status, loaded.registered_version, loaded.export_id, loaded.challenger_variant) == (
        RetrainStatus.CHALLENGER_ADDED, 2, export_id, "retrain-v2")
    assert loaded.figures["candidate"] == 0.95 and "0.9500" in loaded.reason


def test_a_refused_or_final_retrain_has_no_step_left() -> None:
    refused = _retrain()
    refused.judge({"test_auc": 0.8, "champion_test_auc": 0.9})
    assert refused.status == RetrainStatus.GATE_FAILED and not refused.is_open
    passed_only = _retrain(register_as=None)
    passed_only.judge({"test_auc": 0.95, "champion_test_auc": 0.9})
    assert passed_only.status == RetrainStatus.PASSED and not passed_only.is_open
    failed = _retrain()
    failed.job_failed("failed", "DatasetError: no such file")
    assert not failed.is_open and "no such file" in failed.reason


def test_a_job_submitted_before_retrains_has_no_champion() -> None:
    def as_v7(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrainingJob.Submitted"):
            state["class_version"] = 7
            del state["champion"]

    def job(champion: dict[str, Any] | None) -> TrainingJob:
        return TrainingJob.create(uuid4(), project="alpha", name="j", framework="lightgbm",
                                  task="binary_classification", dataset={"uri": "builtin://breast_cancer"}, params={},
                                  priority="medium", tags=[], champion=champion)
    old = store_and_load(job(None), as_v7)
    assert old.champion is None and "champion" not in old.spec()
    assert store_and_load(job(CHAMPION)).spec()["champion"] == CHAMPION


def test_every_retrain_event_validates_against_its_documented_schema() -> None:
    from api.asyncapi import EVENTS, Envelope
    from domain.contract import envelope
    from domain.registry import aggregate_of

    passed, failed, lost, refused = _retrain(challenger={"weight": 10}), _retrain(), _retrain(), _retrain(
        challenger={"weight": 10})
    passed.judge({"test_auc": 0.95, "champion_test_auc": 0.9})
    passed.version_registered(2)
    passed.export_requested(uuid4())
    passed.challenger_added("retrain-v2", 10, 4)
    failed.judge({"test_auc": 0.8, "champion_test_auc": 0.9})
    lost.job_failed("cancelled", None)
    refused.judge({"test_auc": 0.95, "champion_test_auc": 0.9})
    refused.version_registered(3)
    refused.challenger_failed("variant 'a' has 5% of the traffic, less than 10%")
    seen = set()
    for e in (e for r in (passed, failed, lost, refused) for e in r.collect_events()):
        subject, body = envelope(e, aggregate_of(e).name)
        _, _, aggregate, name = subject.split(".")
        assert aggregate == "retrain"
        Envelope[EVENTS[aggregate][name]].model_validate(body)
        seen.add(name)
    assert seen == set(EVENTS["retrain"])
