"""Model registry commands: models, versions (from completed jobs), aliases and ONNX exports.

Every model and export belongs to one project: each command takes the request's `project`, and another project's
model, export or job is not found, exactly as a missing one (no existence leak). A version's lineage is read from
its job's aggregate at registration and frozen into the `VersionRegistered` event.
An export is leased work (domain/work.py): the relay queues it, a runner claims, converts and checks it, and its
completion attaches the ONNX artifact to the model version in the same transaction (`ModelCommands.attach_onnx`, registered for the export work kind).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import RecordConflictError

from commands.context import CommandContext
from commands.application import ANONYMOUS, last_position
from commands.training import JobNotFoundError, TrainingApplication
from domain.contract import DEFAULT_PROJECT
from domain.models import (DEFAULT_TOLERANCE, Lineage, ModelError, ModelExport, ModelSpecError, RegisteredModel,
                           check_model_name, model_id)
from domain.training_job import TrainingJob


class ModelNotFoundError(LookupError):
    """No model has this name in the caller's project (its one argument); HTTP 404."""


def missing_model(name: str) -> Callable[[str], ModelNotFoundError]:
    """The error for `app.load`: the model's id is derived from its name, and the user knows only the name."""
    return lambda _id: ModelNotFoundError(name)


class ExportNotFoundError(LookupError):
    """No export has this id in the caller's project; HTTP 404."""


class ModelExistsError(ModelError):
    """A model of this name exists; HTTP 409."""


class JobNotCompletedError(ModelError):
    """Only a completed job's artifact can become a version; HTTP 409."""


# feature_recipe: the raw input columns and their encoding (domain/features.py), served with the version; a version
# registered before recipes were recorded has None there and is served its encoded features only.
LINEAGE_ARTIFACT_KEYS = ("uri", "sha256", "size_bytes", "format", "feature_recipe")
# A code job's model also records the code that made it: the bundle's sha256 and the entrypoint (its params and
# dataset digest are recorded as any job's).
CODE_ARTIFACT_KEYS = ("code_sha256", "entrypoint")


def lineage_of(job: TrainingJob) -> Lineage:
    """What a version records of the job that made it."""
    artifact = job.artifact or {}
    return Lineage(
        job_id=str(job.id), framework=job.framework, task=job.task, dataset=job.dataset,
        dataset_sha256=artifact.get("dataset_sha256"), params=job.params, final_metrics=job.final_metrics,
        artifact={**{k: artifact.get(k) for k in LINEAGE_ARTIFACT_KEYS},
                  **{k: artifact[k] for k in CODE_ARTIFACT_KEYS if k in artifact}},
        feature_names=artifact.get("feature_names"), class_labels=artifact.get("class_labels"),
        study_id=str(job.study_id) if job.study_id else None,
    )


class ModelCommands:
    def __init__(self, app: TrainingApplication) -> None:
        self.app = app
        app.on_completion(ModelExport.work_kind, self.attach_onnx)

    def attach_onnx(self, work: Any) -> list[Aggregate]:
        """What else changes when an export completes: its ONNX artifact and parity report go to its model
        version (a repeat of the completion changes nothing)."""
        if not isinstance(work, ModelExport) or work.status != "completed" or not work.pending_events:
            return []
        model: RegisteredModel = self.app.load(model_id(work.model_name, work.project),
                                               missing_model(work.model_name))
        parity = {**work.final_metrics, "metric": (work.artifact or {}).get("parity_metric"), "passed": True}
        model.attach_onnx(work.model_version, work.id, dict(work.artifact or {}), parity)
        return [model]

    def get(self, name: str, *, project: str) -> RegisteredModel:
        model: RegisteredModel = self.app.load(model_id(check_model_name(name), project), missing_model(name))
        if model.project != project:  # ids are per project; this only keeps the rule where it is read
            raise ModelNotFoundError(name)
        return model

    def _change(self, name: str, project: str, decide: Callable[[RegisteredModel], Any], ctx: CommandContext):
        def checked(model: RegisteredModel) -> Any:
            if model.project != project:
                raise ModelNotFoundError(name)
            return decide(model)
        return self.app.change(model_id(check_model_name(name), project), checked, ctx, missing_model(name))

    def create(self, name: str, description: str = "", tags: list[str] | None = None,
               ctx: CommandContext = ANONYMOUS, *, project: str) -> tuple[RegisteredModel, int | None]:
        model = RegisteredModel.create(name, description, tags, project=project)
        try:
            return model, last_position(self.app.save_with(ctx, model))
        except RecordConflictError:
            raise ModelExistsError(f"a model named {name!r} exists") from None

    def register_version(self, name: str, job_id: UUID, ctx: CommandContext = ANONYMOUS, *,
                         project: str) -> tuple[RegisteredModel, int, int | None]:
        """Register a completed job's artifact as `name`'s next version: (model, version number, position). A job
        of another project is not found (JobNotFoundError, as for a missing id): its artifact never crosses over."""
        job = self.app.get_job(job_id)
        if not isinstance(job, TrainingJob) or getattr(job, "project", DEFAULT_PROJECT) != project:
            raise JobNotFoundError(str(job_id))
        if job.status != "completed" or not job.artifact:
            raise JobNotCompletedError(f"job {job_id} is {job.status}; only a completed job can be registered")
        lineage = lineage_of(job)
        number: list[int] = []
        model, position = self._change(name, project, lambda m: number.append(m.register_version(job.id, lineage)),
                                       ctx)
        return model, number[-1], position

    def set_alias(self, name: str, alias: str, version: int, ctx: CommandContext = ANONYMOUS, *, project: str):
        return self._change(name, project, lambda m: m.set_alias(alias, version), ctx)

    def remove_alias(self, name: str, alias: str, ctx: CommandContext = ANONYMOUS, *, project: str):
        return self._change(name, project, lambda m: m.remove_alias(alias), ctx)

    def request_export(self, name: str, version: int, format: str = "onnx", tolerance: float = DEFAULT_TOLERANCE,
                       ctx: CommandContext = ANONYMOUS, *, project: str) -> tuple[ModelExport, int | None]:
        model = self.get(name, project=project)
        number = model.number_of(version)
        lineage = model.versions[number]["lineage"]
        source = {"framework": lineage.framework, "task": lineage.task, "dataset": lineage.dataset,
                  "artifact": lineage.artifact}
        export = ModelExport.request(id=uuid4(), model_name=model.name, model_version=number, format=format,
                                     tolerance=tolerance, source=source, project=model.project)
        return export, last_position(self.app.save_with(ctx, export))

    def get_export(self, export_id: UUID, *, project: str) -> ModelExport:
        export = self.app.load(export_id, ExportNotFoundError)
        if not isinstance(export, ModelExport) or export.project != project:
            raise ExportNotFoundError(str(export_id))
        return export
