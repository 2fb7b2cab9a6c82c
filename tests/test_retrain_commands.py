"""The retrain's commands in memory (eventsourcing's POPO store): what a retrain submits, each step the driver takes
on the aggregate, and a schedule that carries a retrain."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import pytest

from commands.context import CommandContext
from commands.deployments import DeploymentCommands
from commands.models import ModelCommands
from commands.retrains import RetrainCommands
from commands.schedules import CreateSchedule, ScheduleCommands
from commands.training import TrainingApplication
from domain.models import model_id
from domain.retrain import RetrainSpecError, RetrainStatus, retrain_id
from domain.training_job import TrainingJob

CTX = CommandContext(actor="test")
FEATURES = ["a", "b"]


class Fixed:
    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=timezone.utc)


class World:
    def __init__(self) -> None:
        self.app = TrainingApplication()
        self.models, self.deployments = ModelCommands(self.app), DeploymentCommands(self.app)
        self.retrains = RetrainCommands(self.app, self.deployments)
        job = self.finished(self.job(), {"auc": 0.9})
        self.models.create("bc", project="default")
        self.models.register_version("bc", job.id, project="default")
        self.export(1)
        self.deployments.create("bc", [{"name": "control", "model": "bc", "version": 1, "weight": 100}],
                                project="default")

    def job(self) -> TrainingJob:
        job = TrainingJob.create(uuid4(), project="default", name="j", framework="lightgbm",
                                 task="binary_classification", dataset={"uri": "builtin://breast_cancer"},
                                 params={"n_estimators": 3, "num_leaves": 4}, priority="medium", tags=[])
        self.app.save(job)
        return job

    def finished(self, job: TrainingJob, metrics: dict[str, float]) -> TrainingJob:
        job = self.app.get_job(job.id)
        job.claim("l1", "h:1")
        job.complete("l1", metrics, {"uri": f"file:///{job.id}.txt", "sha256": "a" * 64, "format": "lightgbm-text",
                                     "feature_names": FEATURES, "class_labels": ["n", "y"]})
        self.app.save(job)
        return job

    def export(self, version: int, export_id: Any = None) -> None:
        if export_id is None:
            export, _ = self.models.request_export("bc", version, project="default")
            export_id = export.id
        self.app.claim(export_id, "x1", "h:1", CTX)
        self.app.complete(export_id, "x1", {"max_abs_diff": 0.0}, {"uri": f"file:///{export_id}.onnx",
                                                                   "sha256": "b" * 64, "format": "onnx"}, CTX)

    def drive(self, retrain: Any) -> int:
        n = 0
        while self.retrains.advance(retrain.id, CTX):
            n += 1
        return n

    def retrain(self, **request: Any) -> Any:
        plan = self.retrains.plan("bc", project="default", params={"n_estimators": 50})
        return self.retrains.request(plan, ctx=CTX, **request)[0]


@pytest.fixture
def world() -> World:
    return World()


def test_a_retrain_submits_the_lineage_with_new_params_a_test_split_and_the_deployed_onnx(world: World) -> None:
    plan = world.retrains.plan("bc", project="default", params={"n_estimators": 50},
                               dataset={"uri": "builtin://breast_cancer"})
    assert (plan.variant, plan.model, plan.version) == ("control", "bc", 1)
    assert plan.job.params == {"n_estimators": 50, "num_leaves": 4}
    assert plan.job.validation == {"strategy": "holdout", "test_fraction": 0.2}
    assert plan.champion["sha256"] == "b" * 64 and plan.champion["feature_names"] == FEATURES
    retrain, position = world.retrains.request(plan, gate={"metric": "auc", "max_regression": 0}, ctx=CTX)
    assert position is not None and retrain.id == retrain_id(retrain.job_id)
    assert world.app.get_job(retrain.job_id).spec()["champion"]["version"] == 1
    with pytest.raises(RetrainSpecError) as e:
        world.retrains.plan("bc", project="default", variant="nope")
    assert e.value.field == "variant"


def test_a_pass_registers_exports_and_adds_the_challenger_each_step_once(world: World) -> None:
    retrain = world.retrain(gate={"metric": "auc", "max_regression": 0}, register_as="bc",
                            challenger={"weight": 10})
    assert world.drive(retrain) == 0  # the job is still queued
    world.finished(world.app.get_job(retrain.job_id), {"test_auc": 0.95, "champion_test_auc": 0.9})
    assert world.drive(retrain) == 3  # judged, registered, export requested
    loaded = world.app.repository.get(retrain.id)
    assert (loaded.status, loaded.registered_version) == (RetrainStatus.EXPORTING, 2)
    assert world.app.repository.get(model_id("bc")).versions[2]["job_id"] == retrain.job_id
    world.export(2, loaded.export_id)
    assert world.drive(retrain) == 1 and world.drive(retrain) == 0
    d = world.deployments.get("bc", project="default")
    assert d.weights == {"control": 90, "retrain-v2": 10}
    assert world.app.repository.get(retrain.id).status == RetrainStatus.CHALLENGER_ADDED


def test_a_refusal_a_failed_job_and_a_short_weight_each_end_the_retrain(world: World) -> None:
    refused = world.retrain(gate={"metric": "auc", "max_regression": 0.01}, register_as="bc")
    world.finished(world.app.get_job(refused.job_id), {"test_auc": 0.80, "champion_test_auc": 0.9})
    world.drive(refused)
    refused = world.app.repository.get(refused.id)
    assert refused.status == RetrainStatus.GATE_FAILED and "0.8000" in refused.reason and "0.9000" in refused.reason
    assert world.app.repository.get(model_id("bc")).latest_version == 1

    lost = world.retrain(register_as="bc")
    job = world.app.get_job(lost.job_id)
    job.claim("l1", "h:1")
    job.fail("l1", "DatasetError: gone")
    world.app.save(job)
    world.drive(lost)
    assert world.app.repository.get(lost.id).status == RetrainStatus.JOB_FAILED

    greedy = world.retrain(register_as="bc", challenger={"weight": 100, "variant": "all-in"})
    world.finished(world.app.get_job(greedy.job_id), {"test_auc": 0.95})
    world.drive(greedy)
    world.export(2, world.app.repository.get(greedy.id).export_id)
    world.drive(greedy)  # 100% from control would leave it at 0: allowed (the policy ramps it from there)
    assert world.deployments.get("bc", project="default").weights == {"control": 0, "all-in": 100}
    short = world.retrain(register_as="bc", challenger={"weight": 10})
    world.finished(world.app.get_job(short.job_id), {"test_auc": 0.95})
    world.drive(short)
    world.export(3, world.app.repository.get(short.id).export_id)
    world.drive(short)
    failed = world.app.repository.get(short.id)
    assert failed.status == RetrainStatus.CHALLENGER_FAILED and "0% of the traffic, less than 10%" in failed.error


def test_a_deployment_deactivated_meanwhile_gets_no_challenger_and_the_retrain_says_why(world: World) -> None:
    retrain = world.retrain(register_as="bc", challenger={"weight": 10})
    world.finished(world.app.get_job(retrain.job_id), {"test_auc": 0.95})
    world.drive(retrain)
    world.deployments.deactivate("bc", "maintenance", project="default")
    world.export(2, world.app.repository.get(retrain.id).export_id)
    assert world.drive(retrain) == 1 and world.drive(retrain) == 0
    failed = world.app.repository.get(retrain.id)
    assert failed.status == RetrainStatus.CHALLENGER_FAILED and "deactivated" in failed.error


def test_a_schedule_fires_a_retrain_of_what_is_deployed_then(world: World) -> None:
    schedules = ScheduleCommands(world.app, Fixed(), retrains=world.retrains)
    saved = schedules.create(CreateSchedule(project="default", name="nightly", cron="0 3 * * *", timezone="UTC",
                                            kind="retrain", template={"deployment": "bc", "params": {"num_leaves": 8},
                                                                      "gate": {"metric": "auc", "min_value": 0.5}}))
    fired = schedules.trigger(saved.aggregate.id, project="default")
    assert fired.outcome == "fired"
    retrain = world.app.repository.get(retrain_id(fired.run_id))
    assert (retrain.deployment, retrain.version, retrain.gate) == ("bc", 1, {"metric": "auc", "min_value": 0.5})
    assert world.app.get_job(fired.run_id).params == {"n_estimators": 3, "num_leaves": 8}
    gone = schedules.create(CreateSchedule(project="default", name="gone", cron="0 3 * * *", timezone="UTC",
                                           kind="retrain", template={"deployment": "nope"}))
    skipped = schedules.trigger(gone.aggregate.id, project="default")
    assert skipped.outcome == "skipped" and "nope" in skipped.reason
