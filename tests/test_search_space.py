"""Study specs: every rule refuses with the exact field, valid studies pass, and the metric tables match the
trainers' own metrics."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from domain.search_space import (
    StudySpecError, check_study, default_direction, pruner_settings, sampler_settings,
    step_metric_for,
)
from domain.vocabulary import TASK_METRICS
from runners.trainers import step_metrics, validation_metrics

LIGHTGBM = dict(
    framework="lightgbm", task="binary_classification", objective={"metric": "auc", "direction": "maximize"},
    search_space={"num_leaves": {"type": "int", "low": 8, "high": 256},
                  "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                  "boosting": {"type": "categorical", "choices": ["gbdt", "dart"]}},
    fixed_params={"n_estimators": 200}, sampler={"type": "tpe", "seed": 1},
    pruner={"type": "median", "n_startup_trials": 5}, n_trials=50, max_parallel=4)
PYTORCH = dict(
    framework="pytorch", task="regression", objective={"metric": "rmse", "direction": "minimize"},
    search_space={"hidden_sizes": {"type": "categorical", "choices": [[64], [64, 64], [128, 64, 32]]},
                  "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                  "batch_size": {"type": "int", "low": 16, "high": 256, "step": 16}},
    fixed_params={"epochs": 10}, sampler={"type": "random", "seed": None}, pruner={"type": "hyperband"},
    n_trials=20, max_parallel=2)


def spec(base: dict[str, Any] = LIGHTGBM, **changes: Any) -> dict[str, Any]:
    """`base` with changes; a key "a__b" sets base[a][b] (None as the value removes it)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        *path, last = key.split("__")
        target = out
        for part in path:
            target = target[part]
        if value is None and path:
            target.pop(last, None)
        else:
            target[last] = value
    return out


def refused(study: dict[str, Any]) -> StudySpecError:
    with pytest.raises(StudySpecError) as info:
        check_study(**study)
    return info.value


def space(**entries: Any) -> dict[str, Any]:
    return entries


NL = "search_space.num_leaves"
INVALID = [  # (id, spec, field, words in the reason)
    ("framework", spec(framework="xgboost"), "framework", "unknown framework"),
    ("task", spec(task="ranking"), "task", "unknown task"),
    ("objective not an object", spec(objective="auc"), "objective", "must be an object"),
    ("objective extra key", spec(objective__goal=1), "objective.goal", "unknown key"),
    ("metric of another task", spec(objective={"metric": "rmse"}), "objective.metric", "auc, accuracy, logloss"),
    ("metric missing", spec(objective={}), "objective.metric", "got null"),
    ("direction word", spec(objective__direction="up"), "objective.direction", "maximize or minimize"),
    ("direction against the metric", spec(objective__direction="minimize"), "objective.direction",
     "auc is to maximize"),
    ("empty space", spec(search_space={}), "search_space", "empty"),
    ("space not an object", spec(search_space=[1]), "search_space", "must be an object"),
    ("too many params", spec(search_space={f"p{i}": {} for i in range(33)}), "search_space", "at most 32"),
    ("odd name", spec(search_space={"x" * 65: {}}), "search_space", "printable"),
    ("unknown param", spec(search_space={"n_estimator": {"type": "int", "low": 1, "high": 9}}),
     "search_space.n_estimator", "did you mean 'n_estimators'?"),
    ("reserved param", spec(search_space={"objective": {"type": "categorical", "choices": ["binary"]}}),
     "search_space.objective", "cannot be set: set from the job's task"),
    ("reserved seed", spec(search_space={"seed": {"type": "int", "low": 1, "high": 9}}),
     "search_space.seed", "cannot be set: set from the job's seed"),
    ("alias and canonical", spec(search_space={"subsample": {"type": "float", "low": 0.5, "high": 1},
                                               "bagging_fraction": {"type": "float", "low": 0.5, "high": 1}}),
     "search_space.bagging_fraction", "same parameter as 'subsample'"),
    ("also fixed", spec(search_space__n_estimators={"type": "int", "low": 10, "high": 90}),
     "search_space.n_estimators", "also set in fixed_params"),
    ("also fixed under an alias", spec(fixed_params={"boosting_type": "gbdt"}), "search_space.boosting",
     "also set in fixed_params (as 'boosting_type')"),
    ("entry not an object", spec(search_space__num_leaves=[8, 256]), NL, "must be an object"),
    ("type missing", spec(search_space__num_leaves={"low": 8, "high": 9}), f"{NL}.type", "float, int, categorical"),
    ("type unknown", spec(search_space__num_leaves__type="uniform"), f"{NL}.type", "got 'uniform'"),
    ("float for an int param", spec(search_space__num_leaves__type="float"), f"{NL}.type", "int or categorical"),
    ("int for a flag", spec(search_space={"extra_trees": {"type": "int", "low": 0, "high": 1}}),
     "search_space.extra_trees.type", "categorical"),
    ("range for a choice", spec(search_space__boosting={"type": "float", "low": 0, "high": 1}),
     "search_space.boosting.type", "categorical"),
    ("unknown key", spec(search_space__num_leaves__choices=[8]), f"{NL}.choices", "unknown key for type int"),
    ("low missing", spec(search_space__num_leaves={"type": "int", "high": 9}), f"{NL}.low", "required"),
    ("high missing", spec(search_space__num_leaves={"type": "int", "low": 9}), f"{NL}.high", "required"),
    ("low as text", spec(search_space__num_leaves__low="8"), f"{NL}.low", "must be an integer"),
    ("low a float for int", spec(search_space__num_leaves__low=8.5), f"{NL}.low", "must be an integer"),
    ("low a boolean", spec(search_space__num_leaves__low=True), f"{NL}.low", "must be an integer"),
    ("float low nan", spec(search_space__learning_rate__low=float("nan")), "search_space.learning_rate.low",
     "finite"),
    ("float high infinite", spec(search_space__learning_rate__high=float("inf")),
     "search_space.learning_rate.high", "finite"),
    ("low above high", spec(search_space__num_leaves__low=300), f"{NL}.low", "must be <= high (256), got 300"),
    ("low below the param's bounds", spec(search_space__num_leaves__low=1), f"{NL}.low", "must be >= 2"),
    ("high above the param's bounds", spec(search_space__num_leaves__high=5000), f"{NL}.high",
     "<= 4096, got 5000"),
    ("low at an open bound", spec(search_space__learning_rate={"type": "float", "low": 0, "high": 0.3}),
     "search_space.learning_rate.low", "must be > 0"),
    ("log not a boolean", spec(search_space__num_leaves__log="yes"), f"{NL}.log", "true or false"),
    ("log from zero", spec(search_space={"lambda_l1": {"type": "float", "low": 0, "high": 1, "log": True}}),
     "search_space.lambda_l1.log", "low > 0"),
    ("log and step", spec(search_space__learning_rate__step=0.01), "search_space.learning_rate.step",
     "log scale"),
    ("int log with step 2", spec(search_space__num_leaves={"type": "int", "low": 8, "high": 256, "log": True,
                                                            "step": 2}), f"{NL}.step", "step 1"),
    ("int step zero", spec(search_space__num_leaves__step=0), f"{NL}.step", "positive integer"),
    ("int step fractional", spec(search_space__num_leaves__step=1.5), f"{NL}.step", "positive integer"),
    ("float step negative", spec(search_space={"lambda_l1": {"type": "float", "low": 0, "high": 1, "step": -0.1}}),
     "search_space.lambda_l1.step", "must be > 0"),
    ("float step text", spec(search_space={"lambda_l1": {"type": "float", "low": 0, "high": 1, "step": "0.1"}}),
     "search_space.lambda_l1.step", "must be a number"),
    ("float step 1e-300", spec(search_space={"lambda_l1": {"type": "float", "low": 0, "high": 1, "step": 1e-300}}),
     "search_space.lambda_l1.step", "over 1,000,000,000 values"),
    ("float step 1e-300 on a grid", spec(sampler={"type": "grid"}, search_space={
        "lambda_l1": {"type": "float", "low": 0, "high": 1, "step": 1e-300}}),
     "search_space.lambda_l1.step", "over 1,000,000,000 values"),
    ("float step the smallest float", spec(search_space={
        "lambda_l1": {"type": "float", "low": 0, "high": 100, "step": 5e-324}}),
     "search_space.lambda_l1.step", "give a larger step"),
    ("float step NaN", spec(search_space={"lambda_l1": {"type": "float", "low": 0, "high": 1, "step": float("nan")}}),
     "search_space.lambda_l1.step", "finite"),
    ("float step infinite", spec(search_space={
        "lambda_l1": {"type": "float", "low": 0, "high": 1, "step": float("inf")}}),
     "search_space.lambda_l1.step", "finite"),
    ("one grid dimension over the grid", spec(sampler={"type": "grid"}, search_space={
        "lambda_l1": {"type": "float", "low": 0, "high": 1, "step": 1e-5}}),
     "search_space.lambda_l1.step", "over 10,000 points"),
    ("empty choices", spec(search_space__boosting__choices=[]), "search_space.boosting.choices", "1 to 100"),
    ("choices not a list", spec(search_space__boosting__choices="gbdt"), "search_space.boosting.choices",
     "1 to 100"),
    ("too many choices", spec(search_space={"num_leaves": {"type": "categorical",
                                                           "choices": list(range(2, 103))}}),
     f"{NL}.choices", "1 to 100"),
    ("choice an object", spec(search_space__boosting__choices=["gbdt", {"a": 1}]),
     "search_space.boosting.choices[1]", "string, number, boolean, null or a list of integers"),
    ("choice a list of text", spec(search_space__boosting__choices=[["gbdt"]]),
     "search_space.boosting.choices[0]", "list of integers"),
    ("choice the param refuses", spec(search_space__boosting__choices=["gbdt", "goss"]),
     "search_space.boosting.choices[1]", "must be one of gbdt, dart"),
    ("choice null", spec(search_space__boosting__choices=[None]), "search_space.boosting.choices[0]",
     "must be one of"),
    ("choice out of bounds", spec(search_space__num_leaves={"type": "categorical", "choices": [8, 9000]}),
     f"{NL}.choices[1]", "<= 4096"),
    ("duplicate choice", spec(search_space__boosting__choices=["dart", "gbdt", "dart"]),
     "search_space.boosting.choices[2]", "same as choices[0]"),
    ("duplicate number", spec(search_space={"lambda_l1": {"type": "categorical", "choices": [1, 1.0]}}),
     "search_space.lambda_l1.choices[1]", "same as choices[0]"),
    ("bool choice for a number", spec(search_space={"lambda_l1": {"type": "categorical", "choices": [0.5, True]}}),
     "search_space.lambda_l1.choices[1]", "must be a number"),
    ("sampler not an object", spec(sampler="tpe"), "sampler", "must be an object"),
    ("sampler type", spec(sampler__type="bayes"), "sampler.type", "tpe, random, grid, cmaes, qmc"),
    ("sampler seed negative", spec(sampler__seed=-1), "sampler.seed", "0 to 4,294,967,295"),
    ("sampler seed too big", spec(sampler__seed=2**32), "sampler.seed", "0 to"),
    ("sampler seed text", spec(sampler__seed="1"), "sampler.seed", "0 to"),
    ("sampler seed boolean", spec(sampler__seed=True), "sampler.seed", "0 to"),
    ("sampler unknown key", spec(sampler__n_startup_trials=3), "sampler.n_startup_trials", "unknown key"),
    ("grid with an unbounded float", spec(sampler__type="grid"), "sampler.type", "learning_rate has none"),
    ("grid too large", spec(sampler__type="grid", search_space={
        "num_leaves": {"type": "int", "low": 2, "high": 4096},
        "max_bin": {"type": "int", "low": 2, "high": 1024}}), "sampler.type", "over 10,000 points"),
    ("pruner not an object", spec(pruner="median"), "pruner", "must be an object"),
    ("pruner type", spec(pruner__type="asha"), "pruner.type", "none, median, percentile"),
    ("pruner without a step metric", spec(objective={"metric": "accuracy", "direction": "maximize"}),
     "pruner.type", "supports pruning: auc, logloss"),
    ("pruner on mae", spec(PYTORCH, objective={"metric": "mae"}), "pruner.type", "supports pruning: rmse"),
    ("pruner on f1_macro", spec(task="multiclass_classification", objective={"metric": "f1_macro"}),
     "pruner.type", "supports pruning: accuracy, logloss"),
    ("median unknown option", spec(pruner__percentile=25.0), "pruner.percentile", "unknown option"),
    ("none has no options", spec(pruner={"type": "none", "n_startup_trials": 1}), "pruner.n_startup_trials",
     "has no options"),
    ("median startup too big", spec(pruner__n_startup_trials=1001), "pruner.n_startup_trials", "0 to 1,000"),
    ("median warmup negative", spec(pruner__n_warmup_steps=-1), "pruner.n_warmup_steps", "0 to 1,000,000"),
    ("median interval zero", spec(pruner__interval_steps=0), "pruner.interval_steps", "1 to 1,000,000"),
    ("percentile missing", spec(pruner={"type": "percentile"}), "pruner.percentile", "required"),
    ("percentile 100", spec(pruner={"type": "percentile", "percentile": 100}), "pruner.percentile", "< 100"),
    ("percentile 0", spec(pruner={"type": "percentile", "percentile": 0}), "pruner.percentile", "> 0"),
    ("halving rate 1", spec(pruner={"type": "successive_halving", "reduction_factor": 1}),
     "pruner.reduction_factor", "2 to 100"),
    ("halving min_resource 0", spec(pruner={"type": "successive_halving", "min_resource": 0}),
     "pruner.min_resource", '"auto" or an integer'),
    ("halving early stopping rate", spec(pruner={"type": "successive_halving", "min_early_stopping_rate": 101}),
     "pruner.min_early_stopping_rate", "0 to 100"),
    ("hyperband min_resource auto", spec(pruner={"type": "hyperband", "min_resource": "auto"}),
     "pruner.min_resource", "an integer from 1"),
    ("hyperband max below min", spec(pruner={"type": "hyperband", "min_resource": 9, "max_resource": 3}),
     "pruner.max_resource", ">= min_resource (9)"),
    ("hyperband unknown option", spec(pruner={"type": "hyperband", "bogus": 1}), "pruner.bogus", "unknown option"),
    ("n_trials 0", spec(n_trials=0), "n_trials", "1 to 10,000"),
    ("n_trials too many", spec(n_trials=10_001), "n_trials", "1 to 10,000"),
    ("n_trials boolean", spec(n_trials=True), "n_trials", "1 to 10,000"),
    ("max_parallel 0", spec(max_parallel=0), "max_parallel", "1 to 64"),
    ("max_parallel 65", spec(max_parallel=65), "max_parallel", "1 to 64"),
    ("fixed_params not an object", spec(fixed_params=[1]), "fixed_params", "must be an object"),
    ("fixed param out of bounds", spec(fixed_params={"n_estimators": 0}), "fixed_params.n_estimators", ">= 1"),
    ("fixed param reserved", spec(fixed_params={"seed": 3}), "fixed_params.seed", "cannot be set"),
    ("fixed param unknown", spec(fixed_params={"n_estimator": 3}), "fixed_params.n_estimator", "did you mean"),
    ("fixed params over the budget", spec(fixed_params={"n_estimators": 20_000, "num_leaves": 200},
                                          search_space={"learning_rate": {"type": "float", "low": 0.1, "high": 1}}),
     "fixed_params.num_leaves", "over the budget"),
    ("a bound over the budget with fixed_params", spec(fixed_params={"n_estimators": 20_000}),
     f"{NL}.high", "n_estimators x num_leaves = 5,120,000 leaves is over the budget"),
    ("the space's highest corner over the budget", spec(fixed_params={}, search_space={
        "n_estimators": {"type": "int", "low": 10, "high": 20_000},
        "num_leaves": {"type": "categorical", "choices": [8, 4096, 31]}}),
     f"{NL}.choices[1]", "with the searched numbers at their highest"),
    ("pytorch network over the budget", spec(PYTORCH, search_space__hidden_sizes__choices=[[64], [2048] * 8]),
     "search_space.hidden_sizes.choices[1]", "parameters with 1 features"),
    ("pytorch hidden_sizes as a range", spec(PYTORCH, search_space__hidden_sizes={"type": "int", "low": 8,
                                                                                  "high": 64}),
     "search_space.hidden_sizes.type", "categorical"),
    ("pytorch hidden_sizes too long", spec(PYTORCH, search_space__hidden_sizes__choices=[[8] * 9]),
     "search_space.hidden_sizes.choices[0]", "at most 8 integers"),
    ("pytorch hidden_sizes a number", spec(PYTORCH, search_space__hidden_sizes__choices=[[64], 64]),
     "search_space.hidden_sizes.choices[1]", "list"),
    ("pytorch lightgbm param", spec(PYTORCH, search_space__num_leaves={"type": "int", "low": 2, "high": 9}),
     "search_space.num_leaves", "unknown pytorch parameter"),
]


@pytest.mark.parametrize("study, field, words", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_each_rule_refuses_naming_the_field(study: dict[str, Any], field: str, words: str) -> None:
    error = refused(study)
    assert error.field == field, error
    assert words in error.reason, error.reason


VALID = [
    ("lightgbm", LIGHTGBM),
    ("pytorch with list choices", PYTORCH),
    ("aliases, flags and a float param searched as int", spec(search_space={
        "subsample": {"type": "float", "low": 0.5, "high": 1.0, "step": 0.1},
        "min_child_samples": {"type": "int", "low": 5, "high": 100, "log": True},
        "lambda_l2": {"type": "int", "low": 0, "high": 10},
        "extra_trees": {"type": "categorical", "choices": [True, False]},
        "max_depth": {"type": "categorical", "choices": [-1, 4, 8]}})),
    ("grid", spec(sampler={"type": "grid"}, search_space={
        "num_leaves": {"type": "int", "low": 8, "high": 64, "step": 8},
        "learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "step": 0.05},
        "boosting": {"type": "categorical", "choices": ["gbdt", "dart"]}})),
    ("grid at its limit", spec(sampler={"type": "grid"}, search_space={
        "num_leaves": {"type": "int", "low": 2, "high": 101}, "max_bin": {"type": "int", "low": 2, "high": 101}})),
    ("no direction, no fixed params, default sampler and pruner", spec(
        objective={"metric": "logloss"}, fixed_params=None, sampler=None, pruner=None)),
    ("percentile", spec(pruner={"type": "percentile", "percentile": 25.0, "n_warmup_steps": 5})),
    ("successive halving", spec(pruner={"type": "successive_halving", "min_resource": "auto",
                                        "reduction_factor": 3})),
    ("hyperband with ints", spec(pruner={"type": "hyperband", "min_resource": 1, "max_resource": 200})),
    ("no pruner on an objective without a step metric", spec(PYTORCH, objective={"metric": "r2"},
                                                             pruner={"type": "none"})),
    ("multiclass accuracy", spec(task="multiclass_classification", objective={"metric": "accuracy"},
                                 sampler={"type": "qmc", "seed": 2**32 - 1})),
    ("cmaes, one trial, 64 in parallel", spec(sampler={"type": "cmaes", "seed": 0}, n_trials=1, max_parallel=64)),
    ("a single-value range", spec(search_space__num_leaves__low=256)),
]


@pytest.mark.parametrize("study", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_studies_pass(study: dict[str, Any]) -> None:
    check_study(**study)


def test_messages_never_echo_long_user_text() -> None:
    long = "z" * 5000
    for study in (spec(framework=long), spec(task=long), spec(objective={"metric": long}),
                  spec(search_space__boosting__choices=[long]), spec(sampler__type=long), spec(pruner__type=long),
                  spec(search_space={long: {}}), spec(search_space__num_leaves={"type": "int", "low": 1, long: 1}),
                  spec(pruner={"type": "median", long: 1})):
        error = refused(study)
        assert len(str(error)) < 800, error.field
        assert long[:100] not in str(error)


@pytest.mark.parametrize("task", TASK_METRICS)
def test_objective_metrics_are_the_trainers_final_metrics_and_step_metrics_track_them(task: str) -> None:
    y = np.array([0, 1, 1, 0, 1, 0])
    if task in ("multiclass_classification", "image_classification"):
        y = np.array([0, 1, 2, 0, 1, 2])
        predicted = np.full((6, 3), 0.1) + np.eye(3)[y] * 0.7
    elif task == "binary_classification":
        predicted = np.array([0.2, 0.8, 0.6, 0.3, 0.9, 0.4])
    else:
        predicted = y + 0.1
    scores = validation_metrics(task, y, predicted)
    forecasting = ("skill_vs_seasonal_naive",) if task == "forecasting" else ()  # the trainer adds its baseline's
    assert tuple(scores) + forecasting == TASK_METRICS[task]
    steps = step_metrics(task, 0.5, scores)
    tracked = {m: step_metric_for(task, m) for m in TASK_METRICS[task]}
    assert {m for m, s in tracked.items() if s} == {
        "binary_classification": {"auc", "logloss"}, "multiclass_classification": {"accuracy", "logloss"},
        "regression": {"rmse"}, "forecasting": {"rmse"}, "image_classification": {"accuracy", "logloss"}}[task]
    for metric, step_metric in tracked.items():
        if step_metric is None:
            continue
        assert step_metric in steps
        if step_metric != "valid_loss":
            assert steps[step_metric] == scores[metric]  # the same number, reported per step
        else:
            assert steps["valid_loss"] == scores["logloss"]


def test_directions_and_unknown_pairs() -> None:
    assert [default_direction(m) for m in ("auc", "accuracy", "f1_macro", "r2")] == ["maximize"] * 4
    assert [default_direction(m) for m in ("logloss", "rmse", "mae")] == ["minimize"] * 3
    assert step_metric_for("regression", "auc") is None
    assert step_metric_for("ranking", "auc") is None


def test_settings_fill_in_defaults() -> None:
    assert sampler_settings(None) == ("tpe", None)
    assert sampler_settings({"type": "grid", "seed": 5}) == ("grid", 5)
    assert pruner_settings(None) == ("none", {})
    assert pruner_settings({"type": "median"}) == (
        "median", {"n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1})
    assert pruner_settings({"type": "percentile", "percentile": 10})[1]["percentile"] == 10
    assert pruner_settings({"type": "successive_halving"})[1] == {
        "min_resource": "auto", "reduction_factor": 4, "min_early_stopping_rate": 0}
    assert pruner_settings({"type": "hyperband", "max_resource": 81})[1] == {
        "min_resource": 1, "max_resource": 81, "reduction_factor": 3}
