"""The Deployment aggregate: a named inference endpoint that splits traffic over model variants, revision by revision.

    create ──► revision 1 (active)
      │  change_traffic / promote / update / rollback ──► revision n+1 (active)
      └─ deactivate ──► revision n+1 (inactive): no change is taken after it

A `Variant` is a frozen value (name, model, version, weight, artifact, and the alias it was resolved from):
integer weights 0..100 summing to 100 over 1-10 uniquely named variants (a variant may hold 0 and then gets no
traffic). A `Shadow` (model, version, artifact, alias) sees a copy of the traffic, its answers are never returned;
there is one or None. `artifact` is opaque here: the command layer fills it with what the inference server needs.
Events carry their JSON form (`to_json`) and the state is built from it (`from_json`); a change makes new values
(`dataclasses.replace`), so `revisions` holds the values themselves, never copies.

Every change makes a new revision, and every event carries the deployment's full new state (variants, shadow),
so a consumer can take the latest revision without the history. `revisions` keeps each revision's state, what
changed, why, and when (the event's timestamp). A rollback makes a new revision with the state of the revision
before the current one. Invalid input raises `DeploymentSpecError` naming the field (HTTP 422); a command the
deployment's state does not allow raises a `DeploymentError` (HTTP 409). No I/O here.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.contract import FieldError, has_control
from domain.vocabulary import AbMetric, PolicyAction, RevisionChange, choices

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


def deployment_id(name: str) -> UUID:
    """The id of the deployment called `name` (names are unique, so the id is derived from it)."""
    return uuid5(_NAMESPACE, name)


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


def _variants_json(variants: Iterable[Variant]) -> list[dict[str, Any]]:
    return [v.to_json() for v in variants]


def _shadow_json(shadow: Shadow | None) -> dict[str, Any] | None:
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


class Deployment(Aggregate):
    @classmethod
    def create(cls, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None, policy: dict[str, Any] | None = None) -> Deployment:
        """A new deployment with the id derived from its name; its event holds copies of the inputs."""
        check_name(name)
        return cls(id=deployment_id(name), name=name, variants=_variants_json(check_variants(variants)),
                   shadow=_shadow_json(check_shadow(shadow)), reason=check_reason(reason), policy=check_policy(policy))

    class Created(Aggregate.Created):
        """Revision 1. v2 added `policy`."""

        class_version = 2
        name: str
        variants: list[dict[str, Any]]
        shadow: dict[str, Any] | None = None
        reason: str | None = None
        revision: int = 1
        policy: dict[str, Any] | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("policy", None)

    @event(Created)
    def __init__(self, id: UUID, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
                 reason: str | None = None, revision: int = 1, policy: dict[str, Any] | None = None) -> None:
        # Only assigns: the rules ran in `create`, and a stored event must load under any later rule.
        self.name = name
        self.variants = tuple(Variant.from_json(v) for v in variants)
        self.shadow = None if shadow is None else Shadow.from_json(shadow)
        self.policy = copy.deepcopy(policy)
        self.halted: list[str] = []  # challengers the policy rolled back: never ramped again
        self.active = True
        self.revision = revision
        self.revisions: list[dict[str, Any]] = []
        self._record(RevisionChange.CREATED, reason, None, self.created_on)

    # ---- read-only views ----------------------------------------------------------------------
    @property
    def weights(self) -> dict[str, int]:
        return {v.name: v.weight for v in self.variants}

    def snapshot(self) -> dict[str, Any]:
        """The current revision in its JSON form: what the inference server serves."""
        return {"name": self.name, "revision": self.revision, "active": self.active,
                "variants": _variants_json(self.variants), "shadow": _shadow_json(self.shadow)}

    def check_active(self) -> None:
        if not self.active:
            raise DeploymentInactiveError(f"deployment {self.name} was deactivated")

    def _record(self, change: str, reason: str | None, rolled_back_to: int | None, at: datetime,
                figures: dict[str, Any] | None = None) -> None:
        entry = {"revision": self.revision, "change": change, "reason": reason,
                 "variants": self.variants, "shadow": self.shadow,  # values: shared, never changed
                 "active": self.active, "at": at.isoformat(), "rolled_back_to": rolled_back_to}
        if figures is not None:  # a policy action: what it was based on
            entry["figures"] = copy.deepcopy(figures)
        self.revisions.append(entry)

    # ---- commands ---------------------------------------------------------------------------------
    def change_traffic(self, weights: dict[str, int], reason: str | None = None) -> None:
        """New weights for all the existing variants (each named, none unknown, summing to 100)."""
        self.check_active()
        if not isinstance(weights, dict):
            raise DeploymentSpecError("weights", "must be an object of variant name to weight")
        current = self.weights
        for name in weights:
            if name not in current:
                raise DeploymentSpecError(f"weights.{name}", f"deployment {self.name} has no variant {name!r}")
        for name in current:
            if name not in weights:
                raise DeploymentSpecError(f"weights.{name}", "every variant needs a weight")
            check_weight(f"weights.{name}", weights[name])
        total = sum(weights.values())
        if total != 100:
            raise DeploymentSpecError("weights", f"weights must sum to 100, not {total}")
        reason = check_reason(reason)
        variants = [replace(v, weight=weights[v.name]) for v in self.variants]
        self.trigger_event(self.TrafficChanged, revision=self.revision + 1, variants=_variants_json(variants),
                           shadow=_shadow_json(self.shadow), reason=reason)

    def promote(self, variant: str, reason: str | None = None) -> None:
        """All traffic to `variant`, none to the others."""
        self.check_active()
        if not isinstance(variant, str) or variant not in self.weights:
            raise DeploymentSpecError("variant", f"deployment {self.name} has no variant {variant!r}")
        reason = check_reason(reason)
        variants = [replace(v, weight=100 if v.name == variant else 0) for v in self.variants]
        self.trigger_event(self.Promoted, revision=self.revision + 1, variants=_variants_json(variants),
                           shadow=_shadow_json(self.shadow), reason=reason)

    def update(self, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None) -> None:
        """Replace the variants and the shadow (None: no shadow), e.g. to serve a new model version."""
        self.check_active()
        new_variants, new_shadow = check_variants(variants), check_shadow(shadow)
        reason = check_reason(reason)
        self.trigger_event(self.Updated, revision=self.revision + 1, variants=_variants_json(new_variants),
                           shadow=_shadow_json(new_shadow), reason=reason)

    def rollback(self, reason: str | None = None) -> None:
        """A new revision with the variants and shadow of the revision before the current one."""
        self.check_active()
        if self.revision < 2:
            raise NoPreviousRevisionError(f"deployment {self.name} has no revision before {self.revision}")
        reason = check_reason(reason)
        target = self.revisions[self.revision - 2]
        self.trigger_event(self.RolledBack, revision=self.revision + 1, variants=_variants_json(target["variants"]),
                           shadow=_shadow_json(target["shadow"]), reason=reason, rolled_back_to=target["revision"])

    # ---- the policy (commands/ab_policy.py decides; these record) -----------------------------------------
    def set_policy(self, policy: dict[str, Any] | None, reason: str | None = None) -> None:
        """Attach (or, with None, remove) the automatic ramp/promote/rollback policy; not a revision."""
        self.check_active()
        self._policy_set(policy=check_policy(policy), reason=check_reason(reason))

    @event("PolicySet")
    def _policy_set(self, policy: dict[str, Any] | None, reason: str | None) -> None:
        self.policy = copy.deepcopy(policy)

    def policy_action(self, action: str, variant: str, weight: int, based_on_revision: int, reason: str,
                      figures: dict[str, Any]) -> None:
        """What the policy decided for challenger `variant` from the data of revision `based_on_revision`:
        `step` it to `weight`, `promote` it (100%), or `halt` it (weight 0, never ramped again). The control
        absorbs the difference. An evaluation of an older revision is refused (StaleEvaluationError), so two
        policy processes, or one that restarts, never act twice on the same evaluation window."""
        self.check_active()
        if based_on_revision != self.revision:
            raise StaleEvaluationError(f"deployment {self.name} is at revision {self.revision}, "
                                       f"the evaluation was of revision {based_on_revision}")
        if action not in tuple(PolicyAction):
            raise DeploymentSpecError("action", f"one of {', '.join(PolicyAction)}")
        control = control_name(self.weights)
        if variant not in self.weights or variant == control:
            raise DeploymentSpecError("variant", f"{variant!r} is not a challenger of deployment {self.name}")
        if action == "step" and variant in self.halted:
            raise DeploymentError(f"challenger {variant} was halted by the policy and is not ramped again")
        if action == "promote" and self.weights[variant] == 100:
            raise DeploymentError(f"challenger {variant} already takes all the traffic")
        target = {"step": weight, "promote": 100, "halt": 0}[action]
        check_weight("weight", target)
        weights = dict(self.weights)
        if action == "promote":
            weights = {n: 100 if n == variant else 0 for n in weights}
        else:
            weights[control] += weights[variant] - target
            weights[variant] = target
            if weights[control] < 0:
                raise DeploymentSpecError("weight", f"the control cannot give {variant} a weight of {target}")
        variants = [replace(v, weight=weights[v.name]) for v in self.variants]
        event_class = {"step": self.PolicyStepped, "promote": self.PolicyPromoted, "halt": self.PolicyHalted}[action]
        self.trigger_event(event_class, revision=self.revision + 1, variants=_variants_json(variants),
                           shadow=_shadow_json(self.shadow), reason=check_reason(reason[:MAX_REASON]), variant=variant, figures=copy.deepcopy(figures))

    # ---- the events that make a new revision ------------------------------------------------------------
    class Revision(Aggregate.Event):
        """The base of every event that makes a new revision: each carries the deployment's whole new state.
        All of them are published as `deployment.revised` with the action as `change` (docs/events.md), so the
        public contract is the one consumers had before each action had an event of its own."""

        CHANGE: ClassVar[str] = ""  # the action's name in the history and in the public payload
        revision: int
        variants: list[dict[str, Any]]
        shadow: dict[str, Any] | None
        reason: str | None

        @property
        def change_name(self) -> str:
            return self.CHANGE

        def details(self) -> dict[str, Any]:
            """What some actions add: the revision a rollback restored, the policy's challenger and figures."""
            return {"rolled_back_to": None, "variant": None, "figures": None}

        def apply(self, deployment: Any) -> None:
            deployment.revision = self.revision
            deployment.variants = tuple(Variant.from_json(v) for v in self.variants)
            deployment.shadow = None if self.shadow is None else Shadow.from_json(self.shadow)
            details = self.details()
            deployment._record(self.change_name, self.reason, details["rolled_back_to"], self.timestamp,
                               details["figures"])

        def published_as(self) -> tuple[str, dict[str, Any]]:
            """(public event name, payload): every revision keeps the subject and fields of `revised`."""
            return "revised", {"revision": self.revision, "change": self.change_name, "variants": self.variants,
                               "shadow": self.shadow, "reason": self.reason, **self.details()}

    class TrafficChanged(Revision):
        CHANGE = RevisionChange.TRAFFIC

    class Promoted(Revision):
        CHANGE = RevisionChange.PROMOTE

    class Updated(Revision):
        CHANGE = RevisionChange.UPDATE

    class RolledBack(Revision):
        CHANGE = RevisionChange.ROLLBACK
        rolled_back_to: int

        def details(self) -> dict[str, Any]:
            return {**super().details(), "rolled_back_to": self.rolled_back_to}

    class PolicyActed(Revision):
        """The base of the policy's actions on challenger `variant`, with the `figures` it decided on."""

        variant: str
        figures: dict[str, Any]

        def details(self) -> dict[str, Any]:
            return {**super().details(), "variant": self.variant, "figures": self.figures}

    class PolicyStepped(PolicyActed):
        CHANGE = RevisionChange.POLICY_STEP

    class PolicyPromoted(PolicyActed):
        CHANGE = RevisionChange.POLICY_PROMOTE

    class PolicyHalted(PolicyActed):
        CHANGE = RevisionChange.POLICY_HALT

        def apply(self, deployment: Any) -> None:
            super().apply(deployment)
            deployment.halted = [*deployment.halted, self.variant]

    class Revised(Revision):
        """Every revision was stored as this one event, its action in `change`, before each action had an event
        of its own: stored ones load and publish as they did. v2 added the policy's `variant` and `figures`."""

        class_version = 2
        change: str
        rolled_back_to: int | None
        variant: str | None = None
        figures: dict[str, Any] | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("variant", None)
            state.setdefault("figures", None)

        @property
        def change_name(self) -> str:
            return self.change

        def details(self) -> dict[str, Any]:
            return {"rolled_back_to": self.rolled_back_to, "variant": self.variant, "figures": self.figures}

        def apply(self, deployment: Any) -> None:
            super().apply(deployment)
            if self.change == RevisionChange.POLICY_HALT and self.variant is not None:
                deployment.halted = [*deployment.halted, self.variant]

    def deactivate(self, reason: str | None = None) -> None:
        """Stop serving; the deployment takes no change after this (a repeat is refused)."""
        self.check_active()
        self._deactivated(revision=self.revision + 1, reason=check_reason(reason))

    @event("Deactivated")
    def _deactivated(self, revision: int, reason: str | None, timestamp: datetime | None = None) -> None:
        self.revision = revision
        self.active = False
        self._record(RevisionChange.DEACTIVATE, reason, None, timestamp or self.modified_on)
