"""Authentication and authorization of every request (design decision 15).

Every route declares its action with `allow("job.submit")` (or `allow(PUBLIC)`); tests/test_auth_routes.py fails
for a route of the OpenAPI document that declares none. The dependency:
1. authenticates `Authorization: Bearer <credential>` from the in-process identity cache (no store read): an API
   token `ty_…` (by its sha256; revoked, expired, or of a disabled principal: 401) or an access token (a JWT we
   signed: algorithm, issuer, audience, expiry and the login session checked; 401 otherwise);
2. names the project: `X-Trainyard-Project` or `?project=`, else the principal's only project, else `default`;
3. asks `domain.access.authorize` — 403 for a role without the action, 404 for a project the caller cannot see —
   and leaves `Access` in `request.state.access` for the route and the command context (the actor of every event
   is the authenticated principal).
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from api.problems import Problem
from commands.credentials import TOKEN_PREFIX, AccessTokens, InvalidAccessToken, OidcTokens, sha256
from domain.access import PUBLIC, Principal, authorize
from domain.identity import NAME_PATTERN
from projections.identity import IdentityCache

PROJECT_HEADER = "X-Trainyard-Project"
DEFAULT_PROJECT = "default"
MAX_CREDENTIAL = 4096


@dataclass(frozen=True)
class Access:
    principal: Principal
    project: str
    session_id: str | None = None  # a login's session (access tokens), for logout
    token_id: str | None = None  # the API token used, if any


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, "Authorization", headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    def __init__(self, cache: IdentityCache, access_tokens: AccessTokens, oidc: OidcTokens | None = None) -> None:
        self.cache, self.access_tokens, self.oidc = cache, access_tokens, oidc
        self.logins = LoginLimiter()

    def authenticate(self, request: HTTPConnection) -> tuple[Principal, str | None, str | None]:
        """(principal, session id, token id) of the request's credentials; Problem(401/400) otherwise."""
        values = request.headers.getlist("authorization")
        if not values and request.scope.get("type") == "websocket" and (given := request.query_params.get("token")):
            values = [f"Bearer {given}"]  # browsers cannot set headers on a WebSocket (api/streams.py)
        if len(values) > 1:
            raise Problem(400, "Invalid request", "Authorization: one header only", "Authorization")
        if not values:
            raise _unauthorized("credentials required: Authorization: Bearer <token> (see `trainyard login`)")
        scheme, _, credential = values[0].partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or len(credential) > MAX_CREDENTIAL:
            raise _unauthorized("Authorization must be 'Bearer <token>'")
        if credential.startswith(TOKEN_PREFIX):
            token = self.cache.token(sha256(credential))
            if token is None or token.revoked or (token.expires_at is not None and token.expires_at < time.time()):
                raise _unauthorized("unknown, revoked or expired token")
            principal = self.cache.principal(token.principal, scopes=token.scopes)
            if principal is None or principal.disabled:
                raise _unauthorized("the token's principal is disabled")
            return principal, None, token.id
        if self.oidc is not None and self.oidc.is_theirs(credential):
            try:
                name = self.oidc.check(credential)
            except InvalidAccessToken as e:
                raise _unauthorized(f"invalid token of the OIDC issuer: {e}") from None
            principal = self.cache.principal(name)
            if principal is None or principal.disabled or principal.kind != "user":
                raise _unauthorized(f"no enabled user {name!r} for this OIDC token")
            return principal, None, None
        try:
            claims = self.access_tokens.check(credential)
        except InvalidAccessToken as e:
            raise _unauthorized(f"invalid access token: {e}") from None
        if self.cache.session_ended(claims.session_id):
            raise _unauthorized("the session has ended (logged out); log in again")
        principal = self.cache.principal(claims.principal)
        if principal is None or principal.disabled:
            raise _unauthorized("unknown or disabled principal")
        return principal, claims.session_id, None


def requested_project(request: HTTPConnection, principal: Principal) -> str:
    given = request.headers.get(PROJECT_HEADER) or request.query_params.get("project")
    if given is not None:
        if not re.match(NAME_PATTERN, given):
            raise Problem(422, "Invalid request", f"{PROJECT_HEADER}: must match {NAME_PATTERN}", PROJECT_HEADER)
        return given
    projects = principal.projects()
    return projects[0] if len(projects) == 1 else DEFAULT_PROJECT


class _Allow:
    """The dependency a route declares: `Depends(allow(action))`. Its `action` is what the route-coverage test
    reads."""

    def __init__(self, action: str, project_param: str | None = None) -> None:
        self.action, self.project_param = action, project_param

    async def __call__(self, request: HTTPConnection) -> Access | None:  # async: memory only; HTTP and WebSocket
        if self.action == PUBLIC:
            return None
        auth: Authenticator = request.app.state.services.auth
        principal, session_id, token_id = auth.authenticate(request)
        project = (request.path_params[self.project_param] if self.project_param
                   else requested_project(request, principal))
        authorize(principal, project, self.action)
        access = Access(principal, project, session_id, token_id)
        request.state.access = access
        return access


def allow(action: str, project_param: str | None = None) -> Any:
    """`dependencies=[allow("job.read")]` on a route: who may call it. `project_param`: the path parameter that
    names the project (routes under /projects/{project}), instead of the header or query."""
    return Depends(_Allow(action, project_param))


def _declared(route: Any) -> _Allow | None:
    def walk(dependant: Any) -> _Allow | None:
        for d in dependant.dependencies:
            if isinstance(d.call, _Allow):
                return d.call
            if found := walk(d):
                return found
        return None
    return walk(route.dependant)


def action_of(route: Any) -> str | None:
    """The action a route declared (None: none)."""
    declared = _declared(route)
    return declared.action if declared is not None else None


_PROJECT_DOC = (f"the project to act in (a name matching {NAME_PATTERN}); default: your only project, else "
                f"'{DEFAULT_PROJECT}'. Another project's objects are 404 to you.")
# Read by the allow(...) dependency, not declared per route: documented on every project route.
PROJECT_PARAMETERS = [
    {"name": PROJECT_HEADER, "in": "header", "required": False, "description": _PROJECT_DOC,
     "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63}},
    {"name": "project", "in": "query", "required": False, "description": f"instead of {PROJECT_HEADER}",
     "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63}},
]


def access_of(request: Request) -> Access:
    access = getattr(request.state, "access", None)
    if access is None:
        raise RuntimeError("route without an allow(...) dependency asked for its access")
    return access


class LoginLimiter:
    """Failed logins per user name (`per_user` in `window_s`) and per client address (`per_address`: one address
    may try several names), then 429 until the oldest failure leaves the window. Keys are "user:…" or "addr:…"."""

    def __init__(self, per_user: int = 10, per_address: int = 50, window_s: float = 300.0) -> None:
        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                q = self._failures.get(key)
                while q and q[0] < now - self.window_s:
                    q.popleft()
                limit = self.per_user if key.startswith("user:") else self.per_address
                if q and len(q) >= limit:
                    wait = int(q[0] + self.window_s - now) + 1
                    raise Problem(429, "Too many requests", f"too many failed logins; retry in {wait} s", None,
                                  headers={"Retry-After": str(wait)})

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:  # bounded memory under a spray of names
                self._failures.clear()
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)


def document_access(router: Any) -> None:
    """Add to the OpenAPI description of every route of `router` its action (`x-trainyard-action`), the bearer
    security requirement and the 401/403 problems it can answer. Call before the router is included."""
    from fastapi.routing import APIRoute

    from api.schemas.common import problems
    from domain.access import OWNER_ACTIONS, PROJECT_ACTIONS

    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        action = action_of(route)
        extra = dict(route.openapi_extra or {})
        extra["x-trainyard-action"] = action
        allow_dep = _declared(route)
        if action in PROJECT_ACTIONS and allow_dep is not None and allow_dep.project_param is None:
            given = list(extra.get("parameters", []))
            extra["parameters"] = given + [p for p in PROJECT_PARAMETERS if p not in given]
        if action not in (None, PUBLIC):
            extra["security"] = [{"bearer": []}]
            route.responses.setdefault(401, {**problems(401)[401], "description": "no or invalid credentials"})
            if action in PROJECT_ACTIONS or action in OWNER_ACTIONS:
                route.responses.setdefault(403, {**problems(403)[403],
                                                 "description": "your role or token scopes lack this action"})
        route.openapi_extra = extra
