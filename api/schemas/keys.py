"""Inference API keys."""
from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from api.limits import SafeText
from api.schemas.deployments import DeploymentName


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeText = Field(min_length=1, max_length=100)
    deployments: list[DeploymentName] | Literal["*"] = Field(
        description='the deployments it may call, or "*" for all', max_length=100)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=100_000, allow_inf_nan=False)


class ApiKeyPublic(BaseModel):
    id: UUID
    name: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    deployments: list[str]
    rate_limit_per_s: float | None
    revoked_at: datetime | None
    revoked_reason: str | None
    created_by: str | None
    created_at: datetime


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the key itself: shown this once, only its hash is kept")


class ApiKeyList(BaseModel):
    items: list[ApiKeyPublic]
