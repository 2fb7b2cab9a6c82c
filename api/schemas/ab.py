"""The online A/B comparison's inputs: a deployment's automatic policy and the feedback (ground truth)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api.limits import SafeText

class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["accuracy", "logloss", "rmse", "mae"] = "accuracy"
    min_samples: StrictInt = Field(default=500, ge=10, le=10**8,
                                   description="labelled predictions each side needs at the current step")
    min_lift: float = Field(default=0.0, ge=0, le=1e6, allow_inf_nan=False,
                            description="the improvement (metric units) a promotion needs")
    max_p_value: float = Field(default=0.05, ge=1e-6, le=0.2, allow_inf_nan=False,
                               description="the always-valid p-value a promotion or a 'worse' verdict needs")
    max_p99_latency_ms: float | None = Field(default=None, gt=0, le=600_000, allow_inf_nan=False)
    max_error_rate: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    ramp: list[StrictInt] = Field(default_factory=lambda: [10, 25, 50, 100], min_length=1, max_length=20,
                                  description="the challenger's weights, increasing, ending at 100")
    step_every_s: StrictInt = Field(default=300, ge=1, le=7 * 86400,
                                    description="at least this long at each step")


class PolicySetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: PolicyIn | None
    reason: Reason | None = None


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
                            description="the `request_id` a prediction answered with")
    label: SafeText | None = Field(default=None, min_length=1, max_length=200,
                                   description="classification: the true class, as predictions return it")
    value: float | None = Field(default=None, allow_inf_nan=False, description="regression: the true value")


class FeedbackAccepted(BaseModel):
    received: int
    known: int = Field(description="items whose prediction is already in ClickHouse")
    unknown: int = Field(description="items whose request id this deployment has not answered (yet): they are kept "
                                     "and count once their prediction lands")
    unknown_request_ids: list[str] = Field(description="the first 100 unknown ones")
