"""Stored events outlive the rules and the shapes of their day: an event that breaks today's input rules still
loads (the rules run in factories and command methods, never when an event is applied), and the first version
of every event that has since gained a field loads through its upcaster with the field's default."""
from __future__ import annotations

from typing import Any
from uuid import uuid4

from domain.api_key import ApiKey
from domain.deployment import Deployment
from domain.models import ModelExport, RegisteredModel
from domain.study import Study
from tests.support.stored_events import store_and_load

ARTIFACT = {"uri": "file:///m.onnx", "sha256": "0" * 64}


def _set(event: str, **fields: Any):  # an edit: these fields of the `event` events take these stored values
    def edit(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith(f".{event}"):
            state.update(fields)
    return edit


def test_a_deployment_stored_with_a_policy_and_name_todays_rules_refuse_still_loads() -> None:
    d = Deployment.create("fraud", [{"name": "a", "model": "m", "version": 1, "weight": 100, "artifact": ARTIFACT}])
    policy = {"metric": "auc", "min_samples": 1, "ramp": [5], "step_every_s": 0}
    loaded = store_and_load(d, _set("Created", name="Fraud Scoring!", policy=policy, reason="x" * 900))
    assert (loaded.name, loaded.policy, loaded.revisions[0]["reason"]) == ("Fraud Scoring!", policy, "x" * 900)


def test_a_model_stored_with_a_description_todays_rules_refuse_still_loads() -> None:
    model = RegisteredModel.create("churn", "fine", ["t"])
    loaded = store_and_load(model, _set("Created", name="no spaces allowed", description="\x07" + "d" * 6000))
    assert loaded.name == "no spaces allowed" and len(loaded.description) == 6001


def test_an_export_stored_with_a_format_and_tolerance_todays_rules_refuse_still_loads() -> None:
    export = ModelExport.request(uuid4(), "churn", 1, "onnx", 1e-4, {"artifact": ARTIFACT})
    loaded = store_and_load(export, _set("Requested", format="pmml", tolerance=5))
    assert (loaded.format, loaded.tolerance) == ("pmml", 5.0)


def test_a_study_stored_with_an_objective_todays_rules_refuse_still_loads() -> None:
    study = Study.create(id=uuid4(), name="s", framework="lightgbm", task="regression",
                         dataset={"uri": "builtin://diabetes"}, objective={"metric": "r2", "direction": "maximize"},
                         search_space={}, fixed_params={}, sampler={"type": "tpe", "seed": 1}, pruner={},
                         n_trials=3, max_parallel=1, timeout_s=None, priority="medium", tags=[])
    loaded = store_and_load(study, _set("Created", objective={"metric": "r2", "direction": "sideways"}, n_trials=0))
    assert loaded.objective["direction"] == "sideways" and loaded.n_trials == 0


def test_an_api_key_stored_with_a_name_and_rate_todays_rules_refuse_still_loads() -> None:
    key = ApiKey.create("ci", "a" * 64, "ty_abc", ["fraud"], 10)
    loaded = store_and_load(key, _set("Created", name="\x00bad", rate_limit_per_s=-1, deployments=["Not A Name"]))
    assert (loaded.name, loaded.rate_limit_per_s, loaded.deployments) == ("\x00bad", -1, ["Not A Name"])
