"""Who you are and who may do what: `login`, `logout`, `whoami`, `project create|list|use|show`,
`member add|remove|list`, `user create|list|disable`, `service-account create`, `token create|list|revoke`.

`login` keeps an API token, never a password or a login's short-lived JWT: with a password it signs in, makes a
personal API token named `cli@<host>` (90 days) with that session, ends the session and stores the token in
credentials_file() (0600, its folder 0700), keyed by the API's URL; with `--token` it checks the token (GET /me)
and stores it. Every command and the Python client then send it (api/client.py `default_token`).
"""
from __future__ import annotations

import os
import socket
import sys
from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from api.cli import ids
from api.cli.app import ApiOpt, JsonOpt, cli, connect, group
from api.cli.output import console, grid, line, print_json, when
from api.client import (TrainyardClient, TrainyardError, credentials_file, save_credentials, stored_credentials,
                        token_source)
from domain.identity import MAX_TOKEN_NAME

LOGIN_TOKEN_DAYS = 90
TokenIdArg = Annotated[str, typer.Argument(help=f"the token: {ids.SHORT}")]
PasswordStdinOpt = Annotated[bool, typer.Option("--password-stdin",
                                                help="read the password from the first line of standard input")]
WhyOpt = Annotated[Optional[str], typer.Option("--reason", help="why (kept in the event with your name)")]


class RoleChoice(str, Enum):
    viewer = "viewer"
    engineer = "engineer"
    deployer = "deployer"
    admin = "admin"


def _password(from_stdin: bool, confirm: bool = False) -> str:
    """The password from standard input's first line, else a prompt that does not echo it."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise TrainyardError(None, {"title": "Invalid input", "detail": "no password on standard input"})
        return password
    return typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)


def _token_name() -> str:
    return f"cli@{socket.gethostname() or 'localhost'}"[:MAX_TOKEN_NAME]


def _roles(projects: dict[str, str]) -> str:
    return ", ".join(f"{p} ({r})" for p, r in sorted(projects.items())) or "-"


def _warn(text: str) -> None:
    console.print(Text(text, style="yellow"), soft_wrap=True, highlight=False)


# ---- login, logout, whoami ------------------------------------------------------------------------------
@cli.command()
def login(name: Annotated[Optional[str], typer.Option("--name", "-n", help="your user name (prompted when not "
                                                                              "given)")] = None,
          password_stdin: PasswordStdinOpt = False,
          token: Annotated[Optional[str], typer.Option("--token", help="an API token (ty_…) to use instead of a "
                                                                        "password; '-': read it from standard input")]
          = None,
          api: ApiOpt = None) -> None:
    """Sign in to this API and keep an API token for the next commands (not the password).

    With a password: signs in, makes a personal API token `cli@<host>` (90 days) and stores it in your
    credentials file (0600). With --token: checks the token and stores it."""
    client = connect(api)
    url = client.base_url
    previous = stored_credentials(url)
    token_id: str | None = None
    if token is not None:
        if name is not None or password_stdin:
            raise typer.BadParameter("a token is given instead of a name and password", param_hint="--token")
        if token == "-":
            token = sys.stdin.readline().strip()
        token = token.strip()
        if not token:
            raise typer.BadParameter("empty", param_hint="--token")
    else:
        if name is None:
            name = typer.prompt("Name")
        password = _password(password_stdin)
        pair = client.login(name, password)
        session = connect(api, token=pair["access_token"])
        try:
            made = session.create_token(_token_name(), expires_in_days=LOGIN_TOKEN_DAYS)
        finally:
            try:  # the login session has done its work: only the API token is kept
                session.logout()
            except TrainyardError:
                pass
        token, token_id = made["token"], str(made["id"])
    try:
        me = connect(api, token=token).me()  # also proves a --token works before it is stored
    except TrainyardError as e:
        if e.status != 401:
            raise
        raise TrainyardError(401, {**e.problem, "instance": None}, f"{e}: the token given was refused; nothing "
                                                                     "was stored") from None
    entry: dict[str, Any] = {"token": token, "principal": me["name"]}
    if token_id is not None:
        entry["token_id"] = token_id  # made by this login: `logout` revokes it
    # the project chosen with `project use` stays while this principal can still see it
    if previous.get("project") and (me["owner"] or previous["project"] in me["projects"]):
        entry["project"] = previous["project"]
    path = save_credentials(url, entry)
    if previous.get("token_id") and previous.get("token") != token:
        _revoke_quietly(url, previous, "replaced by a new login")  # not left behind, valid, in no one's hands
    stored = (f"a new API token, {_token_name()} ({LOGIN_TOKEN_DAYS} days)" if token_id
              else f"the token {token[:10]}…")
    line(f"logged in to {url} as {me['name']}" + (" (owner)" if me["owner"] else "") + f"; {stored} stored in {path}")
    if os.environ.get("TRAINYARD_TOKEN"):
        _warn("note: TRAINYARD_TOKEN is set, and commands send it instead of this login until it is unset")


def _revoke_quietly(url: str, entry: dict[str, Any], reason: str) -> str | None:
    """Revoke the API token a `login` made (with itself); None when done, else why not."""
    try:
        connect(url, token=str(entry["token"])).revoke_token(str(entry["token_id"]), reason=reason)
        return None
    except TrainyardError as e:
        return str(e)


@cli.command()
def logout(api: ApiOpt = None) -> None:
    """Forget the credentials stored for this API; the API token `login` made is revoked too (a token given with
    `login --token` is only forgotten: it may be in use elsewhere)."""
    url = connect(api).base_url
    entry = stored_credentials(url)
    if not entry.get("token"):
        line(f"not logged in to {url} (nothing stored in {credentials_file()})")
        if entry:
            save_credentials(url, None)
        return
    failed = _revoke_quietly(url, entry, "trainyard logout") if entry.get("token_id") else None
    save_credentials(url, None)
    what = ("the token was only forgotten, not revoked" if not entry.get("token_id")
            else "its API token revoked" if failed is None else "its API token forgotten")
    line(f"logged out of {url} ({entry.get('principal', '?')}; {what})")
    if failed is not None:
        _warn(f"the API did not revoke it ({failed}); if it still works, `trainyard token revoke {entry['token_id']}`")
    if token_source(url):
        _warn(f"commands to {url} still send {token_source(url)}")


@cli.command()
def whoami(as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Who the API takes you for: name, kind, owner, the project commands act in, your projects and roles."""
    client = connect(api)
    me = client.me()
    if as_json:
        return print_json(me)
    rows = [("name", me["name"]), ("kind", me["kind"].replace("_", " ")),
            ("owner", "yes (manages users and projects)" if me["owner"] else "no"),
            ("project", me["project"]), ("projects", _roles(me.get("projects") or {}))]
    if me.get("scopes") is not None:
        rows.append(("scopes", ", ".join(me["scopes"])))
    rows += [("api", client.base_url), ("credentials", token_source(client.base_url) or "none")]
    grid(rows)


# ---- projects and members -------------------------------------------------------------------------------
project_cli = group("Projects: every job, model and deployment belongs to one.")
cli.add_typer(project_cli, name="project")
member_cli = group("Who may do what in a project: viewer, engineer, deployer, admin.")
cli.add_typer(member_cli, name="member")


@project_cli.command("create")
def project_create(name: str,
                   description: Annotated[str, typer.Option("--description", "-d", help="what it is for")] = "",
                   as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A new project (owners); you are its first admin."""
    p = connect(api).create_project(name, description)
    if as_json:
        return print_json(p)
    line(f"project {p['name']} created; you are its admin (`trainyard project use {p['name']}` to work in it)")


@project_cli.command("list")
def project_list(as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """The projects you can see (owners: all), your role in each; * marks the one commands act in."""
    client = connect(api)
    out = client.projects()
    if as_json:
        return print_json(out)
    current = client.me()["project"]
    table = Table(title=f"{out['total']} projects", box=None)
    for col in ("", "name", "role", "description", "created by", "created"):
        table.add_column(col, no_wrap=col in ("", "name", "role", "created"), overflow="fold")
    for p in out["items"]:
        table.add_row("*" if p["name"] == current else "", escape(p["name"]), p.get("role") or "-",
                      escape(p.get("description") or ""), escape(p.get("created_by") or "-"), when(p["created_at"]))
    console.print(table)


@project_cli.command("use")
def project_use(name: str, api: ApiOpt = None) -> None:
    """Act in this project from now on (stored with your credentials for this API; TRAINYARD_PROJECT overrides)."""
    client = connect(api)
    client.get_project(name)  # 404 when you cannot see it: nothing is stored
    url = client.base_url
    save_credentials(url, {**stored_credentials(url), "project": name})
    line(f"commands to {url} act in project {name}")
    if (env := os.environ.get("TRAINYARD_PROJECT")) and env != name:
        _warn(f"note: TRAINYARD_PROJECT={env} is set and wins until it is unset")


@project_cli.command("show")
def project_show(name: str, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A project: description, creator, quotas, your role and its members."""
    client = connect(api)
    p = client.get_project(name)
    members = client.members(name)["items"]
    if as_json:
        return print_json({**p, "members": members})
    quotas = ", ".join(f"{k} {v:g}" for k, v in sorted((p.get("quotas") or {}).items())) or "none"
    grid([("project", p["name"]), ("description", p.get("description") or "-"),
          ("created", f"{when(p['created_at'])} by {p.get('created_by') or '-'}"), ("your role", p.get("role") or "-"),
          ("quotas", quotas)])
    _members_table(members)


@cli.command()
def usage(project: Annotated[Optional[str], typer.Argument(help="default: the project you act in")] = None,
          as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A project's use against each of its quotas."""
    client = connect(api)
    name = project or client.me()["project"]
    u = client.usage(name)
    if as_json:
        return print_json(u)
    table = Table(title=f"project {escape(name)}: use against quotas", box=None)
    for col in ("quota", "used", "limit", "what it counts"):
        table.add_column(col, no_wrap=col != "what it counts")
    for quota, q in u["quotas"].items():
        limit = "unlimited" if q["limit"] is None else f"{q['limit']:g}"
        table.add_row(quota, f"{q['used']:g}", limit, escape(q["description"]))
    console.print(table)


@project_cli.command("quotas")
def project_quotas(project: str,
                   quota: Annotated[list[str], typer.Option("--set", "-s", help="name=limit (limit 'none': unlimited); "
                                                            "repeatable; the ones not given become unlimited")],
                   reason: WhyOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Replace a project's quotas (its admins)."""
    quotas: dict[str, float | None] = {}
    for item in quota:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: the syntax is name=limit", param_hint="--set")
        try:
            quotas[name] = None if value.lower() in ("none", "null", "") else float(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: the limit must be a number or 'none'", param_hint="--set") from None
    p = connect(api).set_quotas(project, quotas, reason)
    if as_json:
        return print_json(p)
    line(f"project {project} quotas: " + (", ".join(f"{k} {v:g}" for k, v in sorted(p["quotas"].items()))
                                                  or "none (unlimited)"))


def _members_table(members: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(members)} members", box=None)
    for col in ("principal", "role", "set by", "set at"):
        table.add_column(col, no_wrap=True)
    for m in members:
        table.add_row(escape(m["principal"]), m["role"], escape(m.get("set_by") or "-"), when(m["set_at"]))
    console.print(table)


@member_cli.command("add")
def member_add(project: str, user: Annotated[str, typer.Argument(help="a user or service account")],
               role: RoleChoice, reason: WhyOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Give a user or service account a role in the project (or change it); needs the project's admin role."""
    out = connect(api).set_member(project, user, role.value, reason)
    if as_json:
        return print_json(out)
    line(f"{user} is {role.value} in {project}")


@member_cli.command("remove")
def member_remove(project: str, user: str, reason: WhyOpt = None, as_json: JsonOpt = False,
                  api: ApiOpt = None) -> None:
    """Take a user or service account out of the project."""
    out = connect(api).remove_member(project, user, reason)
    if as_json:
        return print_json(out)
    line(f"{user} removed from {project}")


@member_cli.command("list")
def member_list(project: str, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """The project's members and their roles."""
    out = connect(api).members(project)
    if as_json:
        return print_json(out)
    _members_table(out["items"])


# ---- users and service accounts --------------------------------------------------------------------------
user_cli = group("Users (owners manage them).")
cli.add_typer(user_cli, name="user")
sa_cli = group("Service accounts: principals for scripts and CI, with tokens of their own.")
cli.add_typer(sa_cli, name="service-account")


@user_cli.command("create")
def user_create(name: str,
                owner: Annotated[bool, typer.Option("--owner", help="the global owner role too")] = False,
                password_stdin: PasswordStdinOpt = False, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A new user with a password (12 or more characters, not a common one); prompted unless --password-stdin."""
    client = connect(api)
    u = client.create_user(name, _password(password_stdin, confirm=True), owner)
    if as_json:
        return print_json(u)
    line(f"user {u['name']} created" + (" (owner)" if u["owner"] else "")
         + f"; give it a role with `trainyard member add PROJECT {u['name']} ROLE`")


@user_cli.command("list")
def user_list(as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Users and service accounts, with their projects and roles (owners)."""
    out = connect(api).users()
    if as_json:
        return print_json(out)
    table = Table(title=f"{out['total']} users and service accounts", box=None)
    for col in ("name", "kind", "owner", "state", "projects", "created"):
        table.add_column(col, no_wrap=col not in ("projects",), overflow="fold")
    for u in out["items"]:
        table.add_row(escape(u["name"]), u["kind"].replace("_", " "), "yes" if u["owner"] else "",
                      "[red]disabled[/red]" if u["disabled"] else "[green]active[/green]",
                      escape(_roles(u.get("projects") or {})), when(u.get("created_at")))
    console.print(table)


@user_cli.command("disable")
def user_disable(name: str, reason: WhyOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Disable a user or service account: its tokens and sessions stop working at once; its history stays."""
    u = connect(api).disable_user(name, reason)
    if as_json:
        return print_json(u)
    line(f"{u['kind'].replace('_', ' ')} {u['name']} disabled")


@sa_cli.command("create")
def service_account_create(name: str,
                           description: Annotated[str, typer.Option("--description", "-d")] = "",
                           as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A new service account (owners); then `member add` it and `token create --for` it."""
    sa = connect(api).create_service_account(name, description)
    if as_json:
        return print_json(sa)
    line(f"service account {sa['name']} created; give it a role with `trainyard member add PROJECT {sa['name']} "
         f"ROLE` and a token with `trainyard token create NAME --for {sa['name']}`")


# ---- API tokens ---------------------------------------------------------------------------------------------
token_cli = group("API tokens (ty_…) for scripts, CI and curl.")
cli.add_typer(token_cli, name="token")


@token_cli.command("create")
def token_create(name: str,
                 scope: Annotated[list[str], typer.Option("--scope", "-s", help="an action pattern it may use: '*', "
                                                          "'*.read', 'job.*', 'deployment.write' … (repeat; "
                                                          "default '*': all of yours)")] = [],
                 expires_in_days: Annotated[float, typer.Option("--expires-in-days", help="days it lives "
                                                                "(up to 366)")] = 90,
                 for_: Annotated[Optional[str], typer.Option("--for", help="a service account to make it for "
                                                                           "(owners)")] = None,
                 as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """A new API token; the token is shown this once (only its hash is kept). Send it as
    `Authorization: Bearer ty_…` or TRAINYARD_TOKEN."""
    t = connect(api).create_token(name, scope or None, expires_in_days, for_)
    if as_json:
        return print_json(t)
    line(t["token"])
    expires = f"expires {when(t['expires_at'])}" if t.get("expires_at") else "never expires"
    _warn(f"token {t['id']} ({t['name']} for {t['principal']}: {', '.join(t['scopes'])}; {expires}). Keep it now: "
          "it is shown only this once, the service keeps only its hash.")


@token_cli.command("list")
def token_list(as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Your API tokens (owners: everyone's): their prefix, never the token."""
    out = connect(api).tokens()
    if as_json:
        return print_json(out)
    table = Table(title=f"{len(out['items'])} API tokens", box=None)
    for col in ("id", "principal", "name", "prefix", "scopes", "expires", "state"):
        table.add_column(col, no_wrap=col in ("id", "prefix", "expires", "state"), overflow="fold",
                         min_width=36 if col == "id" else None)
    for t in out["items"]:
        state = "[red]revoked[/red]" if t.get("revoked_at") else "[green]active[/green]"
        table.add_row(str(t["id"]), escape(t["principal"]), escape(t["name"]), escape(t["prefix"]),
                      escape(", ".join(t["scopes"])), when(t.get("expires_at")) if t.get("expires_at") else "never",
                      state)
    console.print(table)


def token_id(client: TrainyardClient, text: str) -> str:
    """The whole id of the token `text` names (a UUID, or the first 8 or more hex digits of one)."""
    def matches(prefix: str) -> tuple[list[str], int]:
        found = [str(t["id"]) for t in client.tokens()["items"] if str(t["id"]).replace("-", "").startswith(prefix)]
        return found[: ids.SHOWN], len(found)
    return ids.resolve(text, "token", "token_id", matches)


@token_cli.command("revoke")
def token_revoke(token: TokenIdArg, reason: WhyOpt = None, as_json: JsonOpt = False, api: ApiOpt = None) -> None:
    """Revoke an API token: every process refuses it within a second."""
    client = connect(api)
    t = client.revoke_token(token_id(client, token), reason)
    if as_json:
        return print_json(t)
    line(f"{t['id']} ({t['name']} for {t['principal']}) revoked")
