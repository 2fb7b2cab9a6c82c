"""The ApiKey aggregate: a key that may call the inference endpoints of some deployments (or all: "*").

    created ──revoke──► revoked (a second revoke is refused)

A key belongs to one project and reaches only that project's deployments (a key created before projects belongs
to the default project). The key itself is shown once, at creation, and never stored: the aggregate and its events keep only its
sha256 digest and a short prefix for display. No I/O here.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate, event

from domain.contract import DEFAULT_PROJECT, FieldError, has_control
from domain.deployment_spec import NAME_PATTERN
from domain.identity import check_name as check_project

ALL = "*"
KEY_PREFIX = "ty_"
PREFIX_LENGTH = 10
MAX_NAME = 100
MAX_DEPLOYMENTS = 100
MAX_RATE_LIMIT = 100_000.0
MAX_REASON = 500
_DEPLOYMENT_NAME = re.compile(NAME_PATTERN)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ApiKeyError(Exception):
    """A command the key's state does not allow; maps to HTTP 409."""


class ApiKeyRevokedError(ApiKeyError):
    """The key was already revoked."""


class ApiKeySpecError(FieldError):
    """Invalid input; maps to HTTP 422. `field` names what is wrong, e.g. "deployments[2]"."""


# ---- keys -------------------------------------------------------------------------------------
def new_key() -> str:
    """A fresh secret key: "ty_" and 43 url-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key: its sha256 hex digest."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_prefix(key: str) -> str:
    """What is shown of a key after its creation."""
    return key[:PREFIX_LENGTH]


def key_matches(key: str, key_hash: str) -> bool:
    """Whether `key` is the key of `key_hash` (constant-time comparison)."""
    return hmac.compare_digest(hash_key(key), key_hash)


def allows(deployments: Iterable[str] | str, name: str) -> bool:
    """Whether a key scoped to `deployments` (a list, possibly holding "*", or "*") may call deployment `name`."""
    if deployments == ALL:
        return True
    if isinstance(deployments, str):
        return deployments == name
    return ALL in deployments or name in deployments


# ---- validation -----------------------------------------------------------------------------------
def check_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise ApiKeySpecError("name", f"must be a string of 1 to {MAX_NAME} characters")
    if has_control(name):
        raise ApiKeySpecError("name", "must not contain control characters")
    return name


def check_deployments(deployments: Any) -> list[str]:
    """The key's scope as a list: ["*"] for all deployments, else 1-100 distinct deployment names."""
    if deployments == ALL:
        return [ALL]
    if not isinstance(deployments, (list, tuple)) or not 1 <= len(deployments) <= MAX_DEPLOYMENTS:
        raise ApiKeySpecError("deployments", f'must be "*" or a list of 1 to {MAX_DEPLOYMENTS} deployment names')
    out: list[str] = []
    for i, name in enumerate(deployments):
        if not isinstance(name, str) or not (name == ALL or _DEPLOYMENT_NAME.match(name)):
            raise ApiKeySpecError(f"deployments[{i}]", f'must be "*" or match {NAME_PATTERN}')
        if name not in out:
            out.append(name)
    return [ALL] if ALL in out else out


def check_rate_limit(rate: Any) -> float | None:
    if rate is None:
        return None
    if (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate)
            or not 0 < rate <= MAX_RATE_LIMIT):
        raise ApiKeySpecError("rate_limit_per_s", f"must be a number in (0, {MAX_RATE_LIMIT:g}] or null")
    return float(rate)


def check_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON or has_control(reason):
        raise ApiKeySpecError("reason", f"must be at most {MAX_REASON} characters without control characters")
    return reason


def _check_hash(key_hash: Any, prefix: Any) -> None:
    if not isinstance(key_hash, str) or not _HEX64.match(key_hash):
        raise ApiKeySpecError("key_hash", "must be a sha256 hex digest")
    if not isinstance(prefix, str) or not 1 <= len(prefix) <= PREFIX_LENGTH or has_control(prefix):
        raise ApiKeySpecError("prefix", f"must be a string of 1 to {PREFIX_LENGTH} characters")


class ApiKey(Aggregate):
    @classmethod
    def create(cls, name: str, key_hash: str, prefix: str, deployments: list[str] | str,
               rate_limit_per_s: float | None = None, id: UUID | None = None, *, project: str) -> ApiKey:
        """A new key of `project` whose Created event carries the normalized inputs (deployments as a list)."""
        _check_hash(key_hash, prefix)
        return cls(id=id or uuid4(), name=check_name(name), key_hash=key_hash, prefix=prefix,
                   deployments=check_deployments(deployments), rate_limit_per_s=check_rate_limit(rate_limit_per_s),
                   project=check_project(project, "project"))

    class Created(Aggregate.Created):
        """v2 added the key's `project`, the only project whose deployments it reaches."""

        class_version = 2
        name: str
        key_hash: str
        prefix: str
        deployments: list[str] | str
        rate_limit_per_s: float | None = None
        project: str = DEFAULT_PROJECT

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("project", DEFAULT_PROJECT)

    @event(Created)
    def __init__(self, id: UUID, name: str, key_hash: str, prefix: str, deployments: list[str] | str,
                 rate_limit_per_s: float | None = None, project: str = DEFAULT_PROJECT) -> None:
        # Only assigns: the rules ran in `create`, and a stored event must load under any later rule.
        self.project = project
        self.name = name
        self.key_hash = key_hash
        self.prefix = prefix
        self.deployments = [deployments] if isinstance(deployments, str) else list(deployments)
        self.rate_limit_per_s = rate_limit_per_s
        self.revoked = False
        self.revoked_reason: str | None = None

    def allows(self, deployment: str, project: str = DEFAULT_PROJECT) -> bool:
        """Whether this key may call `project`'s `deployment` now (a revoked key may call nothing)."""
        return not self.revoked and project == self.project and allows(self.deployments, deployment)

    def revoke(self, reason: str | None = None) -> None:
        if self.revoked:
            raise ApiKeyRevokedError(f"api key {self.prefix}… was already revoked")
        self._revoked(reason=check_reason(reason))

    @event("Revoked")
    def _revoked(self, reason: str | None) -> None:
        self.revoked = True
        self.revoked_reason = reason
