"""Stored events outlive the rules and the shapes of their day: an event that breaks today's input rules still
loads (the rules run in factories and command methods, never when an event is applied), and the first version
of every event that has since gained a field loads through its upcaster with the field's default."""
from __future__ import annotations

import dataclasses
from typing import Any
from uuid import uuid4

import pytest

from eventsourcing.application import Application

from domain.api_key import ApiKey
from domain.contract import envelope
from domain.deployment import Deployment
from domain.models import Lineage, ModelExport, RegisteredModel
from domain.study import Study
from domain.training_job import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, TrainingJob
from tests.support.stored_events import as_v1, store_and_load, store_and_read

ARTIFACT = {"uri": "file:///m.onnx", "sha256": "0" * 64}


def _set(event: str, **fields: Any):  # an edit: these fields of the `event` events take these stored values
    def edit(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith(f".{event}"):
            state.update(fields)
    return edit


def test_a_deployment_stored_with_a_policy_and_name_todays_rules_refuse_still_loads() -> None:
    d = Deployment.create("fraud", [{"name": "a", "model": "m", "version": 1, "weight": 100, "artifact": ARTIFACT}], project="default")
    policy = {"metric": "auc", "min_samples": 1, "ramp": [5], "step_every_s": 0}
    loaded = store_and_load(d, _set("Created", name="Fraud Scoring!", policy=policy, reason="x" * 900))
    assert (loaded.name, loaded.policy, loaded.revisions[0]["reason"]) == ("Fraud Scoring!", policy, "x" * 900)


def test_a_model_stored_with_a_description_todays_rules_refuse_still_loads() -> None:
    model = RegisteredModel.create("churn", "fine", ["t"], project="default")
    loaded = store_and_load(model, _set("Created", name="no spaces allowed", description="\x07" + "d" * 6000))
    assert loaded.name == "no spaces allowed" and len(loaded.description) == 6001


LINEAGE = {"job_id": str(uuid4()), "framework": "lightgbm", "task": "binary_classification",
           "dataset": {"uri": "builtin://breast_cancer"}, "dataset_sha256": "1" * 64, "params": {"n_estimators": 5},
           "final_metrics": {"auc": 0.9}, "artifact": {**ARTIFACT, "size_bytes": 10, "format": "lightgbm"},
           "feature_names": ["a", "b"], "class_labels": [0, 1], "study_id": None}


def test_a_versions_lineage_is_stored_as_its_json_and_loads_as_a_frozen_lineage() -> None:
    def registered() -> RegisteredModel:
        model = RegisteredModel.create("churn", "fine", ["t"], project="default")
        model.register_version(uuid4(), Lineage.from_json(LINEAGE))
        return model

    assert store_and_read(registered())[-1].lineage == LINEAGE  # the payload is the JSON it always was
    lineage = store_and_load(registered()).versions[1]["lineage"]
    assert lineage == Lineage.from_json(LINEAGE) and lineage.to_json() == LINEAGE
    with pytest.raises(dataclasses.FrozenInstanceError):
        lineage.framework = "pytorch"  # type: ignore[misc]


def test_an_export_stored_with_a_format_and_tolerance_todays_rules_refuse_still_loads() -> None:
    export = ModelExport.request(uuid4(), "churn", 1, "onnx", 1e-4, {"artifact": ARTIFACT}, project="default")
    loaded = store_and_load(export, _set("Requested", format="pmml", tolerance=5))
    assert (loaded.format, loaded.tolerance) == ("pmml", 5.0)


def test_a_study_stored_with_an_objective_todays_rules_refuse_still_loads() -> None:
    study = Study.create(id=uuid4(), project="default", name="s", framework="lightgbm", task="regression",
                         dataset={"uri": "builtin://diabetes"}, objective={"metric": "r2", "direction": "maximize"},
                         search_space={}, fixed_params={}, sampler={"type": "tpe", "seed": 1}, pruner={},
                         n_trials=3, max_parallel=1, timeout_s=None, priority="medium", tags=[])
    loaded = store_and_load(study, _set("Created", objective={"metric": "r2", "direction": "sideways"}, n_trials=0))
    assert loaded.objective["direction"] == "sideways" and loaded.n_trials == 0


def test_an_api_key_stored_with_a_name_and_rate_todays_rules_refuse_still_loads() -> None:
    key = ApiKey.create("ci", "a" * 64, "ty_abc", ["fraud"], 10, project="default")
    loaded = store_and_load(key, _set("Created", name="\x00bad", rate_limit_per_s=-1, deployments=["Not A Name"]))
    assert (loaded.name, loaded.rate_limit_per_s, loaded.deployments) == ("\x00bad", -1, ["Not A Name"])


# ---- upcasters: the first version of each event that has since gained fields ---------------------------------
def _job() -> TrainingJob:
    return TrainingJob(id=uuid4(), name="j", framework="lightgbm", task="regression", dataset={"uri": "builtin://x"},
                       params={}, priority="high", tags=[], timeout_s=60, max_attempts=5, study_id=uuid4(),
                       trial_number=2, report_metric="l2")


def test_a_v1_submitted_job_loads_with_the_default_timeout_attempts_and_no_study() -> None:
    v1 = as_v1("TrainingJob.Submitted", "timeout_s", "max_attempts", "study_id", "trial_number", "report_metric")
    job, (submitted,) = store_and_load(_job(), v1), store_and_read(_job(), v1)
    defaults = (DEFAULT_TIMEOUT_S, DEFAULT_MAX_ATTEMPTS, None, None, None)
    assert (job.timeout_s, job.max_attempts, job.study_id, job.trial_number, job.report_metric) == defaults
    assert (submitted.timeout_s, submitted.max_attempts, submitted.study_id, submitted.trial_number,
            submitted.report_metric) == defaults  # what the jobs read model reads
    assert job.spec()["report_metric"] is None


def test_a_v2_submitted_job_keeps_its_limits_and_loads_as_no_study_trial() -> None:
    def as_v2(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrainingJob.Submitted"):
            state["class_version"] = 2
            for name in ("study_id", "trial_number", "report_metric"):
                del state[name]
    job = store_and_load(_job(), as_v2)
    assert (job.timeout_s, job.max_attempts, job.study_id, job.trial_number, job.report_metric) == (
        60, 5, None, None, None)


def test_a_job_submitted_before_projects_belongs_to_the_default_project() -> None:
    def as_v3(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrainingJob.Submitted"):
            state["class_version"] = 3
            del state["project"]
    def alpha() -> TrainingJob:
        return TrainingJob.create(uuid4(), project="alpha", name="j", framework="lightgbm", task="regression",
                                  dataset={"uri": "builtin://x"}, params={}, priority="high", tags=[])
    assert store_and_load(alpha()).project == "alpha"
    job, (submitted,) = store_and_load(alpha(), as_v3), store_and_read(alpha(), as_v3)
    assert job.project == submitted.project == "default"  # what the jobs read model reads
    assert store_and_load(_job(), as_v1("TrainingJob.Submitted", "project", "study_id")).project == "default"


def test_a_job_submitted_before_retries_retries_nothing() -> None:
    def as_v4(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrainingJob.Submitted"):
            state["class_version"] = 4
            del state["retry_of"], state["from_checkpoint"]
    original = uuid4()

    def a_retry() -> TrainingJob:
        return TrainingJob.create(uuid4(), project="alpha", name="j", framework="lightgbm", task="regression",
                                  dataset={"uri": "builtin://x"}, params={}, priority="high", tags=[],
                                  retry_of=original, from_checkpoint=True)
    retry = store_and_load(a_retry())
    assert (retry.retry_of, retry.from_checkpoint) == (original, True)
    job, (submitted,) = store_and_load(a_retry(), as_v4), store_and_read(a_retry(), as_v4)
    assert (job.retry_of, job.from_checkpoint) == (submitted.retry_of, submitted.from_checkpoint) == (None, False)
    assert store_and_load(_job(), as_v1("TrainingJob.Submitted", "retry_of", "project")).retry_of is None


def test_a_job_submitted_before_code_jobs_runs_a_builtin_trainer_and_is_queued_as_training() -> None:
    from domain.registry import queues_work

    def as_v5(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrainingJob.Submitted"):
            state["class_version"] = 5
            del state["code"], state["resources"]

    def a_code_job() -> TrainingJob:
        return TrainingJob.create(uuid4(), project="alpha", name="j", framework="python", task="regression",
                                  dataset={}, params={"deep": {"free": [1, 2]}}, priority="high", tags=[],
                                  code={"code_id": "a" * 32, "sha256": "a" * 64, "entrypoint": "train.py", "args": []},
                                  resources={"cpus": 1, "memory_mb": 512, "gpus": 0})
    job, (submitted,) = store_and_load(a_code_job()), store_and_read(a_code_job())
    assert job.code["entrypoint"] == "train.py" and job.spec()["resources"]["memory_mb"] == 512
    assert queues_work(submitted) == ("code", "high")
    old, (old_submitted,) = store_and_load(a_code_job(), as_v5), store_and_read(a_code_job(), as_v5)
    assert (old.code, old.resources, old_submitted.code) == (None, None, None)
    assert queues_work(old_submitted) == ("training", "high") and "code" not in old.spec()


def test_a_requeued_event_from_before_code_jobs_goes_back_to_its_aggregates_own_queue() -> None:
    from domain.registry import queues_work

    def handed_back() -> TrainingJob:
        job = TrainingJob.create(uuid4(), project="alpha", name="j", framework="python", task="regression",
                                 dataset={}, params={}, priority="low", tags=[], code={"code_id": "a" * 32},
                                 resources={})
        job.claim("lease-1", "host:1")
        job.hand_back("lease-1", "stopping")
        return job

    assert queues_work(store_and_read(handed_back())[-1]) == ("code", "low")

    def as_v2(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith(".Requeued"):
            state["class_version"] = 2
            del state["work_kind"]
    assert store_and_read(handed_back(), as_v2)[-1].work_kind is None
    assert queues_work(store_and_read(handed_back(), as_v2)[-1]) == ("training", "low")


def test_a_study_created_before_projects_belongs_to_the_default_project() -> None:
    def study() -> Study:
        return Study.create(id=uuid4(), project="beta", name="s", framework="lightgbm", task="regression",
                            dataset={"uri": "builtin://diabetes"}, objective={"metric": "r2", "direction": "maximize"},
                            search_space={}, fixed_params={}, sampler={"type": "tpe", "seed": 1}, pruner={},
                            n_trials=3, max_parallel=1, timeout_s=None, priority="medium", tags=[])
    assert store_and_load(study()).project == "beta"
    v1 = as_v1("Study.Created", "project")
    loaded, (created,) = store_and_load(study(), v1), store_and_read(study(), v1)
    assert loaded.project == created.project == "default" and loaded.name == "s"


def test_models_exports_deployments_and_keys_made_before_projects_belong_to_the_default_project() -> None:
    def model() -> RegisteredModel:
        return RegisteredModel.create("churn", "fine", ["t"], project="alpha")

    def export() -> ModelExport:
        return ModelExport.request(uuid4(), "churn", 1, "onnx", 1e-4, {"artifact": ARTIFACT}, project="alpha")

    def deployment() -> Deployment:
        return Deployment.create("fraud", [{"name": "a", "model": "m", "version": 1, "weight": 100,
                                            "artifact": ARTIFACT}], policy={"metric": "accuracy"}, project="alpha")

    def key() -> ApiKey:
        return ApiKey.create("ci", "a" * 64, "ty_abc", ["fraud"], project="alpha")

    for make, event in ((model, "RegisteredModel.Created"), (export, "ModelExport.Requested"),
                        (key, "ApiKey.Created")):
        assert store_and_load(make()).project == "alpha"
        old = as_v1(event, "project")  # the v1 form: no project, no class version
        loaded, (first, *_) = store_and_load(make(), old), store_and_read(make(), old)
        assert loaded.project == first.project == "default", event  # what the read models read
    # a deployment's v2 (with a policy, without a project) and its v1 (neither) both land in the default project
    def as_v2(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("Deployment.Created"):
            state["class_version"] = 2
            del state["project"]
    assert store_and_load(deployment()).project == "alpha"
    loaded = store_and_load(deployment(), as_v2)
    assert (loaded.project, loaded.policy["metric"]) == ("default", "accuracy")
    assert store_and_read(deployment(), as_v2)[0].project == "default"
    loaded = store_and_load(deployment(), as_v1("Deployment.Created", "project", "policy"))
    assert (loaded.project, loaded.policy) == ("default", None)
    # an old key reaches the default project's deployments, and only those
    old_key = store_and_load(key(), as_v1("ApiKey.Created", "project"))
    assert old_key.allows("fraud") and not old_key.allows("fraud", "alpha")


def test_a_stored_event_that_has_every_field_but_no_class_version_keeps_its_values() -> None:
    job = store_and_load(_job(), as_v1("TrainingJob.Submitted"))  # what today's log holds, written before v2
    assert (job.timeout_s, job.max_attempts, job.trial_number, job.report_metric) == (60, 5, 2, "l2")


def test_a_v1_started_event_loads_without_a_lease() -> None:
    job = _job()
    job.claim("lease-1", "host:1")
    loaded = store_and_load(job, as_v1("TrainingJob.Started", "lease_id"))
    assert (loaded.status, loaded.runner_id, loaded.lease_id) == ("running", "host:1", None)


def test_a_v2_started_event_loads_as_an_attempt_that_resumed_nothing() -> None:
    def resumed() -> TrainingJob:
        job = _job()
        job.claim("lease-1", "host:1", resumed_from_step=40)
        return job

    def as_v2(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrainingJob.Started"):
            state["class_version"] = 2
            del state["resumed_from_step"]
    loaded = store_and_load(resumed())
    assert (loaded.resumed_from_step, loaded.current_step) == (40, 40)
    loaded, (_, started) = store_and_load(resumed(), as_v2), store_and_read(resumed(), as_v2)
    assert (loaded.lease_id is not None, loaded.resumed_from_step, loaded.current_step) == (True, None, 0)
    assert started.resumed_from_step is None  # what the jobs read model reads


def test_a_v1_completed_event_loads_without_its_step_count() -> None:
    def completed() -> TrainingJob:
        job = _job()
        job.claim("lease-1", "host:1")
        job.record_progress("lease-1", 3, 10)
        job.complete("lease-1", {"rmse": 1.0}, ARTIFACT, total_steps=7)
        return job
    loaded = store_and_load(completed(), as_v1("TrainingJob.Completed", "total_steps"))
    assert (loaded.status, loaded.total_steps, loaded.current_step) == ("completed", 10, 10)
    assert store_and_read(completed(), as_v1("TrainingJob.Completed", "total_steps"))[-1].total_steps is None


def test_a_completed_event_from_before_artifacts_loads_with_none_and_keeps_them_after() -> None:
    kept = [{"name": "report.txt", "uri": "file:///a/r", "sha256": "1" * 64, "size_bytes": 3}]

    def completed(artifacts: list | None) -> TrainingJob:
        job = _job()
        job.claim("lease-1", "host:1")
        job.complete("lease-1", {"rmse": 1.0}, ARTIFACT, total_steps=7, artifacts=artifacts)
        return job
    assert store_and_load(completed(kept)).artifacts == kept

    def as_v2(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrainingJob.Completed"):
            state.pop("artifacts")
            state["class_version"] = 2
    loaded = store_and_load(completed(None), as_v2)
    assert (loaded.status, loaded.artifacts) == ("completed", [])
    assert store_and_read(completed(None), as_v2)[-1].artifacts is None


def test_a_study_created_before_code_studies_runs_built_in_trials() -> None:
    study = Study.create(id=uuid4(), project="beta", name="s", framework="lightgbm", task="regression",
                         dataset={"uri": "builtin://diabetes"}, objective={"metric": "r2", "direction": "maximize"},
                         search_space={}, fixed_params={}, sampler={"type": "tpe", "seed": 1}, pruner={},
                         n_trials=3, max_parallel=1, timeout_s=None, priority="medium", tags=[])
    v2 = as_v1("Study.Created", "code", "resources")
    loaded = store_and_load(study, lambda topic, state: (v2(topic, state), state.update(class_version=2)
                                                        if topic.endswith(".Study.Created") else None))
    assert (loaded.code, loaded.resources, loaded.project) == (None, None, "beta")


def test_a_v1_requeued_event_loads_without_counting_hand_backs() -> None:
    def handed_back() -> TrainingJob:
        job = _job()
        job.claim("lease-1", "host:1")
        job.hand_back("lease-1", "stopping")
        return job

    assert store_and_load(handed_back()).hand_backs == 1
    loaded = store_and_load(handed_back(), as_v1("TrainingJob.Requeued", "hand_backs"))
    assert (loaded.status, loaded.hand_backs, loaded.lost_leases) == ("queued", 0, 0)
    assert store_and_read(handed_back(), as_v1("TrainingJob.Requeued", "hand_backs"))[-1].hand_backs == 0


def test_a_v1_export_started_event_loads_without_a_lease() -> None:
    export = ModelExport.request(uuid4(), "churn", 1, "onnx", 1e-4, {"artifact": ARTIFACT}, project="default")
    export.claim("lease-1", "host:1")
    loaded = store_and_load(export, as_v1("ModelExport.Started", "lease_id"))
    assert (loaded.status, loaded.lease_id) == ("running", None)


def _deployment() -> Deployment:
    variants = [{"name": "control", "model": "m", "version": 1, "weight": 100, "artifact": ARTIFACT},
                {"name": "challenger", "model": "m", "version": 2, "weight": 0, "artifact": ARTIFACT}]
    return Deployment.create("fraud", variants, reason="first", policy={"metric": "accuracy"}, project="default")


def test_a_v1_created_deployment_loads_without_a_policy() -> None:
    loaded = store_and_load(_deployment(), as_v1("Deployment.Created", "policy"))
    assert loaded.policy is None and loaded.halted == [] and loaded.revision == 1
    assert store_and_read(_deployment(), as_v1("Deployment.Created", "policy"))[0].policy is None


# ---- Revised: the one event every revision was stored as before each action had its own ----------------------
def _stored_as_revised(d: Deployment) -> Any:
    """The aggregate's revisions stored the way the code before past-tense events stored them: topic `Revised`,
    the action in `change`, `rolled_back_to` always, `variant` and `figures` from v2 on."""
    def edit(topic: str, state: dict[str, Any]) -> None:
        if topic.rsplit(".", 1)[-1] in REVISIONS:
            change = REVISIONS[topic.rsplit(".", 1)[-1]]
            state.update(change=change, class_version=2, rolled_back_to=state.get("rolled_back_to"),
                         variant=state.get("variant"), figures=state.get("figures"))
    return store_and_load(d, edit, lambda topic: "domain.deployment:Deployment.Revised"
                          if topic.rsplit(".", 1)[-1] in REVISIONS else topic)


REVISIONS = {"TrafficChanged": "traffic", "Promoted": "promote", "Updated": "update", "RolledBack": "rollback",
             "PolicyStepped": "policy_step", "PolicyPromoted": "policy_promote", "PolicyHalted": "policy_halt"}


def _every_revision(d: Deployment) -> Deployment:
    d.change_traffic({"control": 90, "challenger": 10}, "ramp")
    d.policy_action("step", "challenger", 25, d.revision, "stepped", {"n": 1})
    d.promote("challenger", "win")
    d.rollback("oops")
    d.policy_action("halt", "challenger", 0, d.revision, "worse", {"n": 2})
    d.update(d.snapshot()["variants"], None, "same again")
    d.change_traffic({"control": 50, "challenger": 50}, "try again")
    d.policy_action("promote", "challenger", 100, d.revision, "better", {"n": 3})
    return d


def test_revisions_stored_as_revised_load_to_the_same_deployment_as_the_past_tense_events() -> None:
    today, before = _every_revision(_deployment()), _every_revision(_deployment())
    new_form, old_form = store_and_load(today), _stored_as_revised(before)
    def without_times(revisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "at"} for r in revisions]
    assert without_times(old_form.revisions) == without_times(new_form.revisions)
    assert old_form.halted == new_form.halted == ["challenger"]
    assert [r["change"] for r in new_form.revisions] == [
        "created", "traffic", "policy_step", "promote", "rollback", "policy_halt", "update", "traffic",
        "policy_promote"]


def test_a_v1_revised_event_loads_without_variant_and_figures() -> None:
    d = _deployment()
    d.change_traffic({"control": 60, "challenger": 40}, "ramp")

    def v1(topic: str, state: dict[str, Any]) -> None:
        if topic.endswith("TrafficChanged"):
            state.update(change="traffic", rolled_back_to=None)
    loaded = store_and_load(d, v1, lambda t: t.replace("TrafficChanged", "Revised"))
    assert loaded.revisions[-1]["change"] == "traffic" and "figures" not in loaded.revisions[-1]
    event = Application().mapper.to_domain_event(Application().mapper.to_stored_event(
        Deployment.Revised(originator_id=d.id, originator_version=2, timestamp=Deployment.Revised.create_timestamp(),
                           revision=2, change="traffic", variants=[], shadow=None, reason=None, rolled_back_to=None)))
    assert (event.variant, event.figures) == (None, None)


def test_every_revision_publishes_under_revised_with_the_fields_of_before() -> None:
    d = _every_revision(_deployment())
    events = d.collect_events()[1:]
    for e in events:
        subject, body = envelope(e, "deployment")
        assert subject == "trainyard.v1.deployment.revised" and body["type"] == "deployment.revised"
        assert list(body["payload"]) == ["revision", "change", "variants", "shadow", "reason", "rolled_back_to",
                                         "variant", "figures"]
        assert body["payload"]["change"] == REVISIONS[type(e).__name__]
    rollback = next(e for e in events if isinstance(e, Deployment.RolledBack))
    assert envelope(rollback)[1]["payload"]["rolled_back_to"] == 3  # the revision before the promote
    legacy = Deployment.Revised(originator_id=d.id, originator_version=9, timestamp=events[0].timestamp, revision=9,
                                change="policy_halt", variants=[], shadow=None, reason="r", rolled_back_to=None,
                                variant="challenger", figures={"n": 1})
    assert envelope(legacy)[1]["payload"] == {"revision": 9, "change": "policy_halt", "variants": [], "shadow": None,
                                              "reason": "r", "rolled_back_to": None, "variant": "challenger",
                                              "figures": {"n": 1}}
