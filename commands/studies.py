"""Study commands: one method per command on the one Trainyard application (one event store, one log).

A study's trials are ordinary training jobs (design decision 5) whose ids derive from a deterministic
Idempotency-Key (`study:<id>:trial:<n>`), so the trial's job id is known before the job exists. The driver records
the ask on the `Study` and saves the trial's new job (`trial_job`) in the same transaction: a crash leaves both or
neither, never a job without a trial or two trials with one number. (Studies driven by an older version recorded
the ask first and submitted the job second; a recorded trial without its job is still submitted on the next sync,
`submit_trial`.)
"""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.persistence import RecordConflictError

from commands.context import CommandContext
from commands.application import ANONYMOUS
from commands.training import IdempotencyConflictError, SubmitJob, TrainingApplication, job_id_for
from domain.contract import scoped
from domain.search_space import step_metric_for
from domain.study import Study
from domain.training_job import TrainingJob

_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "https://trainyard.dev/idempotency/study")


class StudyNotFoundError(LookupError):
    """No study has this id (in the caller's project: another project's study is just as missing); maps to HTTP
    404."""


@dataclass(frozen=True)
class CreateStudy:
    project: str = field(kw_only=True)  # the study's project; its trials' jobs belong to it too
    name: str
    framework: str
    task: str
    dataset: dict[str, Any]
    objective: dict[str, Any]
    search_space: dict[str, Any]
    fixed_params: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    n_trials: int = 20
    max_parallel: int = 2
    timeout_s: int | None = None
    priority: str = "medium"
    tags: list[str] = field(default_factory=list)
    code: dict[str, Any] | None = None  # a code study's bundle and entrypoint (api/code_jobs.py), run by every trial
    resources: dict[str, Any] | None = None  # a code study's per-trial cpus, memory_mb, gpus
    validation: dict[str, Any] | None = None  # how every trial splits its rows (domain/validation.py)


@dataclass(frozen=True)
class StudyCreated:
    study_id: UUID
    status: str
    created_at: datetime
    created: bool  # False when an Idempotency-Key replay returned the existing study
    position: int | None = None


def study_id_for(idempotency_key: str | None, project: str) -> UUID:
    """The id of the study created with `idempotency_key` in `project` (each project has its own keys: `scoped`; in
    the default project, the id it had before projects); a new one without a key."""
    return uuid5(_IDEMPOTENCY_NAMESPACE, scoped(project, idempotency_key)) if idempotency_key else uuid4()


def new_study(cmd: CreateStudy, study_id: UUID) -> Study:
    """The study `cmd` creates, new and unsaved (a scheduled study is saved with its schedule's fire)."""
    fields = asdict(cmd)
    if fields["sampler"].get("seed") is None:  # recorded, so a rebuilt sampler proposes the same trials
        fields["sampler"] = {**fields["sampler"], "seed": secrets.randbelow(2**31)}
    return Study.create(id=study_id, **fields)


def trial_key(study_id: UUID, number: int) -> str:
    return f"study:{study_id}:trial:{number}"


def trial_job_id(study_id: UUID, number: int, *, project: str) -> UUID:
    """The job id of trial `number` of the study in `project`: known before the job is submitted."""
    return job_id_for(trial_key(study_id, number), project)


def check_project(study: Study, project: str) -> None:
    """StudyNotFoundError, exactly as for a missing id, for a study of another project (no existence leak)."""
    if study.project != project:
        raise StudyNotFoundError(str(study.id))


class StudyCommands:
    def __init__(self, app: TrainingApplication) -> None:
        self.app = app

    def create(self, cmd: CreateStudy, idempotency_key: str | None = None,
               ctx: CommandContext = ANONYMOUS) -> StudyCreated:
        study_id = study_id_for(idempotency_key, cmd.project)
        if idempotency_key:
            try:
                return self._replayed(self.get(study_id), cmd)
            except StudyNotFoundError:
                pass
        study = new_study(cmd, study_id)
        try:
            recordings = self.app.save_with(ctx, study)
        except RecordConflictError:
            return self._replayed(self.get(study_id), cmd)
        return StudyCreated(study.id, study.status, study.created_on, True, recordings[-1].notification.id)

    @staticmethod
    def _replayed(study: Study, cmd: CreateStudy) -> StudyCreated:
        mine = {k: v for k, v in asdict(cmd).items() if k != "sampler"}
        theirs = {k: getattr(study, k) for k in mine}
        sampler = {k: v for k, v in study.sampler.items() if k != "seed" or cmd.sampler.get("seed") is not None}
        if mine != theirs or sampler != cmd.sampler:
            raise IdempotencyConflictError("this Idempotency-Key was used for a different study")
        return StudyCreated(study.id, study.status, study.created_on, False)

    def get(self, study_id: UUID, copy: bool = True) -> Study:
        """For command paths (the driver) and audit only: queries read the projections. `copy=False`: a shared
        object that the caller must not change (TrainyardApplication.load)."""
        return self.app.load(study_id, StudyNotFoundError, copy)

    def _change(self, study_id: UUID, decide: Any, ctx: CommandContext) -> tuple[Study, int | None]:
        return self.app.change(study_id, decide, ctx, StudyNotFoundError)

    def submit_trial(self, study: Study, number: int, ctx: CommandContext) -> UUID:
        """Submit trial `number`'s training job (idempotent: the same trial always gives the same job). For a
        trial recorded without its job (a study driven by an older version, which saved the two apart)."""
        try:
            return self.app.submit_job(self._trial_command(study, number), trial_key(study.id, number), ctx).job_id
        except IdempotencyConflictError:  # already submitted (an older driver's body): the same job stands
            return trial_job_id(study.id, number, project=study.project)

    @classmethod
    def trial_job(cls, study: Study, number: int) -> TrainingJob:
        """Trial `number`'s job, new and unsaved: the driver saves it with the ask (commands/study_driver.py)."""
        return TrainingJob.create(id=trial_job_id(study.id, number, project=study.project),
                                  **cls._trial_command(study, number).fields())

    @staticmethod
    def _trial_command(study: Study, number: int) -> SubmitJob:
        trial = study.trial(number)
        pruned = study.pruner.get("type", "none") != "none"
        # A code trial's intermediate objective is what its script reports (`run.report`), no metric of ours.
        report_metric = step_metric_for(study.task, study.objective["metric"]) if pruned and not study.code else None
        return SubmitJob(project=study.project, name=f"{study.name}#{number}"[:200], framework=study.framework,
                         task=study.task, dataset=study.dataset, params={**study.fixed_params, **trial.params},
                         priority=study.priority, tags=list(study.tags),
                         timeout_s=study.timeout_s or SubmitJob.timeout_s, study_id=study.id, trial_number=number,
                         report_metric=report_metric, code=study.code, resources=study.resources,
                         validation=study.validation)

    def prune_trial(self, study_id: UUID, number: int, step: int, value: float | None, ctx: CommandContext) -> Study:
        return self._change(study_id, lambda s: s.prune_trial(number, step, value), ctx)[0]

    def request_cancel(self, study_id: UUID, *, project: str,
                       ctx: CommandContext = ANONYMOUS) -> tuple[Study, int | None]:
        """A study of another project is not found."""
        def decide(study: Study) -> None:
            check_project(study, project)
            study.request_cancel()
        return self._change(study_id, decide, ctx)
