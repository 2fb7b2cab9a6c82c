"""Request and response bodies of the REST API (`XxxIn` / `XxxPublic`)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

Framework = Literal["lightgbm", "pytorch"]
Task = Literal["binary_classification", "multiclass_classification", "regression"]
Priority = Literal["low", "medium", "high", "critical"]
Status = Literal["queued", "running", "completed", "failed", "cancelled"]


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: str = Field(min_length=1, max_length=4096,
                     description="builtin://breast_cancer | builtin://wine | builtin://diabetes | file:///abs/path.csv|.parquet")
    target: str | None = Field(default=None, min_length=1, max_length=256, description="target column; required for file://")


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    framework: Framework
    task: Task
    dataset: DatasetIn
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "medium"
    tags: list[str] = Field(default_factory=list, max_length=50)


class JobAccepted(BaseModel):
    job_id: UUID
    status: Status
    created_at: datetime


class ProgressPublic(BaseModel):
    current_step: int
    total_steps: int | None
    percentage_complete: float
    elapsed_s: float | None
    eta_s: float | None


class JobPublic(BaseModel):
    job_id: UUID
    name: str
    framework: Framework
    task: Task
    dataset: dict[str, Any]
    params: dict[str, Any]
    priority: Priority
    tags: list[str]
    status: Status
    progress: ProgressPublic
    attempt: int
    runner_id: str | None
    cancel_requested: bool
    final_metrics: dict[str, float]
    artifact: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    version: int


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class LatestValue(BaseModel):
    step: int
    value: float


class MetricNames(BaseModel):
    job_id: UUID
    names: list[str]
    latest: dict[str, LatestValue] = Field(description="each metric's last point (its latest attempt)")


class MetricPointPublic(BaseModel):
    step: int
    value: float
    ts: datetime


class MetricSeries(BaseModel):
    name: str
    attempt: int | None
    points: list[MetricPointPublic]


class FieldError(BaseModel):
    field: str
    reason: str


class ProblemPublic(BaseModel):
    """RFC 9457 problem details, served as application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str
    field: str | None = Field(default=None, description="the request field at fault, e.g. dataset.target")
    errors: list[FieldError] | None = None


def problems(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for these error statuses, each a problem+json body."""
    return {s: {"model": ProblemPublic, "content": {"application/problem+json": {}}} for s in statuses}
