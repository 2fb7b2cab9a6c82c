"""Retrains: a deployed variant's model trained again on new data, judged by a gate against the deployed version."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from api.schemas.datasets import DatasetIn
from api.schemas.deployments import DeploymentName
from api.schemas.jobs import ValidationIn
from api.schemas.models import ModelName
from domain.deployment_spec import VARIANT_NAME_PATTERN
from domain.frameworks import MAX_PARAMS
from domain.retrain import RetrainStatus
from domain.vocabulary import HIGHER_IS_BETTER, Priority


class GateIn(BaseModel):
    """MLflow's MetricThreshold, on the test split: the candidate against a threshold and against the deployed
    version scored on the same rows."""
    model_config = ConfigDict(extra="forbid")
    metric: str = Field(json_schema_extra={"enum": list(HIGHER_IS_BETTER)},
                        description="a final metric of the task (its test_<metric> is judged); the direction is the "
                                    "metric's: auc, accuracy, f1_macro, r2 higher, the losses and errors lower")
    min_value: StrictFloat | StrictInt | None = Field(default=None, description="the value the new model must reach "
                                                      "on the test split: at least it (higher is better) or at most "
                                                      "it (lower is better)")
    max_regression: StrictFloat | StrictInt | None = Field(default=None, ge=0, description="how much worse than the "
                                                           "deployed version on the same test rows it may be (0: at "
                                                           "least as good); a deployed version that cannot be scored "
                                                           "on them (other features) fails it")


class ChallengerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: StrictInt = Field(ge=1, le=100, description="percent of the traffic, taken from the retrained variant's")
    variant: str | None = Field(default=None, pattern=VARIANT_NAME_PATTERN,
                                description="the new variant's name (default retrain-v<version>)")


class RetrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    variant: str | None = Field(default=None, pattern=VARIANT_NAME_PATTERN,
                                description="the variant whose model version is retrained (default: the control)")
    dataset: DatasetIn | None = Field(default=None, description="the new data (default: the version's own dataset)")
    params: dict[str, Any] = Field(default_factory=dict, json_schema_extra={"maxProperties": MAX_PARAMS},
                                   description="merged over the version's params, then checked as a submit's")
    validation: ValidationIn | None = Field(default=None, description="default: the version's job's when it held out "
                                            "a test split, else a holdout with test_fraction 0.2; the gate judges "
                                            "the test split")
    priority: Priority = Priority.MEDIUM.value
    gate: GateIn | None = Field(default=None, description="no gate: any completed job passes")
    register_as: ModelName | None = Field(default=None, description="register a passing job's model as this model's "
                                          "next version (the model is created if needed)")
    challenger: ChallengerIn | None = Field(default=None, description="with register_as: export the new version and "
                                            "add it to the deployment at this weight (an A/B policy then ramps it)")


class ScheduledRetrainIn(RetrainIn):
    """A schedule's retrain: the deployment and what POST …/{deployment}/retrain takes; each run retrains what the
    deployment serves then."""
    deployment: DeploymentName


class RetrainPublic(BaseModel):
    id: UUID
    deployment: str
    variant: str
    model: str
    model_version: int = Field(description="the deployed version retrained, and scored as the champion")
    job_id: UUID
    gate: dict[str, Any] | None
    register_as: str | None
    challenger: dict[str, Any] | None
    status: RetrainStatus
    reason: str | None = Field(description="the gate's verdict with its figures (or why the job failed)")
    figures: dict[str, Any] | None
    registered_version: int | None
    export_id: UUID | None
    challenger_variant: str | None
    error: str | None = Field(description="why a passing version did not become a challenger")
    created_by: str
    created_at: datetime
    updated_at: datetime


class RetrainList(BaseModel):
    items: list[RetrainPublic]
    total: int
    limit: int
    offset: int
