"""What a deployment may be, checked before anything is recorded: its name, its variants (frozen `Variant` values:
integer weights 0..100 summing to 100 over 1-10 uniquely named variants), its shadow (a `Shadow`, or None), its
reasons and its A/B policy (defaults and bounds declared once, documented by the API). Invalid input raises
`DeploymentSpecError` naming the field (HTTP 422); `DeploymentError` and its subclasses are what the aggregate
(domain/deployment.py) refuses in its state (HTTP 409). No I/O here.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from domain.contract import DEFAULT_PROJECT, FieldError, has_control, scoped
from domain.vocabulary import AbMetric, RevisionChange, choices

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
VARIANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
MAX_VARIANTS = 10
MAX_REASON = 500
MAX_MODEL_NAME = 200
CHANGES = tuple(RevisionChange)
VARIANT_KEYS = ("name", "model", "version", "weight", "artifact")
SHADOW_KEYS = ("model", "version", "artifact")
OPTIONAL_KEYS = ("alias",)  # the alias the version was resolved from, kept for the record
_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/deployments")
_NAME = re.compile(NAME_PATTERN)
_VARIANT_NAME = re.compile(VARIANT_NAME_PATTERN)


def deployment_id(name: str, project: str = DEFAULT_PROJECT) -> UUID:
    """The id of `project`'s deployment called `name` (names are unique in a project, so the id is derived from
    `scoped(project, name)`: in the default project, the id it had before projects)."""
    return uuid5(_NAMESPACE, scoped(project, name))


class DeploymentError(Exception):
    """A command the deployment's state does not allow; maps to HTTP 409."""


class DeploymentInactiveError(DeploymentError):
    """The deployment was deactivated: it takes no changes."""


class NoPreviousRevisionError(DeploymentError):
    """A rollback of a deployment that has only its first revision."""


class DeploymentSpecError(FieldError):
    """Invalid input; maps to HTTP 422. `field` names what is wrong, e.g. "variants[1].weight", "weights.b"."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One model version taking `weight` percent of the traffic. `artifact` is never changed in place."""

    name: str
    model: str
    version: int
    weight: int
    artifact: dict[str, Any]
    alias: str | None = None  # the alias the version was resolved from, kept for the record

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Variant:
        """No rules here: a stored event must load under any later rule (`check_variants` runs on input)."""
        return cls(name=data["name"], model=data["model"], version=data["version"], weight=data["weight"],
                   artifact=copy.deepcopy(data["artifact"]), alias=data.get("alias"))

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "model": self.model, "version": self.version, "weight": self.weight,
               "artifact": copy.deepcopy(self.artifact)}
        if self.alias is not None:
            out["alias"] = self.alias
        return out


@dataclass(frozen=True, slots=True)
class Shadow:
    """The model version that sees a copy of the traffic; its answers are never returned."""

    model: str
    version: int
    artifact: dict[str, Any]
    alias: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shadow:
        return cls(model=data["model"], version=data["version"], artifact=copy.deepcopy(data["artifact"]),
                   alias=data.get("alias"))

    def to_json(self) -> dict[str, Any]:
        out = {"model": self.model, "version": self.version, "artifact": copy.deepcopy(self.artifact)}
        if self.alias is not None:
            out["alias"] = self.alias
        return out


def variants_json(variants: Iterable[Variant]) -> list[dict[str, Any]]:
    return [v.to_json() for v in variants]


def shadow_json(shadow: Shadow | None) -> dict[str, Any] | None:
    return None if shadow is None else shadow.to_json()


# ---- validation (pure; also usable by the command layer before it builds artifacts) -------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DeploymentSpecError("name", f"must match {NAME_PATTERN}")
    return name


def check_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise DeploymentSpecError("reason", "must be a string or null")
    if len(reason) > MAX_REASON:
        raise DeploymentSpecError("reason", f"must be at most {MAX_REASON} characters")
    if has_control(reason):
        raise DeploymentSpecError("reason", "must not contain control characters")
    return reason


def _check_model(where: str, value: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in value:
        if key not in keys and key not in OPTIONAL_KEYS:
            raise DeploymentSpecError(f"{where}.{key}" if isinstance(key, str) else where,
                                      f"unknown field (allowed: {', '.join(keys + OPTIONAL_KEYS)})")
    alias = value.get("alias")
    if alias is not None and (not isinstance(alias, str) or not alias or len(alias) > 64 or has_control(alias)):
        raise DeploymentSpecError(f"{where}.alias", "must be a non-empty string of at most 64 characters")
    for key in keys:
        if key not in value:
            raise DeploymentSpecError(f"{where}.{key}", "is required")
    model = value["model"]
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME or has_control(model):
        raise DeploymentSpecError(f"{where}.model",
                                  f"must be a non-empty string of at most {MAX_MODEL_NAME} characters")
    if not _is_int(value["version"]) or value["version"] < 1:
        raise DeploymentSpecError(f"{where}.version", "must be an integer >= 1")
    if not isinstance(value["artifact"], dict):
        raise DeploymentSpecError(f"{where}.artifact", "must be an object")


def check_weight(field: str, weight: Any) -> int:
    if not _is_int(weight) or not 0 <= weight <= 100:
        raise DeploymentSpecError(field, "must be an integer from 0 to 100")
    return weight


def check_variants(variants: Any) -> tuple[Variant, ...]:
    """1-10 variants with unique names and weights summing to 100, as values."""
    if not isinstance(variants, (list, tuple)) or not 1 <= len(variants) <= MAX_VARIANTS:
        raise DeploymentSpecError("variants", f"must be a list of 1 to {MAX_VARIANTS} variants")
    seen: set[str] = set()
    for i, v in enumerate(variants):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise DeploymentSpecError(where, "must be an object")
        _check_model(where, v, VARIANT_KEYS)
        if not isinstance(v["name"], str) or not _VARIANT_NAME.match(v["name"]):
            raise DeploymentSpecError(f"{where}.name", f"must match {VARIANT_NAME_PATTERN}")
        if v["name"] in seen:
            raise DeploymentSpecError(f"{where}.name", f"variant {v['name']!r} is named twice")
        seen.add(v["name"])
        check_weight(f"{where}.weight", v["weight"])
    total = sum(v["weight"] for v in variants)
    if total != 100:
        raise DeploymentSpecError("variants", f"weights must sum to 100, not {total}")
    return tuple(Variant.from_json(v) for v in variants)


def check_shadow(shadow: Any) -> Shadow | None:
    if shadow is None:
        return None
    if not isinstance(shadow, dict):
        raise DeploymentSpecError("shadow", "must be an object or null")
    _check_model("shadow", shadow, SHADOW_KEYS)
    return Shadow.from_json(shadow)


class StaleEvaluationError(DeploymentError):
    """A policy action based on a revision that is no longer current (another evaluation acted first)."""


def _number(field: str, value: Any, low: float, high: float, integer: bool = False) -> float:
    ok = _is_int(value) if integer else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok or value != value or not low <= value <= high:
        raise DeploymentSpecError(field, f"must be {'an integer' if integer else 'a number'} from {low:g} to {high:g}")
    return value


# The A/B policy's defaults and bounds, declared once: check_policy enforces them, the API's PolicyIn documents
# them. Bounds are inclusive; the integers are whole numbers of labelled predictions and seconds.
POLICY_DEFAULTS: dict[str, Any] = {
    "metric": "accuracy", "min_samples": 500, "min_lift": 0.0, "max_p_value": 0.05, "max_p99_latency_ms": None,
    "max_error_rate": None, "ramp": [10, 25, 50, 100], "step_every_s": 300}
POLICY_BOUNDS: dict[str, tuple[float, float]] = {
    "min_samples": (10, 10**8), "min_lift": (0, 1e6), "max_p_value": (1e-6, 0.2), "max_p99_latency_ms": (0.01, 600_000),
    "max_error_rate": (0, 1), "step_every_s": (1, 7 * 86400)}
POLICY_INTEGERS = frozenset({"min_samples", "step_every_s"})
POLICY_RAMP_STEPS = (1, 20)  # how many weights a ramp may have
POLICY_RAMP_WEIGHTS = (1, 100)  # each weight, increasing and ending at 100


def _check_ramp(ramp: Any) -> None:
    (fewest, most), (lightest, heaviest) = POLICY_RAMP_STEPS, POLICY_RAMP_WEIGHTS
    if (not isinstance(ramp, list) or not fewest <= len(ramp) <= most
            or not all(_is_int(w) and lightest <= w <= heaviest for w in ramp)
            or ramp != sorted(set(ramp)) or ramp[-1] != heaviest):
        raise DeploymentSpecError("policy.ramp", f"{fewest} to {most} increasing integer weights from {lightest} to "
                                                 f"{heaviest}, ending at {heaviest}")


def check_policy(policy: Any) -> dict[str, Any] | None:
    """An automatic ramp/promote/rollback policy (commands/ab_policy.py acts on it), or None."""
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise DeploymentSpecError("policy", "must be an object or null")
    for key in policy:
        if key not in POLICY_DEFAULTS:
            raise DeploymentSpecError(f"policy.{key}", f"unknown field (allowed: {', '.join(POLICY_DEFAULTS)})")
    out = {key: policy.get(key, default) for key, default in POLICY_DEFAULTS.items()}
    if out["metric"] not in tuple(AbMetric):
        raise DeploymentSpecError("policy.metric", f"one of {choices(AbMetric).replace(' |', ',')}")
    for key in POLICY_DEFAULTS:  # in declaration order: the first bad field is the one reported
        if key == "ramp":
            _check_ramp(out[key])
        elif key in POLICY_BOUNDS and (out[key] is not None or POLICY_DEFAULTS[key] is not None):
            low, high = POLICY_BOUNDS[key]
            _number(f"policy.{key}", out[key], low, high, integer=key in POLICY_INTEGERS)
    return copy.deepcopy(out)


def control_of(variants: list[dict[str, Any]]) -> str:
    """The control of variants in their JSON form (a read model's row): see `control_name`."""
    return control_name([v["name"] for v in variants])


def control_name(names: Iterable[str]) -> str:
    """The control: the variant named `control`, else the first."""
    names = list(names)
    return "control" if "control" in names else names[0]
