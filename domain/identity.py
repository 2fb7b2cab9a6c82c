"""Identity: who may act (users, service accounts), in which projects (memberships with a role), with which
credentials (API tokens, login sessions). Event-sourced like everything else (design decision 15): every change
of a permission is an event with its actor and reason. No I/O here; secrets never enter an event (only hashes:
argon2id for passwords, sha256 for tokens, made by the command layer).

    User            created ──disable──► disabled ──enable──► created     (password set or changed any time)
    ServiceAccount  created ──disable──► disabled
    Project         created; members set/removed; quotas set
    ApiToken        created ──revoke──► revoked (it also ends at `expires_at`)
    Session         started (a refresh token) ──rotate──► … ──end──► ended (logout, or its user disabled)

A principal's or project's id is derived from its name (`principal_id`, `project_id`), so the event store itself
refuses a second one of the same name, with no read-model race.
"""
from __future__ import annotations

import re
import uuid
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.access import Role
from domain.contract import FieldError, has_control

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
MAX_REASON = 500
MAX_TOKEN_NAME = 100
MAX_SCOPES = 50
_NAMESPACE = UUID("6f1c2a4e-7f0b-4c1e-9a57-3f1d2b8e9c10")


class IdentityError(Exception):
    """A command the object's state does not allow; maps to HTTP 409."""


class IdentitySpecError(FieldError):
    """Invalid input; maps to HTTP 422 naming the field."""


def check_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise IdentitySpecError(field, f"must match {NAME_PATTERN} (lower-case letters, digits, '.', '_', '-')")
    return name


def check_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON or has_control(reason):
        raise IdentitySpecError("reason", f"must be at most {MAX_REASON} characters without control characters")
    return reason


def principal_id(name: str) -> UUID:
    """The id of the user or service account called `name` (one namespace for both kinds)."""
    return uuid.uuid5(_NAMESPACE, f"principal:{name}")


def project_id(name: str) -> UUID:
    return uuid.uuid5(_NAMESPACE, f"project:{name}")


class User(Aggregate):
    @classmethod
    def create(cls, name: str, password_hash: str | None, owner: bool = False) -> User:
        return cls(id=principal_id(check_name(name)), name=name, password_hash=password_hash, owner=bool(owner))

    @event("Created")
    def __init__(self, id: UUID, name: str, password_hash: str | None, owner: bool) -> None:
        self.name = name
        self.password_hash = password_hash
        self.owner = owner
        self.disabled = False

    def set_password(self, password_hash: str) -> None:
        self._password_set(password_hash=password_hash)

    @event("PasswordSet")
    def _password_set(self, password_hash: str) -> None:
        self.password_hash = password_hash

    def disable(self, reason: str | None = None) -> None:
        if self.disabled:
            raise IdentityError(f"user {self.name!r} is disabled already")
        self._disabled(reason=check_reason(reason))

    @event("Disabled")
    def _disabled(self, reason: str | None) -> None:
        self.disabled = True

    def enable(self, reason: str | None = None) -> None:
        if not self.disabled:
            raise IdentityError(f"user {self.name!r} is not disabled")
        self._enabled(reason=check_reason(reason))

    @event("Enabled")
    def _enabled(self, reason: str | None) -> None:
        self.disabled = False


class ServiceAccount(Aggregate):
    @classmethod
    def create(cls, name: str, description: str = "") -> ServiceAccount:
        if not isinstance(description, str) or len(description) > MAX_REASON or has_control(description):
            raise IdentitySpecError("description", f"at most {MAX_REASON} characters without control characters")
        return cls(id=principal_id(check_name(name)), name=name, description=description)

    @event("Created")
    def __init__(self, id: UUID, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.disabled = False
        self.owner = False

    def disable(self, reason: str | None = None) -> None:
        if self.disabled:
            raise IdentityError(f"service account {self.name!r} is disabled already")
        self._disabled(reason=check_reason(reason))

    @event("Disabled")
    def _disabled(self, reason: str | None) -> None:
        self.disabled = True


class Project(Aggregate):
    @classmethod
    def create(cls, name: str, description: str = "") -> Project:
        if not isinstance(description, str) or len(description) > MAX_REASON or has_control(description):
            raise IdentitySpecError("description", f"at most {MAX_REASON} characters without control characters")
        return cls(id=project_id(check_name(name)), name=name, description=description)

    @event("Created")
    def __init__(self, id: UUID, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.members: dict[str, str] = {}  # principal name -> role
        self.quotas: dict[str, float] = {}

    def set_member(self, principal: str, role: str, reason: str | None = None) -> bool:
        """Give `principal` `role` here; False (nothing recorded) when it has that role already."""
        role = Role(role).value
        if self.members.get(principal) == role:
            return False
        self._member_set(principal=check_name(principal, "user"), role=role, reason=check_reason(reason))
        return True

    @event("MemberSet")
    def _member_set(self, principal: str, role: str, reason: str | None) -> None:
        self.members[principal] = role

    def remove_member(self, principal: str, reason: str | None = None) -> None:
        if principal not in self.members:
            raise IdentityError(f"{principal!r} is not a member of project {self.name!r}")
        self._member_removed(principal=principal, reason=check_reason(reason))

    @event("MemberRemoved")
    def _member_removed(self, principal: str, reason: str | None) -> None:
        self.members.pop(principal, None)

    def set_quotas(self, quotas: dict[str, float], reason: str | None = None) -> None:
        from domain.quotas import check_quotas  # the quota names and bounds live with the quota rule

        self._quotas_set(quotas=check_quotas(quotas), reason=check_reason(reason))

    @event("QuotasSet")
    def _quotas_set(self, quotas: dict[str, float], reason: str | None) -> None:
        self.quotas = dict(quotas)


class ApiToken(Aggregate):
    """A personal or service-account token (`ty_…`) for scripts and CI: shown once, kept as its sha256."""

    @classmethod
    def create(cls, principal: str, name: str, token_hash: str, prefix: str, scopes: list[str],
               expires_at: float | None) -> ApiToken:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_TOKEN_NAME or has_control(name):
            raise IdentitySpecError("name", f"must be 1 to {MAX_TOKEN_NAME} characters without control characters")
        return cls(id=uuid.uuid4(), principal=principal, name=name, token_hash=token_hash, prefix=prefix,
                   scopes=list(scopes), expires_at=expires_at)

    @event("Created")
    def __init__(self, id: UUID, principal: str, name: str, token_hash: str, prefix: str, scopes: list[str],
                 expires_at: float | None) -> None:
        self.principal = principal
        self.name = name
        self.token_hash = token_hash
        self.prefix = prefix
        self.scopes = list(scopes)
        self.expires_at = expires_at
        self.revoked = False

    def revoke(self, reason: str | None = None) -> None:
        if self.revoked:
            raise IdentityError(f"token {self.prefix}… was revoked already")
        self._revoked(reason=check_reason(reason))

    @event("Revoked")
    def _revoked(self, reason: str | None) -> None:
        self.revoked = True


class Session(Aggregate):
    """A login: its refresh token (kept as a sha256) renews short-lived access tokens until it ends."""

    @classmethod
    def start(cls, principal: str, refresh_hash: str, expires_at: float, id: UUID | None = None) -> Session:
        return cls(id=id or uuid.uuid4(), principal=principal, refresh_hash=refresh_hash, expires_at=expires_at)

    @event("Started")
    def __init__(self, id: UUID, principal: str, refresh_hash: str, expires_at: float) -> None:
        self.principal = principal
        self.refresh_hash = refresh_hash
        self.expires_at = expires_at
        self.ended = False

    def rotate(self, refresh_hash: str, expires_at: float) -> None:
        if self.ended:
            raise IdentityError("the session has ended")
        self._rotated(refresh_hash=refresh_hash, expires_at=expires_at)

    @event("Rotated")
    def _rotated(self, refresh_hash: str, expires_at: float) -> None:
        self.refresh_hash = refresh_hash
        self.expires_at = expires_at

    def end(self, reason: str | None = None) -> None:
        if not self.ended:
            self._ended(reason=check_reason(reason))

    @event("Ended")
    def _ended(self, reason: str | None) -> None:
        self.ended = True
