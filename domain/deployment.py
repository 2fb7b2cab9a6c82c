"""The Deployment aggregate: a named inference endpoint that splits traffic over model variants, revision by revision.

    create ──► revision 1 (active)
      │  change_traffic / promote / update / rollback ──► revision n+1 (active)
      └─ deactivate ──► revision n+1 (inactive): no change is taken after it

What a deployment may be (its `Variant` and `Shadow` values, names, reasons, policy) is domain/deployment_spec.py.
A variant may hold weight 0 and then gets no traffic; the shadow sees a copy of the traffic and its answers are never
returned. `artifact` is opaque here: the command layer fills it with what the inference server needs. Events carry their JSON form (`to_json`) and the state is built from it (`from_json`); a change makes new values
(`dataclasses.replace`), so `revisions` holds the values themselves, never copies.

Every change makes a new revision, and every event carries the deployment's full new state (variants, shadow),
so a consumer can take the latest revision without the history. `revisions` keeps each revision's state, what
changed, why, and when (the event's timestamp). A rollback makes a new revision with the state of the revision
before the current one. Invalid input raises `DeploymentSpecError` naming the field (HTTP 422); a command the
deployment's state does not allow raises a `DeploymentError` (HTTP 409). No I/O here.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.contract import DEFAULT_PROJECT
from domain.deployment_spec import (MAX_REASON, DeploymentError, DeploymentInactiveError, DeploymentSpecError,
                                    NoPreviousRevisionError, Shadow, StaleEvaluationError, Variant, check_name,
                                    check_policy, check_reason, check_shadow, check_variants, check_weight,
                                    control_name, deployment_id, shadow_json, variants_json)
from domain.identity import check_name as check_project
from domain.vocabulary import PolicyAction, RevisionChange


class Deployment(Aggregate):
    @classmethod
    def create(cls, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None, policy: dict[str, Any] | None = None, *, project: str) -> Deployment:
        """A new deployment of `project` with the id derived from its name (unique in the project); its event holds
        copies of the inputs."""
        check_name(name)
        check_project(project, "project")
        return cls(id=deployment_id(name, project), name=name, variants=variants_json(check_variants(variants)),
                   shadow=shadow_json(check_shadow(shadow)), reason=check_reason(reason), policy=check_policy(policy),
                   project=project)

    class Created(Aggregate.Created):
        """Revision 1. v2 added `policy`; v3 the deployment's `project` (one created before projects belongs to the
        default project)."""

        class_version = 3
        name: str
        variants: list[dict[str, Any]]
        shadow: dict[str, Any] | None = None
        reason: str | None = None
        revision: int = 1
        policy: dict[str, Any] | None = None
        project: str = DEFAULT_PROJECT

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("policy", None)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state.setdefault("project", DEFAULT_PROJECT)

    @event(Created)
    def __init__(self, id: UUID, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
                 reason: str | None = None, revision: int = 1, policy: dict[str, Any] | None = None,
                 project: str = DEFAULT_PROJECT) -> None:
        # Only assigns: the rules ran in `create`, and a stored event must load under any later rule.
        self.project = project  # every read and command sees it only from within this project
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
                "variants": variants_json(self.variants), "shadow": shadow_json(self.shadow)}

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
        self.trigger_event(self.TrafficChanged, revision=self.revision + 1, variants=variants_json(variants),
                           shadow=shadow_json(self.shadow), reason=reason)

    def promote(self, variant: str, reason: str | None = None) -> None:
        """All traffic to `variant`, none to the others."""
        self.check_active()
        if not isinstance(variant, str) or variant not in self.weights:
            raise DeploymentSpecError("variant", f"deployment {self.name} has no variant {variant!r}")
        reason = check_reason(reason)
        variants = [replace(v, weight=100 if v.name == variant else 0) for v in self.variants]
        self.trigger_event(self.Promoted, revision=self.revision + 1, variants=variants_json(variants),
                           shadow=shadow_json(self.shadow), reason=reason)

    def update(self, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None) -> None:
        """Replace the variants and the shadow (None: no shadow), e.g. to serve a new model version."""
        self.check_active()
        new_variants, new_shadow = check_variants(variants), check_shadow(shadow)
        reason = check_reason(reason)
        self.trigger_event(self.Updated, revision=self.revision + 1, variants=variants_json(new_variants),
                           shadow=shadow_json(new_shadow), reason=reason)

    def rollback(self, reason: str | None = None) -> None:
        """A new revision with the variants and shadow of the revision before the current one."""
        self.check_active()
        if self.revision < 2:
            raise NoPreviousRevisionError(f"deployment {self.name} has no revision before {self.revision}")
        reason = check_reason(reason)
        target = self.revisions[self.revision - 2]
        self.trigger_event(self.RolledBack, revision=self.revision + 1, variants=variants_json(target["variants"]),
                           shadow=shadow_json(target["shadow"]), reason=reason, rolled_back_to=target["revision"])

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
        self.trigger_event(event_class, revision=self.revision + 1, variants=variants_json(variants),
                           shadow=shadow_json(self.shadow), reason=check_reason(reason[:MAX_REASON]), variant=variant, figures=copy.deepcopy(figures))

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
