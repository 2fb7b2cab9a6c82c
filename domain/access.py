"""Who may do what: the roles, the actions every API route declares, and the one rule that decides (design
decision 15). No I/O: the API hands it a `Principal` (from its identity cache) and a project name.

Outcomes, in the order they are checked:
- a principal that is disabled, or a token whose scopes do not cover the action: Forbidden (403);
- `owner` (a global role) may do everything, everywhere;
- a project action in a project where the principal is no member: NotVisible (404, as if the project or the
  object did not exist: no existence leak);
- a member whose role lacks the action: Forbidden (403).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import Enum


class Role(str, Enum):
    viewer = "viewer"
    engineer = "engineer"
    deployer = "deployer"
    admin = "admin"


RANK = {Role.viewer: 0, Role.engineer: 1, Role.deployer: 2, Role.admin: 3}

# Project actions and the least role that has each. A route declares exactly one of these, or a global one below.
PROJECT_ACTIONS: dict[str, Role] = {
    "project.read": Role.viewer,        # the project, its members and usage
    "job.read": Role.viewer,            # jobs, metrics, compare
    "study.read": Role.viewer,
    "dataset.read": Role.viewer,
    "code.read": Role.viewer,           # code bundles
    "model.read": Role.viewer,          # models, versions, exports, downloads
    "deployment.read": Role.viewer,     # deployments, history, A/B reports
    "schedule.read": Role.viewer,       # schedules and their runs
    "job.submit": Role.engineer,
    "job.cancel": Role.engineer,
    "study.create": Role.engineer,
    "study.cancel": Role.engineer,
    "schedule.write": Role.engineer,    # create, change, pause, resume, trigger, delete (each run: its submit's)
    "dataset.upload": Role.engineer,
    "code.upload": Role.engineer,
    "code.run": Role.engineer,          # submit a job that runs the project's own code (with job.submit)
    "model.write": Role.engineer,       # create a model, register a version, aliases
    "model.export": Role.deployer,
    "deployment.write": Role.deployer,  # deploy, traffic, policies, rollback, undeploy, feedback
    "key.read": Role.deployer,          # inference keys
    "key.write": Role.deployer,
    "project.admin": Role.admin,        # members, quotas
}
# Global actions: `self` is any authenticated principal acting on itself (its tokens, /me, logout); `owner` ones
# are the owner's alone; `public` routes need no credentials (health, docs, the login itself).
SELF = "self"
OWNER_ACTIONS = frozenset({"user.manage", "project.create"})
PUBLIC = "public"
ACTIONS = frozenset(PROJECT_ACTIONS) | OWNER_ACTIONS | {SELF, PUBLIC}
SCOPE_PATTERN_HELP = "action patterns such as '*', '*.read', 'job.*', 'deployment.write'"


def role_actions(role: Role) -> list[str]:
    return [a for a, least in PROJECT_ACTIONS.items() if RANK[role] >= RANK[least]]


@dataclass(frozen=True)
class Principal:
    """Who is asking, as the identity cache knows them now."""
    name: str
    kind: str = "user"  # "user" or "service_account"
    owner: bool = False
    disabled: bool = False
    memberships: dict[str, str] = field(default_factory=dict)  # project name -> role
    scopes: tuple[str, ...] | None = None  # a token's scopes (None: a login, not limited)

    def projects(self) -> list[str]:
        return sorted(self.memberships)


class Denied(Exception):
    """Base of the two refusals; `status` is the HTTP status."""
    status = 403


class Forbidden(Denied):
    status = 403


class NotVisible(Denied):
    status = 404


def scope_allows(scopes: tuple[str, ...] | None, action: str) -> bool:
    if scopes is None or action in (SELF, PUBLIC):
        return True
    return any(fnmatch.fnmatchcase(action, s) for s in scopes)


def check_scopes(scopes: list[str]) -> list[str]:
    """Token scopes as given: 1 to 50 patterns, each matching at least one action."""
    if not isinstance(scopes, list) or not 1 <= len(scopes) <= 50:
        raise ValueError(f"1 to 50 {SCOPE_PATTERN_HELP}")
    for s in scopes:
        if not isinstance(s, str) or not any(fnmatch.fnmatchcase(a, s) for a in ACTIONS - {PUBLIC}):
            raise ValueError(f"{s!r} matches no action; use {SCOPE_PATTERN_HELP}")
    return list(dict.fromkeys(scopes))


def authorize(principal: Principal, project: str | None, action: str) -> None:
    """Return if `principal` may do `action` (in `project`, for project actions); raise Forbidden or NotVisible."""
    if action == PUBLIC:
        return
    if principal.disabled:
        raise Forbidden(f"{principal.name} is disabled")
    if not scope_allows(principal.scopes, action):
        raise Forbidden(f"this token's scopes do not cover {action}")
    if action == SELF or principal.owner:
        return
    if action in OWNER_ACTIONS:
        raise Forbidden(f"{action} is for owners")
    least = PROJECT_ACTIONS.get(action)
    if least is None:
        raise Forbidden(f"unknown action {action}")
    role = principal.memberships.get(project or "")
    if role is None:
        raise NotVisible(f"no project {project!r}")
    if RANK[Role(role)] < RANK[least]:
        raise Forbidden(f"{action} needs the {least.value} role in project {project!r}; "
                        f"{principal.name} is {role}")


def permission_table() -> list[tuple[str, str]]:
    """(action, least role) rows for the docs, project actions first."""
    return ([(a, r.value) for a, r in PROJECT_ACTIONS.items()] + [(a, "owner") for a in sorted(OWNER_ACTIONS)]
            + [(SELF, "any signed-in principal"), (PUBLIC, "anyone")])
