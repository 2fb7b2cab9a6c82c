"""The identity commands of the `trainyard` CLI (login, logout, whoami, projects, members, users, service accounts,
API tokens) against a live `trainyard up`. The CLI runs in-process with the stack's data dir (so, as on the machine
that ran `./dev up`, it sends the first owner's token from admin-token until someone logs in) and a config folder
of the test's own (the credentials file)."""
from __future__ import annotations

import json
import re
import socket
import stat
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.client import TrainyardError
from tests.support.auth import bearer
from tests.support.cli import one_error_line, trainyard
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
PASSWORD = "a long enough passphrase"
SUBMIT = ("submit", "--framework", "lightgbm", "--task", "binary_classification", "--dataset",
          "builtin://breast_cancer", "-p", "n_estimators=5")


@pytest.fixture
def credentials(stack: Stack, cli_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The credentials file the CLI will use (it does not exist yet); the CLI talks to the stack."""
    for var in ("TRAINYARD_TOKEN", "TRAINYARD_PROJECT", "TRAINYARD_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(stack.data_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "trainyard" / "credentials.json"


def api(stack: Stack) -> str:
    return stack.endpoints()["api"].rstrip("/")


def ok(*args: str, input: str | None = None) -> str:
    """The command's output (it must succeed), each line without the spaces a table pads it with."""
    code, output = trainyard(*args, input=input)
    assert code == 0, output
    return "\n".join(row.rstrip() for row in output.splitlines()) + "\n"


def new_user(prefix: str = "u") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    assert f"user {name} created" in ok("user", "create", name, "--password-stdin", input=PASSWORD + "\n")
    return name


def login(name: str) -> str:
    return ok("login", "--name", name, "--password-stdin", input=PASSWORD + "\n")


def entry(credentials: Path, stack: Stack) -> dict[str, Any]:
    return json.loads(credentials.read_text()).get(api(stack), {})


def me_status(stack: Stack, token: str) -> int:
    return httpx.get(f"{api(stack)}/api/v1/me", headers=bearer(token), timeout=10).status_code


def test_whoami_is_the_first_owner_on_the_machine_that_ran_up(credentials: Path) -> None:
    out = ok("whoami")
    assert re.search(r"name\s+admin\n", out) and "yes (manages users and projects)" in out, out
    assert re.search(r"project\s+default\n", out) and "default (admin)" in out, out
    assert "admin-token" in out  # where the credential came from
    me = json.loads(ok("whoami", "--json"))
    assert me["name"] == "admin" and me["owner"] is True and me["kind"] == "user"
    assert not credentials.exists()  # nothing stored by merely using the owner's token


def test_login_with_a_password_stores_an_api_token_0600_and_never_the_password(credentials: Path,
                                                                                stack: Stack) -> None:
    name = new_user()
    out = login(name)
    assert f"logged in to {api(stack)} as {name}" in out and str(credentials) in out, out
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    text = credentials.read_text()
    assert PASSWORD not in text and "eyJ" not in text  # neither the password nor the login's JWT
    stored = entry(credentials, stack)
    assert stored["token"].startswith("ty_") and stored["principal"] == name
    assert me_status(stack, stored["token"]) == 200

    out = ok("whoami")
    assert re.search(rf"name\s+{name}\n", out) and re.search(r"owner\s+no\n", out), out
    assert f"the login stored in {credentials}" in out
    mine = json.loads(ok("token", "list", "--json"))["items"]
    assert [(t["name"], t["principal"]) for t in mine] == [(f"cli@{socket.gethostname()}", name)]
    assert mine[0]["expires_at"] and str(mine[0]["id"]) == stored["token_id"]

    # logging in again replaces the stored token and revokes the one the first login made
    login(name)
    again = entry(credentials, stack)
    assert again["token"] != stored["token"] and me_status(stack, again["token"]) == 200
    eventually(lambda: me_status(stack, stored["token"]) == 401, timeout=5, message="the old cli token still works")


def test_a_wrong_password_is_one_line_and_stores_nothing(credentials: Path) -> None:
    name = new_user()
    line = one_error_line(*trainyard("login", "--name", name, "--password-stdin", input="not the password!!\n"))
    assert line.startswith("error: 401") and "password" in line and "trainyard login" not in line, line
    assert not credentials.exists()


def test_project_create_use_show_list(credentials: Path, stack: Stack) -> None:
    p = f"p-{uuid.uuid4().hex[:8]}"
    assert f"project {p} created" in ok("project", "create", p, "-d", "vision models")
    assert f"act in project {p}" in ok("project", "use", p)
    assert entry(credentials, stack) == {"project": p}  # the owner's token stays the admin-token file's
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert re.search(rf"project\s+{p}\n", ok("whoami"))
    listed = ok("project", "list")
    assert re.search(rf"\*\s+{p}\s+admin\s+vision models\s+admin", listed), listed
    shown = ok("project", "show", p)
    assert "vision models" in shown and re.search(r"admin\s+admin\s+admin", shown), shown
    line = one_error_line(*trainyard("project", "use", "no-such-project"))
    assert "404" in line and "no-such-project" in line
    assert entry(credentials, stack) == {"project": p}


def test_member_add_and_a_viewer_is_told_why_it_cannot_submit(credentials: Path, stack: Stack) -> None:
    p = f"p-{uuid.uuid4().hex[:8]}"
    ok("project", "create", p)
    viewer = new_user("viewer")
    assert f"{viewer} is viewer in {p}" in ok("member", "add", p, viewer, "viewer", "--reason", "reads dashboards")
    assert re.search(rf"{viewer}\s+viewer\s+admin", ok("member", "list", p))
    code, output = trainyard("member", "add", p, viewer, "boss")
    assert code == 2 and "boss" in output  # not a role: a usage error naming the value

    login(viewer)
    assert re.search(rf"project\s+{p}\n", ok("whoami"))  # the viewer's only project
    line = one_error_line(*trainyard(*SUBMIT))
    assert line.startswith("error: 403 Forbidden: ") and "trainyard login" not in line, line
    assert f"job.submit needs the engineer role in project '{p}'; {viewer} is viewer" in line, line
    ok("jobs")  # reading is a viewer's

    ok("logout")
    assert f"{viewer} removed from {p}" in ok("member", "remove", p, viewer, "--reason", "left")
    assert viewer not in ok("member", "list", p)


def test_token_create_list_revoke_and_a_revoked_token_is_a_clear_401(credentials: Path, stack: Stack,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ci-{uuid.uuid4().hex[:6]}"
    out = ok("token", "create", name, "--scope", "*.read", "--expires-in-days", "30")
    token = out.splitlines()[0]
    assert token.startswith("ty_") and "shown only this once" in out and "*.read" in out, out
    listed = ok("token", "list")
    row = next(r for r in listed.splitlines() if f" {name} " in r)
    assert token[:10] in row and "*.read" in row and "active" in row and token not in listed
    token_id = next(t["id"] for t in json.loads(ok("token", "list", "--json"))["items"] if t["name"] == name)

    monkeypatch.setenv("TRAINYARD_TOKEN", token)
    ok("jobs")
    line = one_error_line(*trainyard("project", "create", f"x-{uuid.uuid4().hex[:6]}"))
    assert "403" in line and "scopes" in line
    monkeypatch.delenv("TRAINYARD_TOKEN")

    assert f"{token_id} ({name} for admin) revoked" in ok("token", "revoke", token_id[:8], "--reason", "rotated")
    assert re.search(rf"{token_id}.*revoked", ok("token", "list"))
    monkeypatch.setenv("TRAINYARD_TOKEN", token)
    line = one_error_line(*trainyard("jobs"))
    assert line.startswith("error: 401 Unauthorized: unknown, revoked or expired token"), line
    assert "TRAINYARD_TOKEN" in line and "trainyard login" in line, line
    monkeypatch.delenv("TRAINYARD_TOKEN")
    line = one_error_line(*trainyard("token", "revoke", token_id))
    assert "409" in line
    line = one_error_line(*trainyard("token", "revoke", "zz"))
    assert "'zz' is not a token id" in line and line.endswith("(field token_id)")


def test_logout_forgets_and_revokes_the_login_token(credentials: Path, stack: Stack) -> None:
    name = new_user()
    login(name)
    token = entry(credentials, stack)["token"]
    out = ok("logout")
    assert f"logged out of {api(stack)} ({name}; its API token revoked)" in out, out
    assert entry(credentials, stack) == {} and stat.S_IMODE(credentials.stat().st_mode) == 0o600
    eventually(lambda: me_status(stack, token) == 401, timeout=5, message="the logged-out token still works")
    assert re.search(r"name\s+admin\n", ok("whoami"))  # back to the owner's token of this machine
    assert "not logged in" in ok("logout")


def test_login_with_a_token_checks_it_and_logout_only_forgets_it(credentials: Path, stack: Stack) -> None:
    sa = f"sa-{uuid.uuid4().hex[:8]}"
    assert f"service account {sa} created" in ok("service-account", "create", sa, "-d", "nightly CI")
    ok("member", "add", "default", sa, "engineer")
    made = json.loads(ok("token", "create", "nightly", "--for", sa, "--json"))
    assert made["principal"] == sa

    line = one_error_line(*trainyard("login", "--token", "ty_not-a-real-token"))
    assert "401" in line and "nothing was stored" in line and not credentials.exists(), line

    assert f"as {sa}" in ok("login", "--token", "-", input=made["token"] + "\n")
    assert entry(credentials, stack) == {"token": made["token"], "principal": sa}
    out = ok("whoami")
    assert re.search(rf"name\s+{sa}\n", out) and "service account" in out and "default (engineer)" in out, out
    assert "only forgotten" in ok("logout")
    assert me_status(stack, made["token"]) == 200  # perhaps in use elsewhere: not revoked


def test_user_list_and_disable(credentials: Path, stack: Stack) -> None:
    name = new_user()
    login(name)
    token = entry(credentials, stack)["token"]
    credentials.unlink()  # the owner's token of this machine again, the user's still valid
    assert re.search(rf"{name}\s+user\s+active", ok("user", "list"))
    assert f"user {name} disabled" in ok("user", "disable", name, "--reason", "left the team")
    assert re.search(rf"{name}\s+user\s+disabled", ok("user", "list"))
    eventually(lambda: me_status(stack, token) == 401, timeout=5, message="a disabled user's token still works")


def test_the_client_logs_in_and_out_of_a_session(credentials: Path, stack: Stack) -> None:
    from api.client import TrainyardClient

    name = new_user()
    with TrainyardClient(api(stack), token="") as anonymous:
        pair = anonymous.login(name, PASSWORD)
    assert pair["token_type"] == "bearer" and pair["expires_in"] > 0
    with TrainyardClient(api(stack), token=pair["access_token"]) as session:
        assert session.me()["name"] == name and session.me()["scopes"] is None
        session.logout()
        with pytest.raises(TrainyardError) as refused:
            session.me()
    assert refused.value.status == 401 and "log in again" in str(refused.value)


def test_a_request_without_credentials_says_how_to_sign_in(credentials: Path, stack: Stack,
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINYARD_API_URL", api(stack))
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(tmp_path / "elsewhere"))  # not the machine that ran `up`
    line = one_error_line(*trainyard("jobs"))
    assert line.startswith("error: 401 Unauthorized: credentials required"), line
    assert line.endswith("no credentials were sent: sign in with `trainyard login` (or set TRAINYARD_TOKEN)"), line


def test_saving_credentials_keeps_other_apis_and_makes_the_file_private(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    from api.client import save_credentials, stored_credentials

    path = tmp_path / "creds.json"
    monkeypatch.setenv("TRAINYARD_CREDENTIALS", str(path))
    path.write_text(json.dumps({"http://other:8000": {"token": "ty_other"}}))
    path.chmod(0o644)  # left readable by something else
    save_credentials("http://here:8000/", {"token": "ty_here", "principal": "alice"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_credentials("http://here:8000") == {"token": "ty_here", "principal": "alice"}
    assert stored_credentials("http://other:8000") == {"token": "ty_other"}
    save_credentials("http://here:8000", None)
    assert json.loads(path.read_text()) == {"http://other:8000": {"token": "ty_other"}}
    assert [p.name for p in tmp_path.iterdir()] == ["creds.json"]  # no temporary file left behind


def test_project_quotas_and_usage(credentials: Path, stack: Stack) -> None:
    p = f"p-{uuid.uuid4().hex[:8]}"
    ok("project", "create", p)
    out = ok("project", "quotas", p, "--set", "max_queued_jobs=3", "--set", "upload_bytes=none", "--reason", "budget")
    assert f"project {p} quotas: max_queued_jobs 3" in out
    usage = json.loads(ok("usage", p, "--json"))
    assert usage["quotas"]["max_queued_jobs"] == {"limit": 3.0, "used": 0.0, "description": usage["quotas"][
        "max_queued_jobs"]["description"]}
    assert re.search(r"max_queued_jobs\s+0\s+3", ok("usage", p))
    code, output = trainyard("project", "quotas", p, "--set", "max_queued_jobs")
    assert code != 0 and "name=limit" in output
