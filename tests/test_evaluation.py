"""The evaluation report (runners/trainers/evaluation.py) and early stopping / k-fold in the built-in trainers: every
figure is scikit-learn's own on the same predictions, and the kept model is the best one."""
from __future__ import annotations

import json
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sklearn import metrics as m
from sklearn.inspection import permutation_importance as sk_permutation
from sklearn.linear_model import LogisticRegression

from infra.datasets import load_dataset
from runners.trainers import TrainSpec
from runners.trainers.evaluation import evaluation_report, permutation_importance
from runners.trainers.lightgbm_trainer import LightGBMTrainer
from runners.trainers.pytorch_trainer import PyTorchMLPTrainer


class Steps:
    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []

    def step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, metrics))

    def should_stop(self) -> bool:
        return False


def fit(framework: str, task: str, dataset: str, params: dict[str, Any], validation: dict | None = None):
    steps = Steps()
    trainer = LightGBMTrainer() if framework == "lightgbm" else PyTorchMLPTrainer()
    result = trainer.fit(TrainSpec(framework, task, f"builtin://{dataset}", None, params, seed=5,
                                   validation=validation), steps)
    return result, steps.steps


def test_classification_figures_are_scikit_learns_on_the_same_predictions() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 500)
    logits = rng.normal(size=(500, 3)) + np.eye(3)[y] * 1.5
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rows = np.arange(1000, 1500)
    section = evaluation_report("multiclass_classification", {"validation": (y, p, rows)},
                                ["a", "b", "c"])["splits"]["validation"]
    assert section["confusion_matrix"]["labels"] == ["a", "b", "c"]
    assert section["confusion_matrix"]["matrix"] == m.confusion_matrix(y, p.argmax(axis=1)).tolist()
    precision, recall, f1, support = m.precision_recall_fscore_support(y, p.argmax(axis=1))
    assert [c["f1"] for c in section["per_class"]] == pytest.approx(f1.tolist())
    assert [c["support"] for c in section["per_class"]] == support.tolist()
    for c, (roc, pr) in enumerate(zip(section["roc"], section["pr"])):
        assert roc["auc"] == pytest.approx(m.roc_auc_score(y == c, p[:, c]))
        assert pr["average_precision"] == pytest.approx(m.average_precision_score(y == c, p[:, c]))
        assert len(roc["fpr"]) <= 101 and roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert section["roc_auc_ovr_macro"] == pytest.approx(m.roc_auc_score(y, p, multi_class="ovr"))
    assert section["log_loss"] == pytest.approx(m.log_loss(y, p))
    worst = section["worst_rows"][0]
    assert worst["row"] == 1000 + int(np.argmin(p[np.arange(500), y]))  # rows are named by their dataset number
    assert sum(section["calibration"]["count"]) == 500


def test_regression_figures_include_mape_where_defined_and_smape_everywhere() -> None:
    rng = np.random.default_rng(2)
    y = rng.uniform(1, 100, 400)
    p = y + rng.normal(0, 5, 400)
    section = evaluation_report("regression", {"test": (y, p, np.arange(400))}, None)["splits"]["test"]
    assert section["metrics"]["mape"] == pytest.approx(m.mean_absolute_percentage_error(y, p))
    assert section["metrics"]["rmse"] == pytest.approx(m.root_mean_squared_error(y, p))
    assert section["residual_quantiles"]["0.5"] == pytest.approx(np.median(p - y))
    assert abs(section["worst_rows"][0]["error"]) == pytest.approx(np.abs(p - y).max())
    zeros = np.array([0.0, 0.0, 2.0, 4.0])
    section = evaluation_report("regression", {"test": (zeros, np.array([0.0, 1.0, 2.0, 2.0]), np.arange(4))},
                                None)["splits"]["test"]
    assert section["metrics"]["mape"] == pytest.approx(0.25) and section["mape_rows"] == 2  # 0/2 and 2/4
    assert section["metrics"]["smape"] == pytest.approx((0 + 2 + 0 + 2 * 2 / 6) / 4)  # 0 vs 0 counts 0


def test_permutation_importance_is_scikit_learns() -> None:
    split = load_dataset("builtin://breast_cancer", None, "binary_classification", seed=0)
    model = LogisticRegression(max_iter=5000).fit(split.X_train, split.y_train)
    ours = permutation_importance(lambda X: model.predict_proba(X)[:, 1], split.X_valid, split.y_valid,
                                  "binary_classification", seed=4, n_repeats=3)
    theirs = sk_permutation(model, split.X_valid, split.y_valid, n_repeats=3, random_state=4)
    assert [e["importance"] for e in ours] == pytest.approx(theirs.importances_mean.tolist(), abs=1e-9)


def test_lightgbm_early_stopping_keeps_the_best_round_and_the_report_says_which() -> None:
    result, steps = fit("lightgbm", "binary_classification", "breast_cancer",
                        {"n_estimators": 400, "learning_rate": 0.3, "early_stopping_rounds": 10})
    losses = [s["valid_loss"] for _, s in steps]
    assert len(steps) < 400 and result.best_step == 1 + int(np.argmin(losses))
    assert len(steps) == result.best_step + 10  # stopped 10 rounds after the best
    booster = lgb.Booster(model_str=result.model_bytes.decode())
    assert booster.current_iteration() == result.best_step  # the kept model is the best round's
    assert result.final_metrics["logloss"] == pytest.approx(min(losses), rel=1e-6)
    assert result.evaluation["best_step"] == result.best_step
    assert result.evaluation["feature_importance_kind"] == "gain"
    gains = [f["importance"] for f in result.evaluation["feature_importance"]]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0


def test_mlp_patience_restores_the_best_epochs_weights() -> None:
    result, steps = fit("pytorch", "regression", "diabetes",
                        {"epochs": 300, "lr": 0.05, "hidden_sizes": [64, 64], "patience": 5})
    losses = [s["valid_loss"] for _, s in steps]
    assert len(steps) < 300 and result.best_step == 1 + int(np.argmin(losses))
    assert result.final_metrics["rmse"] ** 2 == pytest.approx(min(losses), rel=1e-5)  # not the last epoch's
    assert result.evaluation["feature_importance_kind"] == "permutation"


@pytest.mark.parametrize("framework", ["lightgbm", "pytorch"])
def test_kfold_reports_each_fold_and_their_mean_and_trains_the_final_model_on_every_row(framework: str) -> None:
    params = {"n_estimators": 30} if framework == "lightgbm" else {"epochs": 8}
    result, steps = fit(framework, "multiclass_classification", "wine", params, {"strategy": "kfold", "k": 4})
    folds = result.evaluation["folds"]
    assert len(folds["per_fold"]) == 4
    accuracies = [f["accuracy"] for f in folds["per_fold"]]
    assert result.final_metrics["accuracy"] == pytest.approx(np.mean(accuracies))
    assert result.final_metrics["accuracy_sd"] == pytest.approx(np.std(accuracies, ddof=1))
    assert result.evaluation["splits"]["validation"]["rows"] == 178  # out-of-fold: every row once
    assert [s for s, _ in steps] == list(range(1, len(steps) + 1))  # one series: the folds' mean per step
    json.dumps(result.evaluation, allow_nan=False)


def test_a_test_split_is_reported_apart_and_summarised_in_the_final_metrics() -> None:
    result, _ = fit("lightgbm", "regression", "diabetes", {"n_estimators": 40},
                    {"strategy": "time_series", "test_fraction": 0.2, "gap": 5})
    splits = result.evaluation["splits"]
    assert splits["test"]["rows"] == int(np.ceil(442 * 0.2)) and splits["validation"]["rows"] == int(np.ceil(442 * 0.2))
    assert result.final_metrics["test_rmse"] == splits["test"]["metrics"]["rmse"]
    assert result.final_metrics["rmse"] == splits["validation"]["metrics"]["rmse"]
    assert min(r["row"] for r in splits["test"]["worst_rows"]) >= 442 - splits["test"]["rows"]
