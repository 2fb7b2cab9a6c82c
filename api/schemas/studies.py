"""Hyperparameter studies and their trials."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api.limits import SafeText
from api.schemas.common import FREE_JSON, MAX_TAGS, MAX_TIMEOUT_S, NO_CONTROL, Tag
from api.schemas.datasets import DatasetIn
from api.schemas.jobs import CODE_RESOURCES, CodeIn, ResourcesIn, ValidationIn
from domain.frameworks import MAX_PARAMS
from domain.search_space import (MAX_PARALLEL, MAX_SPACE_PARAMS, MAX_TRIALS, PRUNER_OPTIONS, PRUNERS,
                                 SAMPLERS)
from domain.vocabulary import (HIGHER_IS_BETTER, TASK_METRICS, Direction, Framework, Priority, StudyStatus, Task,
                               TrialState)


class ObjectiveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)  # commands get the plain strings
    metric: SafeText = Field(min_length=1, max_length=64,
                             description="a final metric of the task: " + "; ".join(
                                 f"{task} {', '.join(metrics)}" for task, metrics in TASK_METRICS.items())
                             + "; for framework python, any metric the script finishes with (run.finish)")
    direction: Direction | None = Field(
        default=None, description="the metric's own, which is the default: maximize for "
                                  + ", ".join(m for m, higher in HIGHER_IS_BETTER.items() if higher)
                                  + "; minimize otherwise")


class StudyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)  # commands get the plain strings
    name: SafeText = Field(min_length=1, max_length=200, description=f"1 to 200 characters, {NO_CONTROL}")
    framework: Framework
    task: Task
    dataset: DatasetIn
    objective: ObjectiveIn
    search_space: dict[str, Any] = Field(json_schema_extra={"minProperties": 1, "maxProperties": MAX_SPACE_PARAMS},
                                         description='{"<param>": {"type": "float", "low", "high", "log"?, '
                                         '"step"?} | {"type": "int", "low", "high", "step"?, "log"?} | '
                                         '{"type": "categorical", "choices": [...]}}, names and bounds from the '
                                         f'framework\'s params (see a job\'s); at most {MAX_SPACE_PARAMS} params; '
                                         + FREE_JSON)
    fixed_params: dict[str, Any] = Field(default_factory=dict, json_schema_extra={"maxProperties": MAX_PARAMS},
                                         description="merged into every trial's params; "
                                         + FREE_JSON)
    sampler: dict[str, Any] = Field(default_factory=lambda: {"type": "tpe"},
                                    description=f'{{"type": {"|".join(SAMPLERS)}, "seed"?: int}}')
    pruner: dict[str, Any] = Field(default_factory=lambda: {"type": "none"},
                                   json_schema_extra={"maxProperties": 1 + max(map(len, PRUNER_OPTIONS.values()))},
                                   description=f'{{"type": {"|".join(PRUNERS)}, ...its options}}: '
                                               + "; ".join(f"{kind} {', '.join(options) or 'no options'}"
                                                           for kind, options in PRUNER_OPTIONS.items()))
    n_trials: StrictInt = Field(ge=1, le=MAX_TRIALS, description=f"1 to {MAX_TRIALS:,}")
    max_parallel: StrictInt = Field(default=2, ge=1, le=MAX_PARALLEL,
                                    description=f"trials running at once, 1 to {MAX_PARALLEL}")
    timeout_s: StrictInt | None = Field(default=None, ge=1, le=MAX_TIMEOUT_S,
                                        description="no new trials after this many seconds (each trial's own "
                                                    "job timeout too)")
    priority: Priority = Priority.MEDIUM.value
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description=f"at most {MAX_TAGS} tags")
    code: CodeIn | None = Field(default=None, description="framework python only (required): the bundle and "
                                "entrypoint every trial runs; the trial's params are fixed_params with its sampled "
                                "values, and its script's run.report(value, step) is the objective pruners see")
    resources: ResourcesIn | None = Field(default=None, description="framework python only: each trial's, default "
                                                                    f"{CODE_RESOURCES}")
    validation: ValidationIn | None = Field(default=None, description="built-in frameworks: how every trial splits "
                                            "its rows (kfold: the objective is the folds' mean); default a "
                                            "stratified 80/20 holdout")


class StudyAccepted(BaseModel):
    study_id: UUID
    status: StudyStatus
    created_at: datetime


class BestTrial(BaseModel):
    number: int
    params: dict[str, Any]
    value: float
    job_id: UUID


class StudyPublic(BaseModel):
    study_id: UUID
    name: str
    framework: Framework
    task: Task
    dataset: dict[str, Any]
    objective: dict[str, Any]
    search_space: dict[str, Any]
    fixed_params: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    n_trials: int
    max_parallel: int
    timeout_s: int | None
    priority: Priority
    tags: list[str]
    status: StudyStatus
    reason: str | None = Field(default=None, description="why it ended (or is being cancelled)")
    counts: dict[str, int] = Field(description="trials per state: queued, running, completed, pruned, failed")
    best_trial: BestTrial | None
    created_by: str | None = None
    created_at: datetime
    finished_at: datetime | None


class StudyList(BaseModel):
    items: list[StudyPublic]
    total: int
    limit: int
    offset: int


class TrialPublic(BaseModel):
    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None
    job_id: UUID
    asked_at: datetime | None = None
    started_at: datetime | None
    finished_at: datetime | None
    pruned_at_step: int | None


class TrialList(BaseModel):
    items: list[TrialPublic]
    total: int
    limit: int
    offset: int


class HistoryPoint(BaseModel):
    number: int
    value: float
    best_so_far: float


class StudyHistory(BaseModel):
    study_id: UUID
    direction: Direction
    points: list[HistoryPoint]


class Importances(BaseModel):
    study_id: UUID
    completed_trials: int
    importances: dict[str, float] = Field(description="Optuna's parameter importances (fANOVA), summing to 1; "
                                                      "empty with fewer than 2 completed trials")
