"""A retrain's champion is scored on the candidate's own test rows (runners/champion.py), on real LightGBM and ONNX."""
from __future__ import annotations

from pathlib import Path

import pytest

from domain.validation import Validation
from infra.datasets import load_dataset
from runners.artifacts import LocalArtifactStore
from runners.champion import with_champion
from runners.trainers import TrainSpec, validation_metrics
from runners.trainers.lightgbm_trainer import LightGBMTrainer

VALIDATION = {"strategy": "holdout", "test_fraction": 0.2}


class Quiet:
    def step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _spec(n_estimators: int) -> TrainSpec:
    return TrainSpec(framework="lightgbm", task="binary_classification", dataset_uri="builtin://breast_cancer",
                     target=None, params={"n_estimators": n_estimators, "num_leaves": 4}, validation=VALIDATION)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalArtifactStore, dict]:
    """A weak deployed model (2 rounds) exported to ONNX and kept in the artifact store, as a deployment holds it."""
    from runners.onnx_converter import export_onnx

    store = LocalArtifactStore(tmp_path_factory.mktemp("artifacts"))
    weak = LightGBMTrainer().fit(_spec(2), Quiet())
    split = load_dataset("builtin://breast_cancer", None, "binary_classification")
    onnx = export_onnx("lightgbm", "binary_classification", weak.model_bytes, split).model
    art = store.put("export-1", 1, onnx.onnx_bytes, "onnx")
    return store, {"uri": art.uri, "sha256": art.sha256, "feature_names": list(weak.feature_names),
                   "class_labels": list(weak.class_labels or []), "model": "bc", "version": 1}


def test_the_champion_is_scored_on_exactly_the_candidates_test_rows(deployed: tuple) -> None:
    store, champion = deployed
    spec = _spec(60)
    result = with_champion(spec, champion, LightGBMTrainer().fit(spec, Quiet()), store, ())
    split = load_dataset(spec.dataset_uri, None, spec.task, validation=Validation.parse(VALIDATION))
    from runners.onnx_converter import onnx_predict

    expected = validation_metrics(spec.task, split.y_test, onnx_predict(store.get(champion["uri"]), spec.task,
                                                                        split.X_test))
    assert result.final_metrics["champion_test_auc"] == pytest.approx(expected["auc"])
    assert result.final_metrics["test_auc"] > result.final_metrics["champion_test_auc"]  # 60 rounds beat 2
    assert result.evaluation["champion"]["metrics"]["auc"] == pytest.approx(expected["auc"])
    assert result.evaluation["champion"]["version"] == 1


def test_a_champion_with_other_features_adds_no_figures_and_says_why(deployed: tuple) -> None:
    store, champion = deployed
    other = {**champion, "feature_names": champion["feature_names"][:-1] + ["tenure"]}
    spec = _spec(5)
    result = with_champion(spec, other, LightGBMTrainer().fit(spec, Quiet()), store, ())
    assert not any(k.startswith("champion_") for k in result.final_metrics)
    error = result.evaluation["champion"]["error"]
    assert "features (30) differ from the new data's (30)" in error and "tenure" in error


def test_a_champion_whose_file_changed_is_not_compared(deployed: tuple, tmp_path: Path) -> None:
    store, champion = deployed
    spec = _spec(5)
    result = with_champion(spec, {**champion, "sha256": "0" * 64}, LightGBMTrainer().fit(spec, Quiet()), store, ())
    assert "sha256" in result.evaluation["champion"]["error"] and "champion_test_auc" not in result.final_metrics
