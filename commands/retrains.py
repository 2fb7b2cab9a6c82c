"""Retrain commands: a deployed variant's model trained again on new data (`plan`, then `request`), and each later
step of the retrain decided on its aggregate (`advance`, which serve's retrain driver calls:
commands/retrain_driver.py).

`plan` reads the variant's model lineage (framework, task, dataset, params; its job's validation) and says what the
retrain submits, so the API can check it exactly as a submit. `request` saves the job and the `Retrain` together.
`advance` moves one retrain one step: the job's outcome to the gate's verdict, a pass to a registered version (model
and retrain in one transaction), a registered version to its export, a completed export to a challenger variant.
Each step is guarded by the retrain's status and saved with the store's optimistic concurrency, so two drivers (or
one restarted) record each step once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.persistence import RecordConflictError

from commands.application import ANONYMOUS, last_position
from commands.context import CommandContext
from commands.deployments import DeploymentCommands, DeploymentNotFoundError
from commands.models import JobNotCompletedError, lineage_of
from commands.training import SubmitJob, TrainingApplication, job_id_for
from domain.deployment_spec import DeploymentError, DeploymentSpecError, control_name, shadow_json, variants_json
from domain.models import DEFAULT_TOLERANCE, ModelExport, RegisteredModel, model_id
from domain.retrain import Retrain, RetrainSpecError, RetrainStatus, retrain_validation
from domain.training_job import TrainingJob
from domain.vocabulary import JobStatus


class RetrainNotFoundError(LookupError):
    """No retrain has this id for this deployment in the caller's project; HTTP 404."""


@dataclass(frozen=True)
class RetrainPlan:
    """What a retrain submits (checked by the caller as any submit) and what it is measured against."""
    job: SubmitJob
    deployment: str
    variant: str
    model: str
    version: int
    champion: dict[str, Any]


class RetrainCommands:
    def __init__(self, app: TrainingApplication, deployments: DeploymentCommands) -> None:
        self.app, self.deployments = app, deployments

    def plan(self, deployment: str, *, project: str, variant: str | None = None, dataset: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None, validation: dict[str, Any] | None = None,
             priority: str = "medium") -> RetrainPlan:
        """The job that retrains `variant` (None: the control) of `deployment` from its version's lineage: `dataset`
        in place of its dataset, `params` merged over its params, `validation` (None: its job's when that held a test
        split, else a holdout with one). DeploymentNotFoundError; RetrainSpecError naming the field."""
        d = self.deployments.get(deployment, project=project)
        names = [v.name for v in d.variants]
        chosen = variant or control_name(names)
        served = next((v for v in d.variants if v.name == chosen), None)
        if served is None:
            raise RetrainSpecError("variant", f"deployment {deployment} has no variant {chosen!r}; it has "
                                              f"{', '.join(names)}")
        model: RegisteredModel = self.app.load(model_id(served.model, project), lambda _: DeploymentNotFoundError(
            deployment))
        lineage = model.versions[served.version]["lineage"]
        if lineage.framework == "python":
            raise RetrainSpecError("variant", "a code job's model is retrained by submitting its code again")
        original = self.app.get_job(UUID(lineage.job_id))
        job = SubmitJob(project=project, name=f"retrain {deployment}/{chosen}", framework=lineage.framework,
                        task=lineage.task, dataset=dict(dataset or lineage.dataset),
                        params={**lineage.params, **(params or {})}, priority=priority,
                        tags=["retrain", f"deployment:{deployment}"[:64]],
                        validation=validation or retrain_validation(original.validation),
                        resources=original.resources)
        champion = {**served.artifact, "model": served.model, "version": served.version}
        return RetrainPlan(job, deployment, chosen, served.model, served.version, champion)

    def request(self, plan: RetrainPlan, *, gate: dict[str, Any] | None = None, register_as: str | None = None,
                challenger: dict[str, Any] | None = None, idempotency_key: str | None = None,
                ctx: CommandContext = ANONYMOUS) -> tuple[Retrain, int | None]:
        """Submit the planned job with its champion and record the retrain, in one transaction (position None: an
        Idempotency-Key replay of an earlier request)."""
        job, retrain = self.build(plan, job_id_for(idempotency_key, plan.job.project), gate=gate,
                                  register_as=register_as, challenger=challenger)
        try:
            # the retrain last: its position is the one the retrains' read model (deployments) records
            return retrain, last_position(self.app.save_with(ctx, job, retrain))
        except RecordConflictError:  # the same key again: the retrain it made
            return self.get(plan.deployment, retrain.id, project=plan.job.project), None

    @staticmethod
    def build(plan: RetrainPlan, job_id: UUID, *, gate: dict[str, Any] | None, register_as: str | None,
              challenger: dict[str, Any] | None) -> tuple[TrainingJob, Retrain]:
        """The planned job (with its champion) and its retrain, unsaved."""
        cmd = replace(plan.job, champion=plan.champion)
        retrain = Retrain.request(job_id=job_id, project=cmd.project, deployment=plan.deployment, variant=plan.variant,
                                  model=plan.model, version=plan.version, gate=gate, register_as=register_as,
                                  challenger=challenger, champion=plan.champion)
        return TrainingJob.create(id=job_id, **cmd.fields()), retrain

    def scheduled(self, project: str, template: dict[str, Any], job_id: UUID) -> tuple[TrainingJob, Retrain]:
        """A schedule's retrain (its template: `deployment` and a retrain request's fields), planned against what
        the deployment serves now; unsaved (the scheduler saves it with the schedule's Fired)."""
        body = dict(template)
        plan = self.plan(body.pop("deployment"), project=project, variant=body.get("variant"),
                         dataset=body.get("dataset"), params=body.get("params"), validation=body.get("validation"),
                         priority=body.get("priority") or "medium")
        return self.build(plan, job_id, gate=body.get("gate"), register_as=body.get("register_as"),
                          challenger=body.get("challenger"))

    def get(self, deployment: str, retrain_id: UUID, *, project: str) -> Retrain:
        retrain = self.app.load(retrain_id, RetrainNotFoundError)
        if not isinstance(retrain, Retrain) or retrain.project != project or retrain.deployment != deployment:
            raise RetrainNotFoundError(str(retrain_id))
        return retrain

    # ---- the driver's steps -------------------------------------------------------------------------
    def advance(self, retrain_id: UUID, ctx: CommandContext = ANONYMOUS) -> bool:
        """One step of an open retrain, if its next step can be taken now; whether one was recorded."""
        retrain: Retrain = self.app.load(retrain_id, RetrainNotFoundError)
        if not retrain.is_open:
            return False
        step = {RetrainStatus.TRAINING: self._judge, RetrainStatus.PASSED: self._register,
                RetrainStatus.REGISTERED: self._export, RetrainStatus.EXPORTING: self._add_challenger}[retrain.status]
        changed = step(retrain)
        if not changed:
            return False
        try:
            self.app.save_with(ctx, retrain, *changed[1:])
        except RecordConflictError:  # another driver took this step (or changed its model or deployment) first
            return False
        return True

    def _judge(self, retrain: Retrain) -> list[Any]:
        job: TrainingJob = self.app.get_job(retrain.job_id)
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            retrain.job_failed(job.status, job.error)
            return [retrain]
        if job.status != JobStatus.COMPLETED:
            return []
        retrain.judge(job.final_metrics or {}, champion_problem(retrain.champion, job.artifact or {}))
        return [retrain]

    def _register(self, retrain: Retrain) -> list[Any]:
        if retrain.register_as is None:
            return []
        job: TrainingJob = self.app.get_job(retrain.job_id)
        if job.status != JobStatus.COMPLETED or not job.artifact:
            raise JobNotCompletedError(f"job {job.id} is {job.status}")
        try:
            model: RegisteredModel = self.app.load(model_id(retrain.register_as, retrain.project), LookupError)
        except LookupError:
            model = RegisteredModel.create(retrain.register_as, f"retrains of deployment {retrain.deployment}",
                                           project=retrain.project)
        retrain.version_registered(model.register_version(job.id, lineage_of(job)))
        return [retrain, model]

    def _export(self, retrain: Retrain) -> list[Any]:
        if retrain.challenger is None or retrain.register_as is None or retrain.registered_version is None:
            return []
        model: RegisteredModel = self.app.load(model_id(retrain.register_as, retrain.project), LookupError)
        lineage = model.versions[retrain.registered_version]["lineage"]
        source = {"framework": lineage.framework, "task": lineage.task, "dataset": lineage.dataset,
                  "artifact": lineage.artifact}
        export = ModelExport.request(id=uuid5(NAMESPACE_URL, f"trainyard:retrain-export:{retrain.id}"),
                                     model_name=model.name, model_version=retrain.registered_version, format="onnx",
                                     tolerance=DEFAULT_TOLERANCE, source=source, project=retrain.project)
        retrain.export_requested(export.id)
        return [retrain, export]

    def _add_challenger(self, retrain: Retrain) -> list[Any]:
        assert retrain.export_id is not None and retrain.challenger is not None
        export: ModelExport = self.app.load(retrain.export_id, LookupError)
        if export.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            retrain.challenger_failed(f"the export {export.status}: {export.error or 'no reason given'}")
            return [retrain]
        model: RegisteredModel = self.app.load(model_id(retrain.register_as or "", retrain.project), LookupError)
        if export.status != JobStatus.COMPLETED or not model.versions[retrain.registered_version].get("onnx"):
            return []
        d = self.deployments.get(retrain.deployment, project=retrain.project)
        weight = int(retrain.challenger["weight"])
        name = retrain.challenger.get("variant") or f"retrain-v{retrain.registered_version}"
        variants = variants_json(d.variants)
        donor = next((v for v in variants if v["name"] == retrain.variant), None)
        problem = (f"the deployment has a variant {name!r} already" if any(v["name"] == name for v in variants)
                   else f"variant {retrain.variant!r} is gone" if donor is None
                   else f"variant {retrain.variant!r} has {donor['weight']}% of the traffic, less than {weight}%"
                   if donor["weight"] < weight else None)
        if problem is not None or donor is None:
            retrain.challenger_failed(problem or "")
            return [retrain]
        donor["weight"] -= weight
        try:
            added = self.deployments.resolve({"name": name, "model": retrain.register_as,
                                              "version": retrain.registered_version, "weight": weight}, "challenger",
                                             retrain.project)
            d.update([*variants, added], shadow_json(d.shadow), f"retrain {retrain.id}: {retrain.reason}"[:500])
        except (DeploymentError, DeploymentSpecError) as e:  # deactivated since, a variant limit: said once
            retrain.challenger_failed(str(e)[:500])
            return [retrain]
        retrain.challenger_added(name, weight, d.revision)
        return [retrain, d]


def champion_problem(champion: dict[str, Any], artifact: dict[str, Any]) -> str | None:
    """Why the deployed version may have no figures on the job's test split, as far as the lineage can say."""
    theirs, ours = list(champion.get("feature_names") or []), list(artifact.get("feature_names") or [])
    if theirs != ours:
        return (f"the deployed version takes {len(theirs)} features, the new data has {len(ours)}"
                + ("" if set(theirs) != set(ours) else " (the same names in another order)"))
    return None
