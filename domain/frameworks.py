"""The framework registry: what a user may ask of each training framework, checked before any work is queued.

`FRAMEWORKS[name]` is a `FrameworkSpec`: the parameters a job may set (an allowlist: each with a type, bounds
or choices and a default), the names that are refused with a reason (set by Trainyard, or unsafe), the model
format the trainer produces and its file suffix, and a compute budget. Pure: no I/O, importable by the API and
by runners alike.

Contracts:
  * `resolve_params(framework, task, params)` -> the params with defaults filled in and aliases mapped to their
    canonical names; raises `ParamsError(field, reason)` with `field` "framework", "task", "params" or
    "params.<name>". Unknown names are refused, with a "did you mean ...?" hint for near misses.
  * `check_budget(framework, params, n_features, n_outputs=1)` raises `ParamsError` naming the parameter that
    makes the job too big (e.g. a PyTorch network over MAX_TORCH_PARAMETERS weights).
Strings are only ever one of a parameter's enumerated choices, and booleans must be JSON booleans: nothing a
user sends reaches a library's own config syntax (LightGBM's `k=v` lines) as free text.

`python` is the user's own code (a code job): its `params` are free-form JSON handed to the script and never
interpreted here (`spec.code`; their shape is bounded at the edge, api/limits.py), it has no compute budget of
ours (the job's `resources` bound it), and its model is the ONNX file the script saved.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.contract import FieldError
from domain.framework_params import Param, choice, describe, flag, int_list, integer, number
from domain.vocabulary import Task

MAX_TORCH_PARAMETERS = 20_000_000  # weights and biases of the whole network
MAX_LIGHTGBM_LEAVES = 2_000_000  # n_estimators * num_leaves: bounds model size and training time


class ParamsError(FieldError):
    """A training parameter that cannot be used: `field` ("params.<name>", "params", "framework", "task")."""


Budget = Callable[[dict[str, Any], int, int], None]  # (resolved params, n_features, n_outputs); raises ParamsError


@dataclass(frozen=True)
class FrameworkSpec:
    name: str
    params: Mapping[str, Param]  # canonical name -> spec
    model_format: str  # TrainResult.model_format of this framework's trainer
    model_suffix: str  # file suffix its models are stored under
    budget: Budget
    aliases: Mapping[str, str] = field(default_factory=dict)  # accepted other name -> canonical name
    reserved: Mapping[str, str] = field(default_factory=dict)  # refused name -> why
    code: bool = False  # the user's own script: free-form params, passed through untouched

    def defaults(self) -> dict[str, Any]:
        """Parameters with a default of ours (a None default leaves the library's own)."""
        return {k: list(p.default) if isinstance(p.default, tuple) else p.default
                for k, p in self.params.items() if p.default is not None}


def _lightgbm_budget(params: dict[str, Any], n_features: int, n_outputs: int) -> None:
    classes = n_outputs if n_outputs > 2 else 1  # multiclass grows one tree per class per round
    leaves = params["n_estimators"] * params.get("num_leaves", 31) * classes
    if leaves > MAX_LIGHTGBM_LEAVES:
        name = "num_leaves" if "num_leaves" in params else "n_estimators"
        per_class = f" x {classes} classes" if classes > 1 else ""
        raise ParamsError(f"params.{name}", f"n_estimators x num_leaves{per_class} = {leaves:,} leaves is over "
                          f"the budget of {MAX_LIGHTGBM_LEAVES:,}")


def torch_parameter_count(n_features: int, hidden_sizes: list[int], n_outputs: int) -> int:
    """Weights and biases of an MLP n_features -> hidden_sizes... -> n_outputs."""
    widths = [n_features, *hidden_sizes, n_outputs]
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def _pytorch_budget(params: dict[str, Any], n_features: int, n_outputs: int) -> None:
    count = torch_parameter_count(n_features, params["hidden_sizes"], max(n_outputs, 1))
    if count > MAX_TORCH_PARAMETERS:
        raise ParamsError("params.hidden_sizes", f"the network would have {count:,} parameters with {n_features} "
                          f"features; at most {MAX_TORCH_PARAMETERS:,}")


_FRACTION = number(0.0, 1.0, low_open=True)
_SET_BY_TASK, _SEED, _FIXED = "set from the job's task", "set from the job's seed", "fixed by Trainyard"
_UNSAFE = "not allowed: reads or writes files or opens network connections"
LIGHTGBM = FrameworkSpec(
    name="lightgbm", model_format="lightgbm-text", model_suffix="txt", budget=_lightgbm_budget,
    params={
        "n_estimators": integer(1, 20_000, default=100),
        "learning_rate": number(0.0, 10.0, low_open=True),
        "num_leaves": integer(2, 4096),
        "max_depth": integer(-1, 256),
        "min_data_in_leaf": integer(0, 1_000_000),
        "min_sum_hessian_in_leaf": number(0.0, 1e6),
        "feature_fraction": _FRACTION, "feature_fraction_bynode": _FRACTION,
        "bagging_fraction": _FRACTION,
        "bagging_freq": integer(0, 10_000),
        "lambda_l1": number(0.0, 1e6), "lambda_l2": number(0.0, 1e6),
        "min_gain_to_split": number(0.0, 1e6),
        "path_smooth": number(0.0, 1e6),
        "max_bin": integer(2, 1024),
        "extra_trees": flag(),
        "is_unbalance": flag(),
        "boosting": choice("gbdt", "dart"),  # rf needs bagging set up; goss moved to data_sample_strategy
        "drop_rate": number(0.0, 1.0), "skip_drop": number(0.0, 1.0),
        "num_threads": integer(1, 16, default=1),
        "early_stopping_rounds": integer(1, 10_000),  # stop when the validation loss has not improved for so many
    },
    aliases={"early_stopping_round": "early_stopping_rounds", "early_stopping": "early_stopping_rounds",
             "n_iter_no_change": "early_stopping_rounds", "min_child_samples": "min_data_in_leaf", "min_child_weight": "min_sum_hessian_in_leaf",
             "colsample_bytree": "feature_fraction", "subsample": "bagging_fraction",
             "subsample_freq": "bagging_freq", "reg_alpha": "lambda_l1", "reg_lambda": "lambda_l2",
             "min_split_gain": "min_gain_to_split", "boosting_type": "boosting"},
    reserved={
        **dict.fromkeys(["objective", "objective_type", "app", "application", "loss", "num_class",
                         "metric", "metrics", "metric_types"], _SET_BY_TASK),
        **dict.fromkeys(["num_iterations", "num_iteration", "n_iter", "num_tree", "num_trees", "num_round",
                         "num_rounds", "nrounds", "num_boost_round", "max_iter"], "use n_estimators"),
        **dict.fromkeys(["seed", "random_seed", "random_state", "bagging_seed", "feature_fraction_seed",
                         "data_random_seed", "drop_seed", "extra_seed", "objective_seed"], _SEED),
        **dict.fromkeys(["num_thread", "nthread", "nthreads", "n_jobs"], "use num_threads"),
        **dict.fromkeys(["deterministic", "verbosity", "verbose", "force_row_wise", "force_col_wise"], _FIXED),
        **dict.fromkeys(["machines", "machine_list_filename", "machine_list_file", "num_machines",
                         "local_listen_port", "tree_learner", "forcedsplits_filename", "forcedbins_filename",
                         "input_model", "output_model", "output_result", "convert_model", "data", "valid",
                         "initscore_filename", "config", "task"], _UNSAFE),
    },
)
PYTORCH = FrameworkSpec(
    name="pytorch", model_format="torch-state-dict", model_suffix="pt", budget=_pytorch_budget,
    params={
        "epochs": integer(1, 10_000, default=20),
        "hidden_sizes": int_list(8, 1, 2048, default=(64, 64)),
        "lr": number(0.0, 10.0, low_open=True, default=1e-3),
        "batch_size": integer(1, 65_536, default=64),
        "weight_decay": number(0.0, 10.0, default=0.0),
        "num_threads": integer(1, 16, default=1),
        "patience": integer(1, 10_000),  # early stopping: epochs without a better validation loss; keeps the best
        # image_classification only (runners/trainers/cnn_trainer.py): the convolution blocks' widths (default 16,
        # 32), hidden_sizes being the dense layers after them; augment: random shifts of the training images
        "channels": int_list(4, 1, 256),
        "augment": flag(),
    },
)
IMAGE_PARAMS = frozenset({"channels", "augment"})  # what only an image_classification job may set
IMAGE_FRAMEWORKS = frozenset({"pytorch"})  # the frameworks that train image_classification (a CNN)


def _no_budget(params: dict[str, Any], n_features: int, n_outputs: int) -> None:
    """A script's cost is bounded by its job's resources and timeout, not by its params."""


PYTHON = FrameworkSpec(name="python", params={}, model_format="onnx", model_suffix="onnx", budget=_no_budget,
                       code=True)
FRAMEWORKS: dict[str, FrameworkSpec] = {spec.name: spec for spec in (LIGHTGBM, PYTORCH, PYTHON)}
BUILTIN_FRAMEWORKS = tuple(name for name, spec in FRAMEWORKS.items() if not spec.code)
MODEL_SUFFIX = {spec.model_format: spec.model_suffix for spec in FRAMEWORKS.values()}


MAX_PARAMS = max(len(spec.params) for spec in FRAMEWORKS.values())  # each canonical name at most once


def describe_params() -> str:
    """Every framework's allowlist in words, for documents: names, types, bounds, defaults, aliases."""
    parts = []
    for spec in FRAMEWORKS.values():
        if spec.code:
            parts.append(f"{spec.name}: free-form JSON passed to the script, never interpreted")
            continue
        names = "; ".join(f"{name} ({describe(param)})" for name, param in spec.params.items())
        aliases = ", ".join(f"{alias} = {name}" for alias, name in spec.aliases.items())
        parts.append(f"{spec.name}: {names}" + (f"; aliases: {aliases}" if aliases else ""))
    return ". ".join(parts)


def framework_spec(framework: str) -> FrameworkSpec:
    """The registered spec of `framework`; ParamsError("framework") for an unknown one."""
    if framework not in FRAMEWORKS:
        raise ParamsError("framework", f"unknown framework {str(framework)[:40]!r}; expected one of "
                          f"{', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[framework]


def resolve_params(framework: str, task: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` checked, aliases mapped to canonical names, defaults filled in. Raises ParamsError."""
    spec = framework_spec(framework)
    if task not in tuple(Task):
        raise ParamsError("task", f"unknown task {str(task)[:40]!r}; expected one of {', '.join(Task)}")
    if not isinstance(params, dict):
        raise ParamsError("params", "must be an object of name: value")
    if task == Task.IMAGE_CLASSIFICATION and framework not in IMAGE_FRAMEWORKS:
        raise ParamsError("framework", f"task image_classification trains with {', '.join(IMAGE_FRAMEWORKS)} "
                          f"(a CNN), not {framework}")
    if spec.code:
        return dict(params)
    out = spec.defaults()
    given: dict[str, str] = {}  # canonical name -> the name the user gave it under
    for name, value in params.items():
        where = _field(name)
        if name in spec.reserved:
            raise ParamsError(where, f"cannot be set: {spec.reserved[name]}")
        canonical = spec.aliases.get(name, name)
        if canonical not in spec.params:
            raise ParamsError(where, _unknown(spec, name))
        if canonical in IMAGE_PARAMS and task != Task.IMAGE_CLASSIFICATION:
            raise ParamsError(where, "applies to task image_classification only")
        if canonical in given:
            raise ParamsError(where, f"same parameter as {given[canonical]!r}; give only one of them")
        reason = spec.params[canonical].check(value)
        if reason:
            raise ParamsError(where, reason)
        given[canonical] = name
        out[canonical] = list(value) if isinstance(value, list) else value
    return out


def validate_params(framework: str, task: str, params: dict[str, Any]) -> None:
    """Raise ParamsError naming the field if `params` cannot train `framework` on `task`."""
    resolve_params(framework, task, params)


def check_budget(framework: str, params: dict[str, Any], n_features: int, n_outputs: int = 1) -> None:
    """Raise ParamsError naming the parameter if a job of `params` (raw or resolved; defaults are filled in) on
    `n_features` features and `n_outputs` outputs (classes for multiclass, else 1) is over the compute budget."""
    spec = framework_spec(framework)
    spec.budget({**spec.defaults(), **params}, n_features, n_outputs)


def _field(name: str) -> str:
    return f"params.{name}" if name.isprintable() and 0 < len(name) <= 64 else "params"


def _unknown(spec: FrameworkSpec, name: str) -> str:
    known = [*spec.params, *spec.aliases]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75) if len(name) <= 64 else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {spec.name} parameter; {hint}known: {', '.join(spec.params)}"
