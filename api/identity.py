"""Identity routes: login (/auth), who am I (/me), users and service accounts, API tokens, projects and their
members. Every change is an event with the acting principal (commands/identity.py)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import Response

from api.auth import Access, access_of, allow
from api.context import CommandContextDep
from api.deps import ServicesDep, services
from api.problems import Problem
from api.quotas import quotas_of
from api.schemas.common import problems
from api.schemas.identity import (DisableIn, Me, MemberIn, MemberList, PasswordIn, PrincipalList, PrincipalPublic,
                                  ProjectIn, ProjectList, ProjectPublic, RefreshIn, RevokeIn, ServiceAccountIn,
                                  QuotasIn, QuotaUse, TokenCreated, TokenIn, TokenList, TokenPair, TokenPublic, Usage,
                                  UserIn)
from commands.identity import BadCredentials, PrincipalNotFoundError, ProjectNotFoundError
from domain.access import PUBLIC, SELF
from domain.identity import NAME_PATTERN
from domain.quotas import QUOTAS, check_quotas
from infra.dataset_uploads import list_uploads

router = APIRouter(prefix="/api/v1", tags=["identity"])
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63)]
READ_YOUR_WRITES_S = 5.0


def _caught_up(s: Any, position: int | None) -> None:
    """Wait until the identity read model (and so every process's cache) has the change."""
    if position is not None:
        s.applied.wait_for("identity", s.app.name, position, READ_YOUR_WRITES_S)
        s.auth.cache.reload()


def _principal(s: Any, name: str, created_at: Any = None) -> PrincipalPublic:
    p = s.auth.cache.principal(name)
    if p is None:
        raise PrincipalNotFoundError(name)
    row = s.auth.cache.snapshot.principals[name]
    return PrincipalPublic(name=name, kind=p.kind, owner=p.owner, disabled=p.disabled, projects=p.memberships,
                           created_at=row.get("created_at"))


# ---- login ----------------------------------------------------------------------------------------
@router.post("/auth/token", response_model=TokenPair, responses=problems(400, 401, 422, 429),
             dependencies=[allow(PUBLIC)])
def login(request: Request, username: Annotated[str, Form(max_length=63)],
          password: Annotated[str, Form(max_length=1024)], ctx: CommandContextDep,
          grant_type: Annotated[Literal["password"], Form()] = "password") -> TokenPair:
    """OAuth2 password grant (form fields `username`, `password`): a short-lived access token (JWT) and a
    refresh token. Failed attempts are limited per user and per address (429 with Retry-After)."""
    s = services(request)
    address = request.client.host if request.client else "?"
    keys = (f"user:{username.lower()}", f"addr:{address}")
    s.auth.logins.check(*keys)
    try:
        return TokenPair(**s.identity.login(username, password, ctx))
    except BadCredentials:
        s.auth.logins.failed(*keys)
        raise


@router.post("/auth/refresh", response_model=TokenPair, responses=problems(401, 422), dependencies=[allow(PUBLIC)])
def refresh(body: RefreshIn, s: ServicesDep, ctx: CommandContextDep) -> TokenPair:
    """A new access token and a new refresh token for a refresh token (which stops working: rotation)."""
    return TokenPair(**s.identity.refresh(body.refresh_token, ctx))


@router.post("/auth/logout", status_code=204, responses=problems(400, 401), dependencies=[allow(SELF)])
def logout(request: Request, s: ServicesDep, ctx: CommandContextDep) -> Response:
    """End the login session of this access token: its refresh token and every access token of the session stop
    working at once, in every process."""
    access = access_of(request)
    if access.session_id is None:
        raise Problem(400, "Invalid request", "logout ends a login session; revoke an API token with "
                                              "DELETE /api/v1/tokens/{id}", "Authorization")
    _caught_up(s, s.identity.logout(access.session_id, ctx))
    return Response(status_code=204)  # no body at all: a JSON `null` overruns the 204's empty length


@router.get("/me", response_model=Me, responses=problems(401), dependencies=[allow(SELF)])
def me(request: Request, s: ServicesDep) -> Me:
    access: Access = access_of(request)
    p = access.principal
    return Me(name=p.name, kind=p.kind, owner=p.owner, disabled=p.disabled, projects=p.memberships,
              project=access.project, scopes=list(p.scopes) if p.scopes is not None else None)


# ---- users and service accounts -------------------------------------------------------------------------
@router.post("/users", status_code=201, response_model=PrincipalPublic, responses=problems(401, 403, 409, 422),
             dependencies=[allow("user.manage")])
def create_user(body: UserIn, s: ServicesDep, ctx: CommandContextDep) -> PrincipalPublic:
    saved = s.identity.create_user(body.name, body.password, body.owner, ctx)
    _caught_up(s, saved.position)
    return _principal(s, body.name)


@router.post("/service-accounts", status_code=201, response_model=PrincipalPublic,
             responses=problems(401, 403, 409, 422), dependencies=[allow("user.manage")])
def create_service_account(body: ServiceAccountIn, s: ServicesDep, ctx: CommandContextDep) -> PrincipalPublic:
    saved = s.identity.create_service_account(body.name, body.description, ctx)
    _caught_up(s, saved.position)
    return _principal(s, body.name)


@router.get("/users", response_model=PrincipalList, responses=problems(401, 403), dependencies=[allow("user.manage")])
def list_users(s: ServicesDep) -> PrincipalList:
    items = [_principal(s, name) for name in sorted(s.auth.cache.snapshot.principals)]
    return PrincipalList(items=items, total=len(items))


@router.delete("/users/{name}", response_model=PrincipalPublic, responses=problems(401, 403, 404, 409, 422),
               dependencies=[allow("user.manage")])
def disable_user(name: NamePath, s: ServicesDep, ctx: CommandContextDep, body: DisableIn | None = None) -> PrincipalPublic:
    """Disable a user or service account: its tokens and sessions stop working; its history stays."""
    saved = s.identity.disable(name, body.reason if body else None, ctx)
    _caught_up(s, saved.position)
    return _principal(s, name)


@router.put("/me/password", status_code=204, responses=problems(401, 404, 422), dependencies=[allow(SELF)])
def set_my_password(body: PasswordIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> Response:
    name = access_of(request).principal.name
    s.identity.set_password(name, body.password, ctx)
    return Response(status_code=204)  # no body at all: a JSON `null` overruns the 204's empty length


# ---- API tokens ---------------------------------------------------------------------------------------
def _token(row: dict[str, Any]) -> dict[str, Any]:
    exp = row.get("expires_at")
    return {**row, "scopes": row["scopes"]["scopes"],
            "expires_at": datetime.fromtimestamp(exp, timezone.utc) if exp is not None else None}


@router.post("/tokens", status_code=201, response_model=TokenCreated, responses=problems(401, 403, 404, 422),
             dependencies=[allow(SELF)])
def create_token(body: TokenIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> TokenCreated:
    """A personal API token (`ty_…`), or one for a service account (owners). Shown once."""
    me_ = access_of(request).principal
    principal = body.principal or me_.name
    if principal != me_.name:
        target = s.auth.cache.principal(principal)
        if target is None:
            raise PrincipalNotFoundError(principal)
        if not me_.owner or target.kind != "service_account":
            raise Problem(403, "Forbidden", "only owners create tokens for others, and only for service accounts",
                          "principal")
    if me_.scopes is not None and "*" not in me_.scopes:
        raise Problem(403, "Forbidden", "a token limited by scopes cannot create tokens", "Authorization")
    expires = body.expires_in_days * 86400 if body.expires_in_days is not None else None
    token, api_token, position = s.identity.create_token(principal, body.name, body.scopes, expires, ctx)
    _caught_up(s, position)
    row = next(r for r in s.identity_queries.tokens_of(principal) if r["id"] == api_token.id)
    return TokenCreated(**_token(row), token=token)


@router.get("/tokens", response_model=TokenList, responses=problems(401), dependencies=[allow(SELF)])
def list_tokens(request: Request, s: ServicesDep) -> TokenList:
    """Your tokens (owners: everyone's)."""
    me_ = access_of(request).principal
    rows = s.identity_queries.tokens_of(None if me_.owner else me_.name)
    return TokenList(items=[TokenPublic(**_token(r)) for r in rows])


@router.delete("/tokens/{token_id}", response_model=TokenPublic, responses=problems(401, 404, 409, 422),
               dependencies=[allow(SELF)])
def revoke_token(token_id: UUID, request: Request, s: ServicesDep, ctx: CommandContextDep,
                 body: RevokeIn | None = None) -> TokenPublic:
    """Revoke one of your tokens (owners: anyone's). It stops working within a second in every process."""
    me_ = access_of(request).principal
    saved = s.identity.revoke_token(token_id, None if me_.owner else me_.name, body.reason if body else None, ctx)
    _caught_up(s, saved.position)
    row = next(r for r in s.identity_queries.tokens_of(saved.aggregate.principal) if r["id"] == token_id)
    return TokenPublic(**_token(row))


# ---- projects and members -----------------------------------------------------------------------------
def _project(s: Any, name: str, role: str | None) -> ProjectPublic:
    row = s.auth.cache.project(name)
    if row is None:
        raise ProjectNotFoundError(name)
    return ProjectPublic(name=name, description=row["description"], quotas=row["quotas"] or {},
                         created_by=row["created_by"], created_at=row["created_at"], role=role)


@router.post("/projects", status_code=201, response_model=ProjectPublic, responses=problems(401, 403, 409, 422),
             dependencies=[allow("project.create")])
def create_project(body: ProjectIn, request: Request, s: ServicesDep, ctx: CommandContextDep) -> ProjectPublic:
    """A new project; its creator is its first admin."""
    saved = s.identity.create_project(body.name, body.description, access_of(request).principal.name, ctx)
    _caught_up(s, saved.position)
    return _project(s, body.name, "admin")


@router.get("/projects", response_model=ProjectList, responses=problems(401), dependencies=[allow(SELF)])
def list_projects(request: Request, s: ServicesDep) -> ProjectList:
    """The projects you can see (owners: all), with your role in each."""
    me_ = access_of(request).principal
    names = sorted(s.auth.cache.snapshot.projects) if me_.owner else me_.projects()
    items = [_project(s, n, me_.memberships.get(n)) for n in names if s.auth.cache.project(n)]
    return ProjectList(items=items, total=len(items))


@router.get("/projects/{project}", response_model=ProjectPublic, responses=problems(401, 403, 404, 422),
            dependencies=[allow("project.read", project_param="project")])
def get_project(project: NamePath, request: Request, s: ServicesDep) -> ProjectPublic:
    return _project(s, project, access_of(request).principal.memberships.get(project))


@router.get("/projects/{project}/members", response_model=MemberList, responses=problems(401, 403, 404, 422),
            dependencies=[allow("project.read", project_param="project")])
def list_members(project: NamePath, s: ServicesDep) -> MemberList:
    _project(s, project, None)
    return MemberList(items=s.identity_queries.members(project))


@router.put("/projects/{project}/members/{principal}", response_model=MemberList,
            responses=problems(401, 403, 404, 422), dependencies=[allow("project.admin", project_param="project")])
def set_member(project: NamePath, principal: NamePath, body: MemberIn, s: ServicesDep,
               ctx: CommandContextDep) -> MemberList:
    """Give a user or service account a role in the project (an event with your name and the reason)."""
    if s.auth.cache.principal(principal) is None:
        raise PrincipalNotFoundError(principal)
    saved = s.identity.set_member(project, principal, body.role, body.reason, ctx)
    _caught_up(s, saved.position)
    return MemberList(items=s.identity_queries.members(project))


@router.delete("/projects/{project}/members/{principal}", response_model=MemberList,
               responses=problems(401, 403, 404, 409, 422),
               dependencies=[allow("project.admin", project_param="project")])
def remove_member(project: NamePath, principal: NamePath, s: ServicesDep, ctx: CommandContextDep,
                  body: RevokeIn | None = None) -> MemberList:
    saved = s.identity.remove_member(project, principal, body.reason if body else None, ctx)
    _caught_up(s, saved.position)
    return MemberList(items=s.identity_queries.members(project))



# ---- quotas and usage -----------------------------------------------------------------------------------
@router.put("/projects/{project}/quotas", response_model=ProjectPublic, responses=problems(401, 403, 404, 422),
            dependencies=[allow("project.admin", project_param="project")])
def set_quotas(project: NamePath, body: QuotasIn, request: Request, s: ServicesDep,
               ctx: CommandContextDep) -> ProjectPublic:
    """Replace the project's quotas (a name left out or null: unlimited); an event with your name and the
    reason."""
    saved = s.identity.set_quotas(project, check_quotas(body.quotas.model_dump(exclude_none=True)), body.reason, ctx)
    _caught_up(s, saved.position)
    return _project(s, project, access_of(request).principal.memberships.get(project))


@router.get("/projects/{project}/usage", response_model=Usage, responses=problems(401, 403, 404, 422),
            dependencies=[allow("project.read", project_param="project")])
def usage(project: NamePath, s: ServicesDep) -> Usage:
    """What the project uses now against each quota (limit null: unlimited)."""
    _project(s, project, None)
    quotas = quotas_of(s, project)
    used = s.usage.usage(project, sum(d.size_bytes for d in list_uploads(s.settings.dataset_root_paths[0],
                                                                          project=project)))
    return Usage(project=project, quotas={name: QuotaUse(limit=quotas.get(name), used=used[name], description=text)
                                          for name, text in QUOTAS.items()})
