"""Users, service accounts, projects and members, API tokens, login."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from api.limits import SafeText
from commands.credentials import MAX_PASSWORD, MIN_PASSWORD
from domain.identity import MAX_REASON, MAX_TOKEN_NAME, NAME_PATTERN
from domain.quotas import MAX_QUOTA, QUOTAS

Name = Field(pattern=NAME_PATTERN, max_length=63)
Reason = Field(default=None, max_length=MAX_REASON)
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
RoleName = Literal["viewer", "engineer", "deployer", "admin"]


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, pattern=NO_CONTROL,
                          description="12 or more characters, not one of the commonest passwords")
    owner: bool = Field(default=False, description="the global owner role: manages users and projects")


class ServiceAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    description: SafeText = Field(default="", max_length=MAX_REASON)


class PrincipalPublic(BaseModel):
    name: str
    kind: Literal["user", "service_account"]
    owner: bool
    disabled: bool
    projects: dict[str, RoleName] = Field(description="project name → role")
    created_at: datetime | None = None


class PrincipalList(BaseModel):
    items: list[PrincipalPublic]
    total: int


class Me(PrincipalPublic):
    project: str = Field(description="the project this request acted in (header, query, or the default)")
    scopes: list[str] | None = Field(description="the token's scopes; null for a login")


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, pattern=NO_CONTROL,
                          description="12 or more characters, not one of the commonest passwords")


class DisableIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: SafeText | None = Reason


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Name
    description: SafeText = Field(default="", max_length=MAX_REASON)


class ProjectPublic(BaseModel):
    name: str
    description: str | None
    quotas: dict[str, float]
    created_by: str | None
    created_at: datetime
    role: RoleName | None = Field(default=None, description="the caller's role here (owners: null unless member)")


class ProjectList(BaseModel):
    items: list[ProjectPublic]
    total: int


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: RoleName
    reason: SafeText | None = Reason


class MemberPublic(BaseModel):
    principal: str
    role: RoleName
    set_by: str | None
    set_at: datetime


class MemberList(BaseModel):
    items: list[MemberPublic]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeText = Field(min_length=1, max_length=MAX_TOKEN_NAME)
    scopes: list[str] = Field(default=["*"], min_length=1, max_length=50,
                              description="action patterns: '*', '*.read', 'job.*', 'deployment.write', …")
    expires_in_days: float | None = Field(default=90, ge=1 / 1440, le=366, allow_inf_nan=False,
                                          description="null: never expires")
    principal: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63,
                                  description="a service account's name (owners only); default: yourself")


class TokenPublic(BaseModel):
    id: UUID
    principal: str
    name: str
    prefix: str = Field(description="the token's first characters, to recognise it")
    scopes: list[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None = None
    created_by: str | None
    created_at: datetime


class TokenCreated(TokenPublic):
    token: str = Field(description="the token itself: shown this once, stored only as a hash")


class TokenList(BaseModel):
    items: list[TokenPublic]


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: SafeText | None = Reason


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds the access token lives")
    refresh_token: str


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=200)


def _limit(name: str) -> Any:
    return Field(default=None, ge=0, le=MAX_QUOTA, allow_inf_nan=False, description=f"{QUOTAS[name]}; null: unlimited")


class QuotaLimits(BaseModel):
    """One limit per quota; left out or null: unlimited."""
    model_config = ConfigDict(extra="forbid")
    max_running_jobs: float | None = _limit("max_running_jobs")
    max_queued_jobs: float | None = _limit("max_queued_jobs")
    cpu_hours_per_month: float | None = _limit("cpu_hours_per_month")
    gpu_hours_per_month: float | None = _limit("gpu_hours_per_month")
    upload_bytes: float | None = _limit("upload_bytes")
    max_running_studies: float | None = _limit("max_running_studies")
    max_deployments: float | None = _limit("max_deployments")


class QuotasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quotas: QuotaLimits
    reason: SafeText | None = Reason


class QuotaUse(BaseModel):
    limit: float | None = Field(description="null: unlimited")
    used: float
    description: str


class Usage(BaseModel):
    project: str
    quotas: dict[str, QuotaUse]
