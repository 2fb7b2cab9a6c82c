"""The online A/B comparison's inputs: a deployment's automatic policy and the feedback (ground truth)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api.limits import SafeText
from domain.deployment_spec import POLICY_BOUNDS, POLICY_DEFAULTS, POLICY_RAMP_STEPS, POLICY_RAMP_WEIGHTS
from domain.vocabulary import AbMetric

RampWeight = Annotated[StrictInt, Field(ge=POLICY_RAMP_WEIGHTS[0], le=POLICY_RAMP_WEIGHTS[1])]


def _bounded(name: str) -> dict[str, Any]:
    """PolicyIn's default and bounds for `name`, from the domain's one table."""
    low, high = POLICY_BOUNDS[name]
    return {"default": POLICY_DEFAULTS[name], "ge": low, "le": high}


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)  # commands get the plain strings
    metric: AbMetric = POLICY_DEFAULTS["metric"]
    min_samples: StrictInt = Field(**_bounded("min_samples"),
                                   description="labelled predictions each side needs at the current step")
    min_lift: float = Field(**_bounded("min_lift"), allow_inf_nan=False,
                            description="the improvement (metric units) a promotion needs")
    max_p_value: float = Field(**_bounded("max_p_value"), allow_inf_nan=False,
                               description="the always-valid p-value a promotion or a 'worse' verdict needs")
    max_p99_latency_ms: float | None = Field(**_bounded("max_p99_latency_ms"), allow_inf_nan=False)
    max_error_rate: float | None = Field(**_bounded("max_error_rate"), allow_inf_nan=False)
    ramp: list[RampWeight] = Field(default_factory=lambda: list(POLICY_DEFAULTS["ramp"]),
                                   min_length=POLICY_RAMP_STEPS[0], max_length=POLICY_RAMP_STEPS[1],
                                   description="the challenger's weights, increasing, ending at "
                                               f"{POLICY_RAMP_WEIGHTS[1]}")
    step_every_s: StrictInt = Field(**_bounded("step_every_s"), description="at least this long at each step")


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
