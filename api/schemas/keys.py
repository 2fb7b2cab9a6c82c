"""Inference API keys."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from api.limits import SafeText
from api.schemas.deployments import DeploymentName
from domain.api_key import MAX_DEPLOYMENTS, MAX_NAME, MAX_RATE_LIMIT


def _list_of_1_to_max(schema: dict[str, Any]) -> None:
    """The list branch holds 1 to MAX_DEPLOYMENTS names (pydantic puts a union's max_length beside the anyOf)."""
    for branch in schema.get("anyOf", ()):
        if branch.get("type") == "array":
            branch.update(minItems=1, maxItems=MAX_DEPLOYMENTS)


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeText = Field(min_length=1, max_length=MAX_NAME)
    deployments: list[DeploymentName] | Literal["*"] = Field(
        description='the deployments it may call, or "*" for all', max_length=MAX_DEPLOYMENTS,
        json_schema_extra=_list_of_1_to_max)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=MAX_RATE_LIMIT, allow_inf_nan=False)


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
