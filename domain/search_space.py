"""Hyperparameter studies: what a study may search, checked before anything is recorded.

A study tunes one framework's params on one task: it searches `search_space` (one entry per tunable
parameter), merges `fixed_params` into every trial's params, optimizes one of the task's final metrics
(`objective`), proposes trials with a `sampler` and may stop unpromising trials early with a `pruner`.
Pure: no I/O, importable by the API, the study driver and runners alike. A study of the user's own code (framework
python) searches free names, optimizes any metric its script finishes with and may prune on what the script
reports (`run.report`); its params are the script's, so no budget or trainability check applies.

Search space entries (JSON):
    {"type": "float", "low": x, "high": y, "log": false, "step": null}
    {"type": "int", "low": a, "high": b, "step": 1, "log": false}
    {"type": "categorical", "choices": [...]}

Contracts:
  * `check_study(framework, task, objective, search_space, fixed_params, sampler, pruner, n_trials,
    max_parallel)` raises `StudySpecError(field, reason)`; `field` is one of "framework", "task", "objective",
    "objective.metric", "objective.direction", "objective.<key>", "search_space", "search_space.<name>",
    "search_space.<name>.<key>" (type, low, high, log, step, choices, "choices[i]" or an unknown key),
    "fixed_params", "fixed_params.<name>", "sampler", "sampler.type", "sampler.seed", "sampler.<key>",
    "pruner", "pruner.type", "pruner.<option>", "n_trials", "max_parallel".
  * Parameter names and values follow domain/frameworks.py: a reserved or unknown name is refused with the
    same reason a job gets, and every bound of the space (low, high, each choice) must itself be a valid value.
    A space that cannot train is refused up front: every corner of it, merged with `fixed_params`, must be valid
    params within the framework's compute budget, taken at its most lenient (one feature, one output; more
    features or classes can still put a trial over it, which the trial's job then reports).
  * `TASK_METRICS[task]` (domain/vocabulary.py): the final metrics of the task's trainers
    (runners.trainers.validation_metrics);
    `default_direction(metric)`; `step_metric_for(task, metric)`: the per-step metric
    (runners.trainers.step_metrics) that tracks the objective during training, None when none does (a study
    of such an objective cannot prune).
  * `sampler_settings(sampler)` and `pruner_settings(pruner)`: the sampler's / pruner's type and options with
    defaults filled in, the one place those defaults live (commands/study_optimizer.py builds from them).
Messages never echo more than a short prefix of what was sent.
"""
from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from domain.contract import FieldError
from domain.framework_params import Param
from domain.frameworks import FrameworkSpec, ParamsError, _unknown, check_budget, framework_spec, resolve_params
from domain.vocabulary import TASK_METRICS, Direction, Task, direction_of

_STEP_METRICS = {  # (task, objective metric) -> the per-step metric that tracks it (see step_metrics)
    ("binary_classification", "auc"): "valid_auc",
    ("binary_classification", "logloss"): "valid_loss",
    ("multiclass_classification", "accuracy"): "valid_accuracy",
    ("multiclass_classification", "logloss"): "valid_loss",
    ("regression", "rmse"): "valid_rmse",
    ("image_classification", "accuracy"): "valid_accuracy",
    ("image_classification", "logloss"): "valid_loss",
    ("forecasting", "rmse"): "valid_rmse",  # one step ahead; the objective itself is the recursive forecast's
}
SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")
SPACE_TYPES = ("float", "int", "categorical")
MAX_SPACE_PARAMS = 32
MAX_CHOICES = 100
MAX_GRID_POINTS = 10_000
# Values a stepped float range may take: Optuna counts them with Decimal arithmetic of 28 digits, which fails
# (InvalidOperation) on a quotient longer than that, and no sampler explores a billion steps.
MAX_RANGE_VALUES = 1_000_000_000
MAX_TRIALS = 10_000
MAX_PARALLEL = 64
MAX_SEED = 2**32 - 1
MAX_STEPS = 1_000_000
_NAME_CHARS = 64
# The series a code job's `run.report(value, step)` values are also stored as: a code study's intermediate
# objective, which the study driver reads back when it rebuilds a study's pruner.
CODE_OBJECTIVE_SERIES = "objective"
MAX_CODE_METRIC = 64  # the objective of a code study: a final metric name the script finishes with
_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "step", "log"),
         "categorical": ("type", "choices")}
_TYPES_OF_KIND = {"float": ("float", "int", "categorical"), "int": ("int", "categorical"),
                  "bool": ("categorical",), "choice": ("categorical",), "int_list": ("categorical",)}
_KIND_WORDS = {"float": "a number", "int": "an integer", "bool": "a true/false", "choice": "a choice",
               "int_list": "a list"}


class StudySpecError(FieldError):
    """A study request that cannot run: `field` names where ("search_space.num_leaves.low", "pruner.type")."""


def default_direction(metric: str) -> str:
    """"maximize" for auc, accuracy, f1_macro and r2; "minimize" for the others (losses and errors)."""
    return direction_of(metric)


def step_metric_for(task: str, metric: str) -> str | None:
    """The per-step metric that tracks `metric` while `task` trains, or None when no step metric does."""
    return _STEP_METRICS.get((task, metric))


# ---- sampler and pruner settings --------------------------------------------------------------------------
class _Option:
    """One pruner option: an integer in [low, high] (or the word "auto" when `auto`), or with `real` a number
    strictly between low and high."""

    def __init__(self, low: float, high: float, default: Any = None, auto: bool = False, real: bool = False,
                 required: bool = False) -> None:
        self.low, self.high, self.default = low, high, default
        self.auto, self.real, self.required = auto, real, required

    def check(self, value: Any) -> str | None:
        if self.auto and value == "auto":
            return None
        if self.real:
            ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                  and self.low < value < self.high)
            return None if ok else f"must be a number > {self.low:g} and < {self.high:g}, got {_show(value)}"
        if not isinstance(value, bool) and isinstance(value, int) and self.low <= value <= self.high:
            return None
        auto = '"auto" or ' if self.auto else ""
        return f"must be {auto}an integer from {self.low:,} to {self.high:,}, got {_show(value)}"


_WARMUP = {"n_startup_trials": _Option(0, 1000, 5), "n_warmup_steps": _Option(0, MAX_STEPS, 0),
           "interval_steps": _Option(1, MAX_STEPS, 1)}
PRUNER_OPTIONS: dict[str, dict[str, _Option]] = {
    "none": {},
    "median": _WARMUP,
    "percentile": {"percentile": _Option(0, 100, real=True, required=True), **_WARMUP},
    "successive_halving": {"min_resource": _Option(1, MAX_STEPS, "auto", auto=True),
                           "reduction_factor": _Option(2, 100, 4),
                           "min_early_stopping_rate": _Option(0, 100, 0)},
    "hyperband": {"min_resource": _Option(1, MAX_STEPS, 1),
                  "max_resource": _Option(1, MAX_STEPS, "auto", auto=True),
                  "reduction_factor": _Option(2, 100, 3)},
}


def sampler_settings(sampler: dict[str, Any] | None) -> tuple[str, int | None]:
    """(type, seed) of a sampler spec, type "tpe" and seed None when not given. Raises StudySpecError."""
    sampler = {} if sampler is None else sampler
    if not isinstance(sampler, dict):
        raise StudySpecError("sampler", 'must be an object like {"type": "tpe", "seed": 42}')
    for key in sampler:
        if key not in ("type", "seed"):
            raise StudySpecError(_sub("sampler", key), "unknown key; expected type and seed")
    kind = sampler.get("type", "tpe")
    if kind not in SAMPLERS:
        raise StudySpecError("sampler.type", f"must be one of {', '.join(SAMPLERS)}, got {_show(kind)}")
    seed = sampler.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise StudySpecError("sampler.seed", f"must be null or an integer from 0 to {MAX_SEED:,}, got {_show(seed)}")
    return kind, seed


def pruner_settings(pruner: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(type, options with defaults filled in) of a pruner spec, type "none" when not given. Options left "auto"
    are passed on as "auto". Raises StudySpecError."""
    pruner = {} if pruner is None else pruner
    if not isinstance(pruner, dict):
        raise StudySpecError("pruner", 'must be an object like {"type": "median", "n_startup_trials": 5}')
    kind = pruner.get("type", "none")
    if kind not in PRUNERS:
        raise StudySpecError("pruner.type", f"must be one of {', '.join(PRUNERS)}, got {_show(kind)}")
    spec = PRUNER_OPTIONS[kind]
    out: dict[str, Any] = {}
    for key, value in pruner.items():
        if key == "type":
            continue
        if key not in spec:
            known = f"options of the {kind} pruner: {', '.join(spec)}" if spec else f"the {kind} pruner has no options"
            raise StudySpecError(_sub("pruner", key), f"unknown option; {known}")
        if reason := spec[key].check(value):
            raise StudySpecError(f"pruner.{key}", reason)
        out[key] = value
    for key, option in spec.items():
        if key not in out:
            if option.required:
                raise StudySpecError(f"pruner.{key}", f"required by the {kind} pruner")
            out[key] = option.default
    if kind == "hyperband" and out["max_resource"] != "auto" and out["max_resource"] < out["min_resource"]:
        raise StudySpecError("pruner.max_resource", f"must be >= min_resource ({out['min_resource']})")
    return kind, out


# ---- the study ----------------------------------------------------------------------------------------------
class _Dim:
    """One checked search-space entry."""

    def __init__(self, name: str, canonical: str, param: Param, entry: dict[str, Any]) -> None:
        self.name, self.canonical, self.param = name, canonical, param
        self.type: str = entry["type"]
        self.low, self.high = entry.get("low"), entry.get("high")
        self.step = entry.get("step", 1 if self.type == "int" else None)
        self.choices: list[Any] = list(entry.get("choices", ()))
        self.field = f"search_space.{name}"

    def corners(self) -> list[tuple[str, Any]]:
        """(field, value) of each bound of this entry."""
        if self.type == "categorical":
            return [(f"{self.field}.choices[{i}]", c) for i, c in enumerate(self.choices)]
        return [(f"{self.field}.low", self.low), (f"{self.field}.high", self.high)]

    def highest(self) -> tuple[str, Any] | None:
        """(field, value) of the largest value of a numeric entry, None for other categoricals."""
        if self.type != "categorical":
            return f"{self.field}.high", self.high
        if all(_is_number(c) for c in self.choices):
            i = max(range(len(self.choices)), key=lambda j: self.choices[j])
            return f"{self.field}.choices[{i}]", self.choices[i]
        return None

    def grid_points(self) -> int | None:
        """How many values a grid takes of this entry; None for a float range without a step."""
        if self.type == "categorical":
            return len(self.choices)
        if self.step is None:
            return None
        return _values(self.low, self.high, self.step)


def check_study(framework: str, task: str, objective: dict[str, Any], search_space: dict[str, Any],
                fixed_params: dict[str, Any] | None, sampler: dict[str, Any] | None, pruner: dict[str, Any] | None,
                n_trials: int, max_parallel: int) -> None:
    """Raise StudySpecError naming the field unless this study can run (see the module docstring)."""
    try:
        spec = framework_spec(framework)
    except ParamsError as e:
        raise StudySpecError("framework", e.reason) from None
    if task not in tuple(Task):
        raise StudySpecError("task", f"unknown task {_show(task)}; expected one of {', '.join(Task)}")
    if spec.code:
        _check_code_study(objective, search_space, fixed_params, sampler, pruner, n_trials, max_parallel)
        return
    metric = _check_objective(task, objective)
    fixed = {} if fixed_params is None else fixed_params
    if not isinstance(fixed, dict):
        raise StudySpecError("fixed_params", "must be an object of name: value")
    dims = _check_space(spec, search_space, fixed)
    sampler_type, _ = sampler_settings(sampler)
    if sampler_type == "grid":
        _check_grid(dims)
    pruner_type, _ = pruner_settings(pruner)
    if pruner_type != "none" and step_metric_for(task, metric) is None:
        prunable = [m for m in TASK_METRICS[task] if step_metric_for(task, m)]
        raise StudySpecError("pruner.type", f"{metric} is not reported during training, so a {task} study of it "
                             f"cannot prune; use pruner none, or an objective metric that supports pruning: "
                             f"{', '.join(prunable)}")
    _check_count("n_trials", n_trials, MAX_TRIALS)
    _check_count("max_parallel", max_parallel, MAX_PARALLEL)
    _check_trainable(framework, task, fixed, dims)


class _FreeParam:
    """A code study's parameter: the script reads its params untouched, so any value of the entry's type goes
    (a float entry may be searched as float, int or categorical; the edge bounds the values' shape)."""

    kind = "float"

    @staticmethod
    def check(value: Any) -> str | None:
        return None


def _check_code_study(objective: Any, search_space: Any, fixed_params: Any, sampler: Any, pruner: Any,
                      n_trials: Any, max_parallel: Any) -> None:
    """A study of the user's own code: the objective is any metric name the script finishes with, every
    searched name is free (not also fixed), and any pruner goes (the script's `run.report` is the intermediate
    objective)."""
    if not isinstance(objective, dict):
        raise StudySpecError("objective", 'must be an object like {"metric": "val_loss", "direction": "minimize"}')
    for key in objective:
        if key not in ("metric", "direction"):
            raise StudySpecError(_sub("objective", key), "unknown key; expected metric and direction")
    metric = objective.get("metric")
    if not isinstance(metric, str) or not 0 < len(metric) <= MAX_CODE_METRIC or not metric.isprintable():
        raise StudySpecError("objective.metric", f"must be a metric name of 1 to {MAX_CODE_METRIC} printable "
                             f"characters (one the script finishes with), got {_show(metric)}")
    if objective.get("direction") not in (None, *Direction):
        raise StudySpecError("objective.direction", f"must be maximize or minimize, got {_show(objective['direction'])}")
    fixed = {} if fixed_params is None else fixed_params
    if not isinstance(fixed, dict):
        raise StudySpecError("fixed_params", "must be an object of name: value")
    _check_space_shape(search_space)
    dims: list[_Dim] = []
    for name, entry in search_space.items():
        if not isinstance(name, str) or not 0 < len(name) <= _NAME_CHARS or not name.isprintable():
            raise StudySpecError("search_space", f"parameter names must be 1 to {_NAME_CHARS} printable characters")
        where = f"search_space.{name}"
        if name in fixed:
            raise StudySpecError(where, "also set in fixed_params; a parameter is either searched or fixed")
        _check_entry(where, name, _FreeParam(), entry)  # type: ignore[arg-type]
        dims.append(_Dim(name, name, _FreeParam(), entry))  # type: ignore[arg-type]
    sampler_type, _ = sampler_settings(sampler)
    if sampler_type == "grid":
        _check_grid(dims)
    pruner_settings(pruner)
    _check_count("n_trials", n_trials, MAX_TRIALS)
    _check_count("max_parallel", max_parallel, MAX_PARALLEL)


def _check_objective(task: str, objective: Any) -> str:
    if not isinstance(objective, dict):
        raise StudySpecError("objective", 'must be an object like {"metric": "auc", "direction": "maximize"}')
    for key in objective:
        if key not in ("metric", "direction"):
            raise StudySpecError(_sub("objective", key), "unknown key; expected metric and direction")
    metric, known = objective.get("metric"), TASK_METRICS[task]
    if metric not in known:
        raise StudySpecError("objective.metric", f"must be one of the {task} metrics {', '.join(known)}, got "
                             f"{_show(metric)}")
    direction = objective.get("direction")
    if direction is not None:
        if direction not in tuple(Direction):
            raise StudySpecError("objective.direction", f"must be maximize or minimize, got {_show(direction)}")
        if direction != default_direction(metric):
            raise StudySpecError("objective.direction", f"{metric} is to {default_direction(metric)}; "
                                 f"got {direction}")
    return metric


def _check_space_shape(search_space: Any) -> None:
    """A search space is an object of 1 to MAX_SPACE_PARAMS parameters (what each holds is checked apart)."""
    if not isinstance(search_space, dict):
        raise StudySpecError("search_space", 'must be an object of name: {"type": ...}')
    if not search_space:
        raise StudySpecError("search_space", "is empty; give at least one parameter to search")
    if len(search_space) > MAX_SPACE_PARAMS:
        raise StudySpecError("search_space", f"{len(search_space)} parameters; at most {MAX_SPACE_PARAMS}")


def _check_space(spec: FrameworkSpec, search_space: Any, fixed: dict[str, Any]) -> list[_Dim]:
    _check_space_shape(search_space)
    fixed_canonical = {spec.aliases.get(k, k): k for k in fixed if isinstance(k, str)}
    dims: list[_Dim] = []
    seen: dict[str, str] = {}  # canonical name -> the name it was searched under
    for name, entry in search_space.items():
        if not isinstance(name, str) or not 0 < len(name) <= _NAME_CHARS or not name.isprintable():
            raise StudySpecError("search_space", f"parameter names must be 1 to {_NAME_CHARS} printable characters")
        where = f"search_space.{name}"
        if name in spec.reserved:
            raise StudySpecError(where, f"cannot be set: {spec.reserved[name]}")
        canonical = spec.aliases.get(name, name)
        if canonical not in spec.params:
            raise StudySpecError(where, _unknown(spec, name))
        if canonical in seen:
            raise StudySpecError(where, f"same parameter as {seen[canonical]!r}; search only one of them")
        if canonical in fixed_canonical:
            raise StudySpecError(where, f"also set in fixed_params (as {fixed_canonical[canonical]!r}); a parameter "
                                 "is either searched or fixed")
        seen[canonical] = name
        param = spec.params[canonical]
        _check_entry(where, canonical, param, entry)
        dims.append(_Dim(name, canonical, param, entry))
    return dims


def _check_entry(where: str, canonical: str, param: Param, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise StudySpecError(where, 'must be an object like {"type": "float", "low": 0.01, "high": 0.3}')
    kind = entry.get("type")
    if kind not in SPACE_TYPES:
        raise StudySpecError(f"{where}.type", f"must be one of {', '.join(SPACE_TYPES)}, got {_show(kind)}")
    for key in entry:
        if key not in _KEYS[kind]:
            raise StudySpecError(_sub(where, key), f"unknown key for type {kind}; expected {', '.join(_KEYS[kind])}")
    allowed = _TYPES_OF_KIND[param.kind]
    if kind not in allowed:
        raise StudySpecError(f"{where}.type", f"{canonical} takes {_KIND_WORDS[param.kind]}: search it with type "
                             f"{' or '.join(allowed)}")
    if kind == "categorical":
        _check_choices(where, param, entry.get("choices"))
    else:
        _check_range(where, kind, param, entry)


def _check_range(where: str, kind: str, param: Param, entry: dict[str, Any]) -> None:
    integral = kind == "int"
    for key in ("low", "high"):
        if key not in entry:
            raise StudySpecError(f"{where}.{key}", f"required for type {kind}")
        value = entry[key]
        if reason := _number(value, integral):
            raise StudySpecError(f"{where}.{key}", reason)
        if reason := param.check(value):
            raise StudySpecError(f"{where}.{key}", reason)
    low, high = entry["low"], entry["high"]
    if low > high:
        raise StudySpecError(f"{where}.low", f"must be <= high ({_num(high)}), got {_num(low)}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise StudySpecError(f"{where}.log", f"must be true or false, got {_show(log)}")
    if log and low <= 0:
        raise StudySpecError(f"{where}.log", f"a log scale needs low > 0, got {_num(low)}")
    step = entry.get("step", 1 if integral else None)
    if step is None and not integral:
        return
    if integral:
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise StudySpecError(f"{where}.step", f"must be a positive integer, got {_show(step)}")
        if log and step != 1:
            raise StudySpecError(f"{where}.step", "a log scale needs step 1")
        return
    if reason := _number(step, integral=False):
        raise StudySpecError(f"{where}.step", f"{reason} or null")
    if step <= 0:
        raise StudySpecError(f"{where}.step", f"must be > 0, got {_num(step)}")
    if log:
        raise StudySpecError(f"{where}.step", "cannot be combined with a log scale; give one of them")
    if _values(low, high, step) > MAX_RANGE_VALUES:
        raise StudySpecError(f"{where}.step", f"a step of {_num(step)} from {_num(low)} to {_num(high)} gives over "
                             f"{MAX_RANGE_VALUES:,} values; give a larger step")


def _values(low: float, high: float, step: float) -> int:
    """How many values low, low + step, … up to high are (MAX_RANGE_VALUES + 1 for any count above that)."""
    span, d_step = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))
    if span / d_step > MAX_RANGE_VALUES:  # a rounded division never fails; a floor division this long would
        return MAX_RANGE_VALUES + 1
    return int(span // d_step) + 1


def _check_choices(where: str, param: Param, choices: Any) -> None:
    if not isinstance(choices, list) or not 0 < len(choices) <= MAX_CHOICES:
        raise StudySpecError(f"{where}.choices", f"must be a list of 1 to {MAX_CHOICES} values")
    for i, item in enumerate(choices):
        at = f"{where}.choices[{i}]"
        if not _optuna_choice(item):
            raise StudySpecError(at, "must be a string, number, boolean, null or a list of integers")
        if reason := param.check(item):
            raise StudySpecError(at, reason)
        for j in range(i):
            if _same(choices[j], item):
                raise StudySpecError(at, f"same as choices[{j}]; each choice once")


def _check_grid(dims: list[_Dim]) -> None:
    total = 1
    for dim in dims:
        points = dim.grid_points()
        if points is None:
            raise StudySpecError("sampler.type", f"the grid sampler needs a step for every float range; "
                                 f"{dim.name} has none (give it a step, or use another sampler)")
        if points > MAX_GRID_POINTS:
            raise StudySpecError(f"{dim.field}.step" if dim.type != "categorical" else f"{dim.field}.choices",
                                 f"{dim.name} alone gives the grid over {MAX_GRID_POINTS:,} points; give a larger step")
        total *= points
        if total > MAX_GRID_POINTS:
            raise StudySpecError("sampler.type", f"the grid has over {MAX_GRID_POINTS:,} points; search fewer "
                                 f"values (larger steps, fewer choices) or use another sampler")


def _check_count(field: str, value: Any, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise StudySpecError(field, f"must be an integer from 1 to {high:,}, got {_show(value)}")


def _check_trainable(framework: str, task: str, fixed: dict[str, Any], dims: list[_Dim]) -> None:
    """fixed_params alone, each bound of the space with them, and the space at its highest with them: all must
    be valid params within the budget (at one feature and one output, its most lenient)."""
    _trainable(framework, task, fixed, lambda f: "fixed_params" + f[len("params"):], "")
    for dim in dims:
        for field, value in dim.corners():
            _trainable(framework, task, {**fixed, dim.name: value}, lambda f, field=field: field, "")
    if len(dims) < 2:
        return
    highest = {dim: top for dim in dims if (top := dim.highest()) is not None}
    base = {**fixed, **{dim.name: value for dim, (_, value) in highest.items()}}
    variants: list[tuple[dict[str, Any], dict[str, str]]] = []
    fields = {dim.canonical: field for dim, (field, _) in highest.items()}
    for dim in dims:
        if dim not in highest:
            variants += [({**base, dim.name: value}, {**fields, dim.canonical: field})
                         for field, value in dim.corners()]
    if not variants:
        variants = [(base, fields)]
    for params, owners in variants:
        first = next(iter(owners.values()))

        def field_of(f: str, owners: dict[str, str] = owners, first: str = first) -> str:
            return owners.get(f[len("params."):], first)

        _trainable(framework, task, params, field_of, "with the searched numbers at their highest: ")


def _trainable(framework: str, task: str, params: dict[str, Any], field_of: Any, context: str) -> None:
    try:
        resolved = resolve_params(framework, task, params)
        check_budget(framework, resolved, n_features=1, n_outputs=1)
    except ParamsError as e:
        raise StudySpecError(field_of(e.field), context + e.reason) from None


# ---- helpers ------------------------------------------------------------------------------------------------
def _sub(prefix: str, key: Any) -> str:
    """`prefix.key` when key is short printable text, else `prefix` (never echo long or odd keys)."""
    ok = isinstance(key, str) and 0 < len(key) <= _NAME_CHARS and key.isprintable()
    return f"{prefix}.{key}" if ok else prefix


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _number(value: Any, integral: bool) -> str | None:
    if integral and (isinstance(value, bool) or not isinstance(value, int)):
        return f"must be an integer, got {_show(value)}"
    if not _is_number(value):
        return f"must be a number, got {_show(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None


def _optuna_choice(item: Any) -> bool:
    """A value Optuna can hold as a categorical choice (lists of integers are encoded by the driver)."""
    if item is None or isinstance(item, (str, bool, int)):
        return True
    if isinstance(item, float):
        return math.isfinite(item)
    return isinstance(item, list) and all(not isinstance(x, bool) and isinstance(x, int) for x in item)


def _same(a: Any, b: Any) -> bool:
    """Equal as Optuna would confuse them (1 == 1.0; a boolean never equals a number)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    if _is_number(value):
        return _num(value)
    return {bool: "a boolean", list: "a list", dict: "an object", type(None): "null"}.get(
        type(value), type(value).__name__)


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) or abs(x) >= 1e12 else str(x)
