"""Deployment and API-key commands.

A variant names a model version (a number or an alias, resolved now: the revision records the number). Only a
version whose ONNX export completed can serve; its ONNX artifact (uri, sha256, input/output names, feature names,
class labels) goes into the revision itself, so the inference server needs nothing but the deployment's events (or
the read model built from them) to serve it.

API keys: the key is made here and returned once; only its sha256 is stored (events carry the hash, never the key).
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.persistence import RecordConflictError

from commands.context import CommandContext
from commands.models import ModelNotFoundError
from commands.application import ANONYMOUS, last_position
from commands.training import TrainingApplication
from domain.api_key import ApiKey, hash_key, key_prefix, new_key
from domain.deployment import Deployment
from domain.deployment_spec import DeploymentError, DeploymentSpecError, check_name, deployment_id
from domain.models import RegisteredModel, VersionNotFoundError, check_model_name, model_id


class DeploymentNotFoundError(LookupError):
    """No deployment has this name (its one argument); HTTP 404."""


class ApiKeyNotFoundError(LookupError):
    """No API key has this id; HTTP 404."""


class DeploymentExistsError(DeploymentError):
    """A deployment of this name exists; HTTP 409."""


class VariantNotServableError(DeploymentError):
    """A variant's model version has no completed ONNX export; HTTP 409 naming the variant."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


SERVING_KEYS = ("uri", "sha256", "opset", "input_name", "output_name", "n_features")


class DeploymentCommands:
    def __init__(self, app: TrainingApplication) -> None:
        self.app = app

    # ---- resolving what a variant serves -----------------------------------------------------------
    def resolve(self, spec: dict[str, Any], field: str) -> dict[str, Any]:
        """{"model", "version" | "alias", …} → the same with the version number and the ONNX artifact it serves."""
        try:
            name = check_model_name(spec.get("model"), f"{field}.model")
        except ValueError as e:
            raise DeploymentSpecError(f"{field}.model", str(e)) from None
        try:
            model: RegisteredModel = self.app.load(model_id(name), ModelNotFoundError)
        except ModelNotFoundError:
            raise DeploymentSpecError(f"{field}.model", f"no model {name!r}") from None
        ref = spec.get("alias") if spec.get("version") is None else spec.get("version")
        if ref is None:
            raise DeploymentSpecError(f"{field}.version", "give a version number or an alias")
        try:
            number = model.number_of(ref)
        except VersionNotFoundError as e:
            raise DeploymentSpecError(f"{field}.{'alias' if isinstance(ref, str) else 'version'}", str(e)) from None
        version = model.versions[number]
        if not version.get("onnx"):
            raise VariantNotServableError(field, f"{field}: model {name!r} version {number} has no completed ONNX "
                                                 "export; export it first (POST …/versions/{v}/exports)")
        lineage = version["lineage"]
        artifact = {k: version["onnx"].get(k) for k in SERVING_KEYS}
        artifact.update(feature_names=lineage.feature_names or [], class_labels=lineage.class_labels,
                        feature_recipe=lineage.artifact.get("feature_recipe"),
                        task=lineage.task, framework=lineage.framework,
                        export_id=str(version.get("export_id")))
        out = {k: v for k, v in spec.items() if k not in ("alias", "version")}
        out.update(model=name, version=number, artifact=artifact)
        if isinstance(ref, str):
            out["alias"] = ref
        return out

    def _variants(self, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.resolve(v, f"variants[{i}]") for i, v in enumerate(variants)]

    def _shadow(self, shadow: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if shadow is None else self.resolve(shadow, "shadow")

    # ---- deployments ----------------------------------------------------------------------------------
    def get(self, name: str) -> Deployment:
        return self.app.load(deployment_id(check_name(name)), lambda _id: DeploymentNotFoundError(name))

    def create(self, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None, ctx: CommandContext = ANONYMOUS,
               policy: dict[str, Any] | None = None) -> tuple[Deployment, int | None]:
        deployment = Deployment.create(check_name(name), self._variants(variants), self._shadow(shadow), reason,
                                       policy)
        try:
            return deployment, last_position(self.app.save_with(ctx, deployment))
        except RecordConflictError:
            raise DeploymentExistsError(f"a deployment named {name!r} exists") from None

    def _change(self, name: str, decide: Any, ctx: CommandContext) -> tuple[Deployment, int | None]:
        # the id is derived from the name: the error says the name the user gave
        return self.app.change(deployment_id(check_name(name)), decide, ctx, lambda _id: DeploymentNotFoundError(name))

    def change_traffic(self, name: str, weights: dict[str, int], reason: str | None = None,
                       ctx: CommandContext = ANONYMOUS) -> tuple[Deployment, int | None]:
        return self._change(name, lambda d: d.change_traffic(weights, reason), ctx)

    def promote(self, name: str, variant: str, reason: str | None = None, ctx: CommandContext = ANONYMOUS):
        return self._change(name, lambda d: d.promote(variant, reason), ctx)

    def update(self, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None, ctx: CommandContext = ANONYMOUS):
        resolved, resolved_shadow = self._variants(variants), self._shadow(shadow)
        return self._change(name, lambda d: d.update(resolved, resolved_shadow, reason), ctx)

    def set_policy(self, name: str, policy: dict[str, Any] | None, reason: str | None = None,
                   ctx: CommandContext = ANONYMOUS):
        return self._change(name, lambda d: d.set_policy(policy, reason), ctx)

    def policy_action(self, name: str, action: str, variant: str, weight: int, based_on_revision: int, reason: str,
                      figures: dict[str, Any], ctx: CommandContext = ANONYMOUS):
        return self._change(name, lambda d: d.policy_action(action, variant, weight, based_on_revision, reason,
                                                            figures), ctx)

    def rollback(self, name: str, reason: str | None = None, ctx: CommandContext = ANONYMOUS):
        return self._change(name, lambda d: d.rollback(reason), ctx)

    def deactivate(self, name: str, reason: str | None = None, ctx: CommandContext = ANONYMOUS):
        return self._change(name, lambda d: d.deactivate(reason), ctx)

    # ---- API keys -------------------------------------------------------------------------------------
    def create_key(self, name: str, deployments: list[str] | str, rate_limit_per_s: float | None = None,
                   ctx: CommandContext = ANONYMOUS) -> tuple[str, ApiKey, int | None]:
        """(the key — shown once, never stored —, the aggregate, position)."""
        key = new_key()
        api_key = ApiKey.create(name=name, key_hash=hash_key(key), prefix=key_prefix(key), deployments=deployments,
                                rate_limit_per_s=rate_limit_per_s)
        return key, api_key, last_position(self.app.save_with(ctx, api_key))

    def revoke_key(self, key_id: UUID, reason: str | None = None, ctx: CommandContext = ANONYMOUS):
        def decide(k: Any) -> None:
            if not isinstance(k, ApiKey):
                raise ApiKeyNotFoundError(str(key_id))
            k.revoke(reason)
        return self.app.change(key_id, decide, ctx, ApiKeyNotFoundError)
