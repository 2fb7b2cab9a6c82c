"""Identity commands: users, service accounts, projects and memberships, API tokens, login sessions. Each saves
events with the acting principal in their metadata; none records a secret (commands/credentials.py)."""
from __future__ import annotations

import time
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import RecordConflictError

from commands.application import ANONYMOUS, Saved, TrainyardApplication, last_position
from commands.context import CommandContext
from commands.credentials import (AccessTokens, check_password, hash_password, new_api_token, new_refresh_token,
                                  parse_refresh_token, password_matches, same_hash, sha256)
from domain.access import Role, check_scopes
from domain.identity import (ApiToken, IdentityError, IdentitySpecError, Project, ServiceAccount, Session, User,
                             check_name, principal_id, project_id)

DEFAULT_PROJECT = "default"
FIRST_OWNER = "admin"
REFRESH_TTL_S = 30 * 86400.0
MAX_TOKEN_TTL_S = 366 * 86400.0


class PrincipalNotFoundError(LookupError):
    pass


class ProjectNotFoundError(LookupError):
    pass


class TokenNotFoundError(LookupError):
    pass


class NameTakenError(IdentityError):
    pass


class BadCredentials(Exception):
    """Wrong name or password, or an unknown, ended or expired refresh token (never says which)."""


def _not_found_principal(name: str) -> LookupError:
    return PrincipalNotFoundError(name)


class IdentityCommands:
    def __init__(self, app: TrainyardApplication, access_tokens: AccessTokens) -> None:
        self.app, self.access_tokens = app, access_tokens

    # ---- first start ------------------------------------------------------------------------------
    def first_start(self, ctx: CommandContext) -> str | None:
        """On a store without the default project: the first owner (`admin`, no password), the `default` project
        with the owner as its admin, and an owner API token — returned once (the caller writes it to a 0600 file).
        None when the store has them already (or another process made them at the same moment)."""
        if self._exists(project_id(DEFAULT_PROJECT)):
            return None
        owner = User.create(FIRST_OWNER, None, owner=True)
        project = Project.create(DEFAULT_PROJECT, "everything that existed before projects, and the first work")
        project.set_member(FIRST_OWNER, Role.admin.value, "first start")
        token, token_hash, prefix = new_api_token()
        api_token = ApiToken.create(FIRST_OWNER, "admin-token", token_hash, prefix, ["*"], None)
        try:
            self.app.save_with(ctx, owner, project, api_token)
        except RecordConflictError:
            return None
        return token

    def _exists(self, aggregate_id: UUID) -> bool:
        return next(iter(self.app.events.get(aggregate_id, lte=1)), None) is not None

    # ---- principals ---------------------------------------------------------------------------------
    def create_user(self, name: str, password: str, owner: bool, ctx: CommandContext) -> Saved:
        check_name(name)
        try:
            check_password(password, name)
        except ValueError as e:
            raise IdentitySpecError("password", str(e)) from None
        return self._create(User.create(name, hash_password(password), owner=owner), name, ctx)

    def create_service_account(self, name: str, description: str, ctx: CommandContext) -> Saved:
        return self._create(ServiceAccount.create(name, description), name, ctx)

    def _create(self, aggregate: Any, name: str, ctx: CommandContext) -> Saved:
        try:
            return Saved(aggregate, last_position(self.app.save_with(ctx, aggregate)))
        except RecordConflictError:
            raise NameTakenError(f"the name {name!r} is taken (by a user or a service account)") from None

    def set_password(self, name: str, password: str, ctx: CommandContext) -> Saved:
        try:
            check_password(password, name)
        except ValueError as e:
            raise IdentitySpecError("password", str(e)) from None
        password_hash = hash_password(password)

        def decide(u: Any) -> None:
            if not isinstance(u, User):
                raise PrincipalNotFoundError(name)
            u.set_password(password_hash)
        return self.app.change(principal_id(name), decide, ctx, lambda _: PrincipalNotFoundError(name))

    def disable(self, name: str, reason: str | None, ctx: CommandContext) -> Saved:
        return self.app.change(principal_id(name), lambda p: p.disable(reason), ctx,
                               lambda _: PrincipalNotFoundError(name))

    # ---- projects -----------------------------------------------------------------------------------
    def create_project(self, name: str, description: str, admin: str, ctx: CommandContext) -> Saved:
        project = Project.create(name, description)
        project.set_member(admin, Role.admin.value, "created the project")
        try:
            return Saved(project, last_position(self.app.save_with(ctx, project)))
        except RecordConflictError:
            raise NameTakenError(f"project {name!r} exists") from None

    def set_member(self, project: str, principal: str, role: str, reason: str | None, ctx: CommandContext) -> Saved:
        if not self._exists(principal_id(principal)):
            raise PrincipalNotFoundError(principal)
        return self.app.change(project_id(project), lambda p: p.set_member(principal, role, reason), ctx,
                               lambda _: ProjectNotFoundError(project))

    def remove_member(self, project: str, principal: str, reason: str | None, ctx: CommandContext) -> Saved:
        return self.app.change(project_id(project), lambda p: p.remove_member(principal, reason), ctx,
                               lambda _: ProjectNotFoundError(project))

    def set_quotas(self, project: str, quotas: dict[str, float], reason: str | None, ctx: CommandContext) -> Saved:
        return self.app.change(project_id(project), lambda p: p.set_quotas(quotas, reason), ctx,
                               lambda _: ProjectNotFoundError(project))

    # ---- API tokens ---------------------------------------------------------------------------------
    def create_token(self, principal: str, name: str, scopes: list[str], expires_in_s: float | None,
                     ctx: CommandContext) -> tuple[str, ApiToken, int | None]:
        """(the token — shown once —, the aggregate, position)."""
        try:
            scopes = check_scopes(scopes)
        except ValueError as e:
            raise IdentitySpecError("scopes", str(e)) from None
        if expires_in_s is not None and not 59.999 <= expires_in_s <= MAX_TOKEN_TTL_S:
            raise IdentitySpecError("expires_in_days", "must be between 1 minute and 366 days")
        token, token_hash, prefix = new_api_token()
        expires_at = time.time() + expires_in_s if expires_in_s is not None else None
        api_token = ApiToken.create(principal, name, token_hash, prefix, scopes, expires_at)
        return token, api_token, last_position(self.app.save_with(ctx, api_token))

    def revoke_token(self, token_id: UUID, owner: str | None, reason: str | None, ctx: CommandContext) -> Saved:
        """Revoke; `owner` (unless None: an owner acting) must be the token's principal, else it is not found."""
        def decide(t: Any) -> None:
            if not isinstance(t, ApiToken) or (owner is not None and t.principal != owner):
                raise TokenNotFoundError(str(token_id))
            t.revoke(reason)
        return self.app.change(token_id, decide, ctx, TokenNotFoundError)

    # ---- login sessions -------------------------------------------------------------------------------
    def login(self, name: str, password: str, ctx: CommandContext) -> dict[str, Any]:
        user = None
        try:
            user = self.app.load(principal_id(name), _not_found_principal, copy=False)
        except (LookupError, ValueError):
            pass
        ok = password_matches(password, getattr(user, "password_hash", None))
        if not ok or not isinstance(user, User) or user.disabled:
            raise BadCredentials()
        session_id = uuid4()
        refresh, refresh_hash = new_refresh_token(session_id)
        session = Session.start(name, refresh_hash, time.time() + REFRESH_TTL_S, id=session_id)
        self.app.save_with(ctx, session)
        return self._tokens(name, session.id, refresh)

    def refresh(self, refresh_token: str, ctx: CommandContext) -> dict[str, Any]:
        parsed = parse_refresh_token(refresh_token)
        if parsed is None:
            raise BadCredentials()
        session_id, secret = parsed
        refresh, refresh_hash = new_refresh_token(session_id)

        def decide(s: Any) -> None:
            if (not isinstance(s, Session) or s.ended or s.expires_at < time.time()
                    or not same_hash(s.refresh_hash, sha256(secret))):
                raise BadCredentials()
            s.rotate(refresh_hash, time.time() + REFRESH_TTL_S)
        try:
            saved = self.app.change(session_id, decide, ctx, lambda _: BadCredentials())
        except LookupError:
            raise BadCredentials() from None
        return self._tokens(saved.aggregate.principal, session_id, refresh)

    def logout(self, session_id: str, ctx: CommandContext) -> int | None:
        """End the session; the position of the event (None if nothing was recorded)."""
        try:
            return self.app.change(UUID(session_id), lambda s: s.end("logout"), ctx, lambda _: BadCredentials()).position
        except (BadCredentials, ValueError):
            return None

    def _tokens(self, principal: str, session_id: UUID, refresh: str) -> dict[str, Any]:
        access, expires_at = self.access_tokens.issue(principal, session_id)
        return {"access_token": access, "token_type": "bearer", "expires_in": int(expires_at - time.time()),
                "refresh_token": refresh}
