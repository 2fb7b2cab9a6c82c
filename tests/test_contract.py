"""The public event contract: every domain event validates against its documented schema, and the docs are current."""
from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from domain.contract import envelope, event_id
from domain.training_job import TrainingJob
from api.asyncapi import STUDY_EVENTS, TRAINING_JOB_EVENTS, Envelope, document
from domain.study import Study
from domain.contract import snake


def lifecycle_events() -> list:
    events = []
    for script in (
        lambda j: (j.claim("l1", "h:1"), j.record_progress("l1", 2, 10), j.expire_lease("l1", "gone"),
                   j.claim("l2", "h:2"), j.complete("l2", {"auc": 0.9}, {"uri": "file:///m"})),
        lambda j: (j.claim("l1", "h:1"), j.request_cancel(), j.confirm_cancelled("l1")),
        lambda j: (j.claim("l1", "h:1"), j.hand_back("l1", "stop"), j.claim("l2", "h:1"), j.fail("l2", "boom")),
        lambda j: [(j.claim(f"l{n}", "h:1"), j.expire_lease(f"l{n}", "gone")) for n in range(3)],
    ):
        job = TrainingJob(id=uuid4(), name="c", framework="pytorch", task="regression",
                          dataset={"uri": "builtin://diabetes"}, params={"epochs": 3}, priority="high", tags=["x"])
        script(job)
        events.extend(job.collect_events())
    return events


def test_every_domain_event_validates_against_its_documented_schema() -> None:
    seen = set()
    for e in lifecycle_events():
        subject, body = envelope(e)
        name = subject.rsplit(".", 1)[1]
        Envelope[TRAINING_JOB_EVENTS[name]].model_validate(body)
        assert body["event_id"] == str(event_id(e.originator_id, e.originator_version))
        seen.add(name)
    declared = {snake(n) for n, v in vars(TrainingJob).items()
                if isinstance(v, type) and v.__qualname__ == f"TrainingJob.{n}" and n not in ("Created", "Event")}
    assert seen == set(TRAINING_JOB_EVENTS) == declared  # a new event must be documented


def study_events() -> list:
    events = []
    for script in (
        lambda s: (s.ask_trial(0, {"num_leaves": 8}, uuid4()), s.trial_started(0), s.prune_trial(0, 3, 0.5),
                   s.finish_trial(0, "pruned"), s.ask_trial(1, {"num_leaves": 9}, uuid4()),
                   s.finish_trial(1, "completed", 0.9), s.ask_trial(2, {"num_leaves": 4}, uuid4()),
                   s.finish_trial(2, "failed", error="boom")),
        lambda s: (s.ask_trial(0, {"num_leaves": 8}, uuid4()), s.request_cancel(), s.confirm_cancelled()),
        lambda s: (s.fail("every trial failed"),),
    ):
        study = Study(id=uuid4(), name="s", framework="lightgbm", task="binary_classification",
                      dataset={"uri": "builtin://breast_cancer"}, objective={"metric": "auc", "direction": "maximize"},
                      search_space={"num_leaves": {"type": "int", "low": 4, "high": 9}}, fixed_params={},
                      sampler={"type": "tpe", "seed": 1}, pruner={"type": "none"}, n_trials=3, max_parallel=2,
                      timeout_s=None, priority="medium", tags=[])
        script(study)
        events.extend(study.collect_events())
    return events


def test_every_study_event_validates_against_its_documented_schema() -> None:
    seen = set()
    for e in study_events():
        subject, body = envelope(e)
        assert subject.startswith("trainyard.v1.study.") and body["aggregate"] == "study"
        name = subject.rsplit(".", 1)[1]
        Envelope[STUDY_EVENTS[name]].model_validate(body)
        seen.add(name)
    declared = {snake(n) for n, v in vars(Study).items()
                if isinstance(v, type) and v.__qualname__ == f"Study.{n}" and n != "Event"}
    assert seen == set(STUDY_EVENTS) == declared  # a new event must be documented


def test_the_committed_asyncapi_document_is_current() -> None:
    committed = (Path(__file__).parent.parent / "docs" / "asyncapi.json").read_text()
    assert committed == document(), "run: python -m api.asyncapi > docs/asyncapi.json"


def test_a_metric_batch_with_ragged_columns_is_malformed() -> None:
    import pytest
    from pydantic import ValidationError

    from domain.contract import MetricBatch

    good = {"batch_id": "b", "job_id": str(uuid4()), "attempt": 1, "runner_id": "h:1",
            "series": {"loss": {"steps": [1, 2], "values": [0.5, 0.4], "ts_ms": [1, 2]}}}
    assert MetricBatch.model_validate(good).size == 2
    for bad_chunk in ({"steps": [1, 2], "values": [0.5], "ts_ms": [1, 2]},
                      {"steps": [-1], "values": [0.5], "ts_ms": [1]},
                      {"steps": [2**64], "values": [0.5], "ts_ms": [1]},  # past ClickHouse's UInt64
                      {"steps": [1], "values": [0.5], "ts_ms": [2**63]}):
        with pytest.raises(ValidationError):
            MetricBatch.model_validate({**good, "series": {"loss": bad_chunk}})
    with pytest.raises(ValidationError):
        MetricBatch.model_validate({**good, "series": {"": good["series"]["loss"]}})
    with pytest.raises(ValidationError):
        MetricBatch.model_validate({**good, "attempt": 2**32})
    with pytest.raises(ValidationError):
        MetricBatch.model_validate({**good, "series": {"a\x00b": good["series"]["loss"]}})


def test_non_finite_metric_values_survive_the_wire() -> None:
    from domain.contract import MetricBatch

    batch = MetricBatch.model_validate({"batch_id": "b", "job_id": str(uuid4()), "attempt": 1, "runner_id": "h:1",
                                        "series": {"loss": {"steps": [1, 2, 3], "values": [float("nan"), float("inf"),
                                                   -float("inf")], "ts_ms": [1, 2, 3]}}})
    again = MetricBatch.model_validate_json(batch.model_dump_json())
    values = again.series["loss"].values
    assert values[0] != values[0] and values[1:] == [float("inf"), -float("inf")]


def test_the_envelope_carries_who_and_why() -> None:
    job = TrainingJob(id=uuid4(), name="c", framework="pytorch", task="regression",
                      dataset={"uri": "builtin://diabetes"}, params={}, priority="high", tags=[])
    (e,) = job.collect_events()
    object.__setattr__(e, "metadata", {"actor": "alice", "correlation_id": "req-1", "causation_id": None,
                                       "trace_id": "ab" * 16})
    _, body = envelope(e)
    assert (body["actor"], body["correlation_id"], body["trace_id"]) == ("alice", "req-1", "ab" * 16)
    assert "metadata" not in body["payload"]


def registry_events() -> list:
    from domain.api_key import ApiKey, hash_key, key_prefix, new_key
    from domain.deployment import Deployment
    from domain.models import Lineage, ModelExport, RegisteredModel, model_id

    model = RegisteredModel(id=model_id("m"), name="m", description="d", tags=["t"])
    model.register_version(uuid4(), Lineage(job_id="j", framework="lightgbm", task="regression", dataset={},
                                            dataset_sha256=None, params={}, final_metrics=None, artifact={},
                                            feature_names=None, class_labels=None, study_id=None))
    model.set_alias("production", 1)
    model.attach_onnx(1, uuid4(), {"uri": "file:///m.onnx", "sha256": "0" * 64}, {"max_abs_diff": 0.0})
    model.remove_alias("production")
    export = ModelExport(id=uuid4(), model_name="m", model_version=1, format="onnx", tolerance=1e-4,
                         source={"framework": "lightgbm"})
    export.claim("l1", "h:1")
    export.complete("l1", {"max_abs_diff": 0.0}, {"uri": "file:///m.onnx"})
    variant = {"model": "m", "version": 1, "artifact": {"uri": "file:///m.onnx"}}
    deployment = Deployment.create("d", [{"name": "a", "weight": 100, **variant}, {"name": "b", "weight": 0, **variant}], project="default")
    deployment.change_traffic({"a": 50, "b": 50}, "ramp")
    deployment.set_policy({"metric": "accuracy", "ramp": [50, 100]})
    deployment.policy_action("step", "b", 100, deployment.revision, "ramped", {"p_value": 0.01})
    deployment.rollback()
    deployment.deactivate("done")
    key = new_key()
    api_key = ApiKey.create(name="k", key_hash=hash_key(key), prefix=key_prefix(key), deployments="*", project="default")
    api_key.revoke("leaked")
    return [e for agg in (model, export, deployment, api_key) for e in agg.collect_events()]


def test_every_registry_and_deployment_event_validates_against_its_documented_schema() -> None:
    from api.asyncapi import EVENTS
    from domain.registry import aggregate_of

    seen: dict[str, set[str]] = {}
    for e in registry_events():
        subject, body = envelope(e, aggregate_of(e).name)  # as the relay names them
        _, _, aggregate, name = subject.split(".")
        assert body["aggregate"] == aggregate and aggregate in ("model", "model_export", "deployment", "api_key")
        Envelope[EVENTS[aggregate][name]].model_validate(body)
        assert "key" not in body["payload"]  # an API key's events carry its hash only
        seen.setdefault(aggregate, set()).add(name)
    assert seen["model"] == set(EVENTS["model"]) and seen["deployment"] == set(EVENTS["deployment"])
    assert seen["api_key"] == set(EVENTS["api_key"])
