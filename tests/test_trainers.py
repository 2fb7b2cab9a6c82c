"""The Trainer contract, run against every trainer (LightGBM and PyTorch), plus params and artifacts."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from infra.datasets import DatasetError, load_dataset
from runners.artifacts import LocalArtifactStore
from runners.trainers import (
    MODEL_SUFFIX, ParamsError, TrainingCancelled, TrainSpec, check_budget, resolve_params, trainer_for,
    validate_params, validation_metrics,
)

FRAMEWORKS = ["lightgbm", "pytorch"]
# Small but sensible settings per framework, so the whole file stays fast.
FAST = {"lightgbm": {"n_estimators": 30}, "pytorch": {"epochs": 8}}


class RecordingReporter:
    """Records steps; asks to stop once `stop_after` steps were reported (never when None)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[tuple[int, int, dict[str, float]]] = []
        self.stop_after = stop_after

    def step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, total_steps, metrics))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


CASES = [  # (task, dataset, params by framework, step metric, check of the final metrics)
    ("binary_classification", "builtin://breast_cancer", {}, "valid_auc",
     lambda m: m["auc"] > 0.95 and m["accuracy"] > 0.9 and 0 < m["logloss"] < 0.5),
    ("multiclass_classification", "builtin://wine", {}, "valid_accuracy",
     lambda m: m["accuracy"] > 0.85 and m["logloss"] < 0.6 and "f1_macro" in m),
    ("regression", "builtin://diabetes", {"lightgbm": {"n_estimators": 50, "learning_rate": 0.05}}, "valid_rmse",
     lambda m: m["r2"] > 0.2 and m["rmse"] < 70 and m["mae"] < m["rmse"]),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("task, uri, params, step_metric, sensible", CASES, ids=[c[0] for c in CASES])
def test_fit_reports_every_step_learns_and_repeats_itself(framework, task, uri, params, step_metric, sensible):
    spec = TrainSpec(framework, task, uri, None, params.get(framework, {}), seed=7)
    first, second = RecordingReporter(), RecordingReporter()

    result = trainer_for(framework).fit(spec, first)
    again = trainer_for(framework).fit(spec, second)

    total = first.steps[0][1]
    assert total == {"lightgbm": spec.params.get("n_estimators", 100), "pytorch": 20}[framework]
    assert [s for s, _, _ in first.steps] == list(range(1, total + 1))
    assert all(t == total for _, t, _ in first.steps)
    assert all(set(m) == {"train_loss", "valid_loss", step_metric} for _, _, m in first.steps)
    assert first.steps[-1][2]["valid_loss"] < first.steps[0][2]["valid_loss"]
    assert sensible(result.final_metrics), result.final_metrics
    assert again.final_metrics == result.final_metrics
    assert first.steps == second.steps
    assert result.model_format in MODEL_SUFFIX


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cancel_stops_promptly(framework):
    reporter = RecordingReporter(stop_after=3)
    spec = TrainSpec(framework, "binary_classification", "builtin://breast_cancer", None, {})

    with pytest.raises(TrainingCancelled):
        trainer_for(framework).fit(spec, reporter)

    assert len(reporter.steps) == 3  # stopped before step 4 was reported, let alone step 5


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cancel_requested_before_start_trains_nothing(framework):
    reporter = RecordingReporter(stop_after=0)
    with pytest.raises(TrainingCancelled):
        trainer_for(framework).fit(TrainSpec(framework, "regression", "builtin://diabetes", None, {}), reporter)
    assert reporter.steps == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_trains_on_file_datasets(framework, suffix, tmp_path):
    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    path = tmp_path / f"cancer.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    spec = TrainSpec(framework, "binary_classification", path.as_uri(), "target", FAST[framework],
                     dataset_roots=(tmp_path,))

    result = trainer_for(framework).fit(spec, RecordingReporter())

    assert result.final_metrics["auc"] > 0.95


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fit_reads_files_only_inside_its_dataset_roots(framework, tmp_path):
    path = tmp_path / "cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(path, index=False)
    for roots in ((), (tmp_path / "elsewhere",)):
        spec = TrainSpec(framework, "binary_classification", path.as_uri(), "target", FAST[framework],
                         dataset_roots=roots)
        with pytest.raises(DatasetError) as error:
            trainer_for(framework).fit(spec, RecordingReporter())
        assert error.value.field == "dataset.uri"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fit_refuses_a_missing_target_column(framework, tmp_path):
    path = tmp_path / "cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(path, index=False)
    spec = TrainSpec(framework, "binary_classification", path.as_uri(), "label", FAST[framework],
                     dataset_roots=(tmp_path,))
    with pytest.raises(DatasetError) as error:
        trainer_for(framework).fit(spec, RecordingReporter())
    assert error.value.field == "dataset.target"


def test_saved_models_reproduce_the_final_metrics():
    import lightgbm as lgb
    import torch

    from runners.trainers.pytorch_trainer import load_model

    split = load_dataset("builtin://wine", None, "multiclass_classification", seed=3)
    for framework in FRAMEWORKS:
        spec = TrainSpec(framework, "multiclass_classification", "builtin://wine", None, FAST[framework], seed=3)
        result = trainer_for(framework).fit(spec, RecordingReporter())
        if result.model_format == "lightgbm-text":
            predicted = lgb.Booster(model_str=result.model_bytes.decode()).predict(split.X_valid)
        else:
            with torch.no_grad():
                logits = load_model(result.model_bytes)(torch.from_numpy(split.X_valid))
            predicted = torch.softmax(logits.double(), dim=1).numpy()
        reloaded = validation_metrics("multiclass_classification", split.y_valid, predicted)
        assert reloaded == pytest.approx(result.final_metrics, rel=1e-6), framework


@pytest.mark.parametrize("framework, params, field", [
    ("pytorch", {"epochs": "ten"}, "params.epochs"),
    ("pytorch", {"epochs": True}, "params.epochs"),
    ("pytorch", {"epochs": 10_001}, "params.epochs"),
    ("pytorch", {"epochs": 5.0}, "params.epochs"),
    ("pytorch", {"lr": 0}, "params.lr"),
    ("pytorch", {"lr": float("nan")}, "params.lr"),
    ("pytorch", {"hidden_sizes": [64, "wide"]}, "params.hidden_sizes"),
    ("pytorch", {"hidden_sizes": [8] * 9}, "params.hidden_sizes"),
    ("pytorch", {"hidden_sizes": [2049]}, "params.hidden_sizes"),
    ("pytorch", {"batch_size": 65_537}, "params.batch_size"),
    ("pytorch", {"num_threads": 17}, "params.num_threads"),
    ("pytorch", {"dropout": 0.1}, "params.dropout"),
    ("lightgbm", {"n_estimators": 0}, "params.n_estimators"),
    ("lightgbm", {"n_estimators": 20_001}, "params.n_estimators"),
    ("lightgbm", {"num_leaves": 4097}, "params.num_leaves"),
    ("lightgbm", {"num_threads": 64}, "params.num_threads"),
    ("lightgbm", {"learning_rate": "fast"}, "params.learning_rate"),
    ("lightgbm", {"subsample": 1.5}, "params.subsample"),
    ("lightgbm", {"subsample": 0.5, "bagging_fraction": 0.5}, "params.bagging_fraction"),
    ("lightgbm", {"extra_trees": "true"}, "params.extra_trees"),
    ("lightgbm", {"extra_trees": 1}, "params.extra_trees"),
    ("lightgbm", {"boosting": "gbdt objective=huber"}, "params.boosting"),
    ("lightgbm", {"boosting_type": "rf"}, "params.boosting_type"),
    ("lightgbm", {"tree_learner": "serial"}, "params.tree_learner"),
    ("lightgbm", {"forcedsplits_filename": "/etc/passwd"}, "params.forcedsplits_filename"),
    ("lightgbm", {"machines": "10.0.0.1:12400"}, "params.machines"),
    ("lightgbm", {"num_machines": 2}, "params.num_machines"),
    ("lightgbm", {"objective": "huber"}, "params.objective"),
    ("lightgbm", {"metric": "l1"}, "params.metric"),
    ("lightgbm", {"seed": 1}, "params.seed"),
    ("lightgbm", {"bagging_seed": 1}, "params.bagging_seed"),
    ("lightgbm", {"verbosity": 1}, "params.verbosity"),
    ("lightgbm", {"num_iterations": 10}, "params.num_iterations"),
    ("lightgbm", {"some_new_param": 1}, "params.some_new_param"),
    ("lightgbm", "n_estimators=5", "params"),
    ("sklearn", {}, "framework"),
])
def test_validate_params_names_the_field_at_fault(framework, params, field):
    with pytest.raises(ParamsError) as error:
        validate_params(framework, "regression", params)
    assert error.value.field == field
    assert error.value.reason


def test_unknown_params_get_a_did_you_mean_hint():
    with pytest.raises(ParamsError) as error:
        validate_params("lightgbm", "regression", {"n_estimator": 10})
    assert "did you mean 'n_estimators'?" in error.value.reason
    with pytest.raises(ParamsError) as error:
        validate_params("pytorch", "regression", {"epoch": 10})
    assert "did you mean 'epochs'?" in error.value.reason


def test_validate_params_accepts_defaults_sound_values_and_aliases():
    validate_params("pytorch", "binary_classification", {})
    validate_params("pytorch", "regression", {"epochs": 3, "hidden_sizes": [], "lr": 1, "weight_decay": 1e-4})
    validate_params("lightgbm", "multiclass_classification", {"n_estimators": 10, "extra_trees": True,
                                                              "boosting": "dart", "num_leaves": 4096})
    resolved = resolve_params("lightgbm", "regression", {"colsample_bytree": 0.5, "boosting_type": "gbdt"})
    assert resolved == {"n_estimators": 100, "num_threads": 1, "feature_fraction": 0.5, "boosting": "gbdt"}


def test_budget_names_the_parameter_that_is_too_big():
    check_budget("pytorch", {"hidden_sizes": [2048] * 4}, 30)
    with pytest.raises(ParamsError) as error:
        check_budget("pytorch", {"hidden_sizes": [2048] * 6}, 30)
    assert error.value.field == "params.hidden_sizes" and "20,000,000" in error.value.reason
    with pytest.raises(ParamsError) as error:  # a wide dataset makes the first layer big
        check_budget("pytorch", {"hidden_sizes": [2048]}, 10_000)
    assert error.value.field == "params.hidden_sizes"
    check_budget("lightgbm", {"n_estimators": 20_000}, 10_000)
    with pytest.raises(ParamsError) as error:
        check_budget("lightgbm", {"n_estimators": 1000, "num_leaves": 4096}, 30)
    assert error.value.field == "params.num_leaves"
    with pytest.raises(ParamsError) as error:  # multiclass: one tree per class per round
        check_budget("lightgbm", {"n_estimators": 20_000}, 30, n_outputs=10)
    assert error.value.field == "params.n_estimators"


@pytest.mark.parametrize("framework, params", [
    ("pytorch", {"hidden_sizes": [2048] * 6, "epochs": 1}),
    ("lightgbm", {"n_estimators": 1000, "num_leaves": 4096}),
])
def test_fit_checks_the_budget_before_training(framework, params):
    reporter = RecordingReporter()
    with pytest.raises(ParamsError):
        trainer_for(framework).fit(TrainSpec(framework, "binary_classification", "builtin://breast_cancer", None,
                                             params), reporter)
    assert reporter.steps == []


def test_lightgbm_keeps_trainyards_fixed_params():
    spec = TrainSpec("lightgbm", "binary_classification", "builtin://breast_cancer", None, {"n_estimators": 3}, seed=11)
    model = trainer_for("lightgbm").fit(spec, RecordingReporter()).model_bytes.decode()
    for line in ("[objective: binary]", "[seed: 11]", "[deterministic: 1]", "[num_threads: 1]"):
        assert line in model


def test_a_lightgbm_fit_with_num_threads_1_starts_no_other_thread() -> None:
    """Runners share the machine: `num_threads` 1 (the default) must hold for the whole fit. The final prediction
    once ran on OpenMP's default (all cores), whose idle workers then spin: ~11 ms of a second core per 45 ms fit,
    taken from the service and the other runners. Counted in a fresh process (OpenMP's pool outlives a fit)."""
    import subprocess
    import sys

    code = ("import os, threading; from runners.reporting import JobReporter; "
            "from runners.trainers import TrainSpec, trainer_for; "
            "spec = TrainSpec(framework='lightgbm', task='binary_classification', "
            "dataset_uri='builtin://breast_cancer', target=None, params={'n_estimators': 5}); "
            "trainer = trainer_for('lightgbm'); before = len(os.listdir('/proc/self/task')); "
            "trainer.fit(spec, JobReporter(threading.Event())); "
            "print(before, len(os.listdir('/proc/self/task')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent, check=True).stdout.splitlines()[-1].split()
    # (the last line: LightGBM's own output comes before it)
    assert out[0] == out[1], f"threads before and after the fit: {out}"


def test_validate_params_names_an_unknown_task():
    with pytest.raises(ParamsError) as error:
        validate_params("lightgbm", "ranking", {})
    assert error.value.field == "task"


def test_trainer_for_refuses_unknown_frameworks():
    with pytest.raises(ValueError):
        trainer_for("xgboost")


def test_auc_is_left_out_when_validation_has_one_class():
    metrics = validation_metrics("binary_classification", np.array([1, 1, 1]), np.array([0.9, 0.8, 0.4]))
    assert set(metrics) == {"accuracy", "logloss"}


def test_artifact_store_round_trip(tmp_path: Path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    data = b"tree\n" * 1000

    artifact = store.put("job-1", 2, data, "txt")

    assert artifact.uri.startswith("file:///")
    assert artifact.uri.endswith("/job-1/attempt-2/model.txt")
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.size_bytes == len(data)
    assert store.get(artifact.uri) == data
    assert [p.name for p in (tmp_path / "artifacts" / "job-1" / "attempt-2").iterdir()] == ["model.txt"]


def test_artifact_put_again_replaces_the_attempts_model(tmp_path: Path):
    store = LocalArtifactStore(tmp_path)
    store.put("job-1", 1, b"old", "pt")
    artifact = store.put("job-1", 1, b"new", "pt")
    assert store.get(artifact.uri) == b"new"


def test_artifact_store_refuses_paths_outside_its_root(tmp_path: Path):
    store = LocalArtifactStore(tmp_path / "root")
    (tmp_path / "secret.txt").write_bytes(b"x")
    with pytest.raises(ValueError):
        store.get((tmp_path / "secret.txt").as_uri())
    with pytest.raises(ValueError):
        store.put("../escape", 1, b"x", "txt")
    with pytest.raises(ValueError):
        store.put("job", 1, b"x", "txt/../../x")
    with pytest.raises(FileNotFoundError):
        store.get((tmp_path / "root" / "job" / "attempt-1" / "model.txt").as_uri())
