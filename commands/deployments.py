"""Deployment and API-key commands.

A variant names a model version (a number or an alias, resolved now: the revision records the number). Only a
version whose ONNX export completed can serve; its ONNX artifact (uri, sha256, input/output names, feature names,
class labels) goes into the revision itself, so the inference server needs nothing but the deployment's events (or
the read model built from them) to serve it.

Projects: a deployment and an API key belong to one project, every command takes the request's `project`, and
another project's deployment or key is not found, exactly as a missing one. A variant may only name a model of the
deployment's project (another project's model is as unknown as a missing one).

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
    def resolve(self, spec: dict[str, Any], field: str, project: str) -> dict[str, Any]:
        """{"model", "version" | "alias", …} → the same with the version number and the ONNX artifact it serves
        (`project`'s model of that name only)."""
        try:
            name = check_model_name(spec.get("model"), f"{field}.model")
        except ValueError as e:
            raise DeploymentSpecError(f"{field}.model", str(e)) from None
        try:
            model: RegisteredModel = self.app.load(model_id(name, project), ModelNotFoundError)
            if model.project != project:
                raise ModelNotFoundError(name)
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

    def _variants(self, variants: list[dict[str, Any]], project: str) -> list[dict[str, Any]]:
        return [self.resolve(v, f"variants[{i}]", project) for i, v in enumerate(variants)]

    def _shadow(self, shadow: dict[str, Any] | None, project: str) -> dict[str, Any] | None:
        return None if shadow is None else self.resolve(shadow, "shadow", project)

    # ---- deployments ----------------------------------------------------------------------------------
    def get(self, name: str, *, project: str) -> Deployment:
        deployment: Deployment = self.app.load(deployment_id(check_name(name), project),
                                               lambda _id: DeploymentNotFoundError(name))
        if deployment.project != project:
            raise DeploymentNotFoundError(name)
        return deployment

    def create(self, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None, ctx: CommandContext = ANONYMOUS,
               policy: dict[str, Any] | None = None, *, project: str) -> tuple[Deployment, int | None]:
        deployment = Deployment.create(check_name(name), self._variants(variants, project),
                                       self._shadow(shadow, project), reason, policy, project=project)
        try:
            return deployment, last_position(self.app.save_with(ctx, deployment))
        except RecordConflictError:
            raise DeploymentExistsError(f"a deployment named {name!r} exists") from None

    def _change(self, name: str, project: str, decide: Any, ctx: CommandContext) -> tuple[Deployment, int | None]:
        # the id is derived from the name: the error says the name the user gave
        def checked(d: Deployment) -> Any:
            if d.project != project:
                raise DeploymentNotFoundError(name)
            return decide(d)
        return self.app.change(deployment_id(check_name(name), project), checked, ctx,
                               lambda _id: DeploymentNotFoundError(name))

    def change_traffic(self, name: str, weights: dict[str, int], reason: str | None = None,
                       ctx: CommandContext = ANONYMOUS, *, project: str) -> tuple[Deployment, int | None]:
        return self._change(name, project, lambda d: d.change_traffic(weights, reason), ctx)

    def promote(self, name: str, variant: str, reason: str | None = None, ctx: CommandContext = ANONYMOUS, *,
                project: str):
        return self._change(name, project, lambda d: d.promote(variant, reason), ctx)

    def update(self, name: str, variants: list[dict[str, Any]], shadow: dict[str, Any] | None = None,
               reason: str | None = None, ctx: CommandContext = ANONYMOUS, *, project: str):
        self.get(name, project=project)  # another project's deployment is missing, before its variants are judged
        resolved, resolved_shadow = self._variants(variants, project), self._shadow(shadow, project)
        return self._change(name, project, lambda d: d.update(resolved, resolved_shadow, reason), ctx)

    def set_policy(self, name: str, policy: dict[str, Any] | None, reason: str | None = None,
                   ctx: CommandContext = ANONYMOUS, *, project: str):
        return self._change(name, project, lambda d: d.set_policy(policy, reason), ctx)

    def policy_action(self, name: str, action: str, variant: str, weight: int, based_on_revision: int, reason: str,
                      figures: dict[str, Any], ctx: CommandContext = ANONYMOUS, *, project: str):
        return self._change(name, project, lambda d: d.policy_action(action, variant, weight, based_on_revision,
                                                                     reason, figures), ctx)

    def rollback(self, name: str, reason: str | None = None, ctx: CommandContext = ANONYMOUS, *, project: str):
        return self._change(name, project, lambda d: d.rollback(reason), ctx)

    def deactivate(self, name: str, reason: str | None = None, ctx: CommandContext = ANONYMOUS, *, project: str):
        return self._change(name, project, lambda d: d.deactivate(reason), ctx)

    # ---- API keys -------------------------------------------------------------------------------------
    def create_key(self, name: str, deployments: list[str] | str, rate_limit_per_s: float | None = None,
                   ctx: CommandContext = ANONYMOUS, *, project: str) -> tuple[str, ApiKey, int | None]:
        """(the key — shown once, never stored —, the aggregate, position). The key reaches `project`'s
        deployments only."""
        key = new_key()
        api_key = ApiKey.create(name=name, key_hash=hash_key(key), prefix=key_prefix(key), deployments=deployments,
                                rate_limit_per_s=rate_limit_per_s, project=project)
        return key, api_key, last_position(self.app.save_with(ctx, api_key))

    def revoke_key(self, key_id: UUID, reason: str | None = None, ctx: CommandContext = ANONYMOUS, *, project: str):
        def decide(k: Any) -> None:
            if not isinstance(k, ApiKey) or k.project != project:
                raise ApiKeyNotFoundError(str(key_id))
            k.revoke(reason)
        return self.app.change(key_id, decide, ctx, ApiKeyNotFoundError)
