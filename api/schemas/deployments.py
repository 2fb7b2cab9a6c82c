"""Deployments: variants and their traffic, shadow, revisions, prediction statistics."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api.limits import SafeText
from api.schemas.ab import PolicyIn
from api.schemas.common import keys_match
from api.schemas.models import AliasName, ModelName
from domain.deployment_spec import MAX_REASON, MAX_VARIANTS, NAME_PATTERN, VARIANT_NAME_PATTERN
from domain.vocabulary import RevisionChange

DeploymentName = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN,
                                      description="1 to 63 lowercase letters, digits or '-'")]


VariantName = Annotated[str, Field(min_length=1, max_length=32, pattern=VARIANT_NAME_PATTERN)]


Reason = Annotated[SafeText, Field(max_length=MAX_REASON, description="why (kept in the deployment's history)")]


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelName
    version: StrictInt | None = Field(default=None, ge=1, le=2**31 - 1)
    alias: AliasName | None = None


class VariantIn(ModelRef):
    name: VariantName
    weight: StrictInt = Field(ge=0, le=100, description="integer share of traffic; the weights sum to 100")


class PolicySetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: PolicyIn | None
    reason: Reason | None = None


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: DeploymentName
    variants: list[VariantIn] = Field(min_length=1, max_length=MAX_VARIANTS)
    shadow: ModelRef | None = Field(default=None, description="gets a copy of every request; never answers")
    reason: Reason | None = None
    policy: PolicyIn | None = Field(default=None, description="ramp the challenger, promote or roll it back "
                                                              "automatically on the online comparison")


class DeploymentUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variants: list[VariantIn] = Field(min_length=1, max_length=MAX_VARIANTS)
    shadow: ModelRef | None = None
    reason: Reason | None = None


class TrafficIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: dict[VariantName, StrictInt] = Field(min_length=1, max_length=MAX_VARIANTS,
                                                json_schema_extra=keys_match(VARIANT_NAME_PATTERN))
    reason: Reason | None = None


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: VariantName
    reason: Reason | None = None


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason | None = None


class VariantPublic(BaseModel):
    name: str
    model: str
    version: int
    alias: str | None = None
    weight: int
    artifact: dict[str, Any] = Field(description="the ONNX artifact it serves (uri, sha256, input name, features)")


class ShadowPublic(BaseModel):
    model: str
    version: int
    alias: str | None = None
    artifact: dict[str, Any]


class PolicyStep(BaseModel):
    variant: str = Field(description="a challenger")
    weight: int
    step: int = Field(description="ramp weights it has reached (0: none yet)")
    of: int = Field(description="weights in the ramp")
    ramp: list[int]
    halted: bool = Field(description="rolled back by the policy: it is not ramped again")


class PolicyEvaluation(BaseModel):
    at: datetime
    revision: int = Field(description="the revision it evaluated")
    decision: Literal["none", "step", "promote", "halt", "not_applied"] = Field(
        description="none: no action (`reason` says why); not_applied: another evaluation acted first")
    variant: str | None = Field(default=None, description="the challenger acted on")
    reason: str | None = Field(description="the action's reason, or why no action was taken")
    figures: dict[str, Any] = Field(description="what it saw: weights, seconds at the revision, per-variant "
                                                "statistics overall and at this revision, the comparison")


class PolicyState(BaseModel):
    steps: list[PolicyStep] = Field(description="each challenger's place on the ramp")
    last_evaluation: PolicyEvaluation | None = Field(
        description="the policy's latest evaluation (every policy_interval_s while the deployment is active; null "
                    "until the first)")


class DeploymentPublic(BaseModel):
    name: str
    revision: int
    active: bool
    variants: list[VariantPublic]
    shadow: ShadowPublic | None
    policy: dict[str, Any] | None = None
    policy_state: PolicyState | None = Field(default=None, description="with a policy: where each challenger "
                                                                      "stands and what the last evaluation decided")
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class DeploymentList(BaseModel):
    items: list[DeploymentPublic]


class RevisionPublic(BaseModel):
    revision: int
    change: RevisionChange
    reason: str | None
    figures: dict[str, Any] | None = Field(default=None, description="a policy action: what it was based on")
    variants: list[VariantPublic]
    shadow: ShadowPublic | None
    active: bool
    rolled_back_to: int | None
    actor: str | None
    at: datetime


class DeploymentHistory(BaseModel):
    name: str
    revisions: list[RevisionPublic] = Field(description="every revision, oldest first")


class PredictionSummary(BaseModel):
    revision: int
    variant: str
    model: str
    version: int
    shadow: bool
    requests: int
    errors: int
    p50_us: float
    p95_us: float
    p99_us: float


class PredictionStats(BaseModel):
    deployment: str
    items: list[PredictionSummary]
