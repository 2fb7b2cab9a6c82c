"""Identity on real PostgreSQL, in-process API: the first owner, users and login, access-token rejections, API
tokens with scopes and revocation, projects and roles (403 for a role without the action, 404 for a project the
caller cannot see), and the actor of every event being the authenticated principal."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from commands.credentials import ALGORITHM, AUDIENCE, ISSUER
from entrypoints.bootstrap import build_services
from infra.settings import Settings
from tests.support.auth import bearer, identity_projection, sign_in_owner
from tests.support.waiting import eventually

PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
def api(module_database_url: str, clickhouse: Any) -> Iterator[tuple[TestClient, Any]]:
    services = build_services(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222",
                                       clickhouse_url=None, data_dir=clickhouse.path.parent))
    with identity_projection(module_database_url), \
            TestClient(create_app(services), raise_server_exceptions=False) as client:
        sign_in_owner(client, services)
        yield client, services
    services.close()


def caught_up(services: Any) -> None:
    """Nothing to wait for: the routes wait for the identity read model (read-your-writes) and reload the cache."""


def anonymous(client: TestClient) -> TestClient:
    c = TestClient(client.app, raise_server_exceptions=False)
    return c


def user(client: TestClient, services: Any, name: str | None = None) -> tuple[str, str]:
    """A new user logged in: (name, access token)."""
    name = name or f"u-{uuid.uuid4().hex[:8]}"
    r = client.post("/api/v1/users", json={"name": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    r = anonymous(client).post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return name, r.json()["access_token"]


def test_the_first_owner_token_works_and_requests_without_credentials_are_401(api: Any) -> None:
    client, services = api
    me = client.get("/api/v1/me").json()
    assert me["name"] == "admin" and me["owner"] is True and me["projects"] == {"default": "admin"}
    token_file = services.settings.data_dir / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    r = anonymous(client).get("/api/v1/training/jobs")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert anonymous(client).get("/healthz").status_code == 200


def test_login_refresh_logout(api: Any) -> None:
    client, services = api
    name, access = user(client, services)
    c = anonymous(client)
    assert c.get("/api/v1/me", headers=bearer(access)).json()["name"] == name
    pair = c.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD}).json()
    again = c.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert again.status_code == 200
    # the old refresh token was rotated out
    assert c.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401
    new_access = again.json()["access_token"]
    assert c.post("/api/v1/auth/logout", headers=bearer(new_access)).status_code == 204
    assert c.get("/api/v1/me", headers=bearer(new_access)).status_code == 401
    assert c.post("/api/v1/auth/refresh", json={"refresh_token": again.json()["refresh_token"]}).status_code == 401
    # a wrong password and an unknown user answer the same
    for who, pw in ((name, "wrong password!!"), ("nobody-here", PASSWORD)):
        r = c.post("/api/v1/auth/token", data={"username": who, "password": pw})
        assert r.status_code == 401 and "password" in r.json()["detail"]


def test_access_tokens_are_refused_for_every_flaw(api: Any) -> None:
    client, services = api
    name, access = user(client, services)
    c = anonymous(client)
    secret = services.auth.access_tokens.secret
    claims = jwt.decode(access, secret, algorithms=[ALGORITHM], audience=AUDIENCE)
    now = int(time.time())
    forged = {
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "wrong key": jwt.encode(claims, b"x" * 32, algorithm=ALGORITHM),
        "wrong audience": jwt.encode({**claims, "aud": "someone-else"}, secret, algorithm=ALGORITHM),
        "wrong issuer": jwt.encode({**claims, "iss": "elsewhere"}, secret, algorithm=ALGORITHM),
        "expired": jwt.encode({**claims, "exp": now - 10}, secret, algorithm=ALGORITHM),
        "no jti": jwt.encode({k: v for k, v in claims.items() if k != "jti"}, secret, algorithm=ALGORITHM),
        "other algorithm": jwt.encode(claims, secret + b"-but-longer-for-hs512-keys-to-be-happy", algorithm="HS512"),
        "garbage": "not.a.token",
    }
    for what, token in forged.items():
        r = c.get("/api/v1/me", headers=bearer(token))
        assert r.status_code == 401, what
    assert c.get("/api/v1/me", headers=bearer(access)).status_code == 200
    # two Authorization headers: 400
    r = c.get("/api/v1/me", headers=[("Authorization", f"Bearer {access}"), ("Authorization", "Bearer x")])
    assert r.status_code == 400


def test_passwords_are_checked_and_never_stored_in_clear(api: Any) -> None:
    client, services = api
    for bad in ("short", "password123", "qwerty123456", "x" * 2000):
        r = client.post("/api/v1/users", json={"name": f"p-{uuid.uuid4().hex[:6]}", "password": bad})
        assert r.status_code == 422 and r.json()["field"] == "password", bad
    name, _ = user(client, services)
    with services.pool.connection() as conn:
        stored = conn.execute("SELECT convert_from(state, 'UTF8') FROM trainingapplication_events "
                              "WHERE originator_id = (SELECT id FROM principals WHERE name = %s)", (name,)).fetchall()
    assert stored and all(PASSWORD not in s[0] for s in stored)
    assert any("$argon2id$" in s[0] for s in stored)


def test_api_tokens_scopes_and_revocation(api: Any) -> None:
    client, services = api
    r = client.post("/api/v1/tokens", json={"name": "ci", "scopes": ["*.read"]})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert token.startswith("ty_") and r.json()["prefix"] == token[:10]
    caught_up(services)
    c = anonymous(client)
    assert c.get("/api/v1/training/jobs", headers=bearer(token)).status_code == 200
    r = c.post("/api/v1/projects", json={"name": "nope"}, headers=bearer(token))
    assert r.status_code == 403 and "scopes" in r.json()["detail"]
    listed = client.get("/api/v1/tokens").json()["items"]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    token_id = r_id = next(t["id"] for t in listed if t["name"] == "ci")
    assert client.request("DELETE", f"/api/v1/tokens/{token_id}").status_code == 200
    assert c.get("/api/v1/training/jobs", headers=bearer(token)).status_code == 401
    assert client.request("DELETE", f"/api/v1/tokens/{r_id}").status_code == 409
    r = client.post("/api/v1/tokens", json={"name": "bad", "scopes": ["nothing.matches"]})
    assert r.status_code == 422 and r.json()["field"] == "scopes"


def test_roles_403_and_other_projects_404(api: Any) -> None:
    client, services = api
    p = f"p-{uuid.uuid4().hex[:6]}"
    assert client.post("/api/v1/projects", json={"name": p}).status_code == 201
    viewer, viewer_token = user(client, services)
    outsider, outsider_token = user(client, services)
    r = client.put(f"/api/v1/projects/{p}/members/{viewer}", json={"role": "viewer", "reason": "reads dashboards"})
    assert r.status_code == 200, r.text
    caught_up(services)
    c = anonymous(client)
    as_viewer = {**bearer(viewer_token), "X-Trainyard-Project": p}
    assert c.get("/api/v1/training/jobs", headers=as_viewer).status_code == 200
    r = c.post("/api/v1/training/jobs", headers=as_viewer, json={
        "name": "x", "framework": "lightgbm", "task": "binary_classification",
        "dataset": {"uri": "builtin://breast_cancer"}, "params": {}})
    assert r.status_code == 403 and "engineer" in r.json()["detail"]
    as_outsider = {**bearer(outsider_token), "X-Trainyard-Project": p}
    assert c.get("/api/v1/training/jobs", headers=as_outsider).status_code == 404
    assert c.get(f"/api/v1/projects/{p}", headers=bearer(outsider_token)).status_code == 404
    assert c.get("/api/v1/projects", headers=bearer(outsider_token)).json()["items"] == []
    # the member change is an event with the actor and the reason
    with services.pool.connection() as conn:
        rows = conn.execute("SELECT convert_from(state, 'UTF8') FROM trainingapplication_events "
                            "WHERE topic LIKE %s", ("%Project.MemberSet%",)).fetchall()
    assert any('"reads dashboards"' in r[0] and viewer in r[0] for r in rows)
    # and the user list is the owner's
    assert c.get("/api/v1/users", headers=bearer(viewer_token)).status_code == 403


def test_the_actor_of_an_event_is_the_principal(api: Any) -> None:
    client, services = api
    name, access = user(client, services)
    r = anonymous(client).post("/api/v1/tokens", json={"name": "mine"},
                               headers={**bearer(access), "X-Trainyard-Actor": "someone-else"})
    assert r.status_code == 201, r.text
    events = list(services.app.events.get(uuid.UUID(r.json()["id"])))
    assert events[0].metadata["actor"] == name


def test_disabled_users_lose_access(api: Any) -> None:
    client, services = api
    name, access = user(client, services)
    caught_up(services)
    assert client.request("DELETE", f"/api/v1/users/{name}").status_code == 200
    assert anonymous(client).get("/api/v1/me", headers=bearer(access)).status_code == 401
    r = anonymous(client).post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
    assert r.status_code == 401


def test_login_is_rate_limited(api: Any) -> None:
    client, services = api
    name = f"rl-{uuid.uuid4().hex[:6]}"
    c = anonymous(client)
    codes = [c.post("/api/v1/auth/token", data={"username": name, "password": "wrong password!!"}).status_code
             for _ in range(12)]
    assert codes[:10] == [401] * 10 and codes[-1] == 429



def test_every_route_declares_its_action() -> None:
    """A route added without allow(...) fails here: every operation of the OpenAPI document names its action."""
    from types import SimpleNamespace

    from domain.access import ACTIONS

    doc = create_app(SimpleNamespace(settings=Settings())).openapi()  # type: ignore[arg-type]
    missing = [f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method, op in ops.items()
               if op.get("x-trainyard-action") not in ACTIONS]
    assert not missing, f"routes without a declared action: {missing}"
    assert len(doc["paths"]) > 40


def _filled(path: str) -> str:
    values = {"job_id": str(uuid.uuid4()), "study_id": str(uuid.uuid4()), "export_id": str(uuid.uuid4()),
              "key_id": str(uuid.uuid4()), "token_id": str(uuid.uuid4()), "version": "1"}
    for part in path.split("/"):
        if part.startswith("{"):
            path = path.replace(part, values.get(part[1:-1], "some-name"))
    return path


def test_every_non_public_route_refuses_a_request_without_credentials(api: Any) -> None:
    client, _ = api
    doc = client.app.openapi()
    c = anonymous(client)
    wrong = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if op["x-trainyard-action"] == "public":
                continue
            r = c.request(method.upper(), _filled(path), json={})
            if r.status_code != 401:
                wrong.append(f"{method.upper()} {path}: {r.status_code}")
    assert not wrong, wrong


def test_the_documented_permission_table_names_every_action() -> None:
    from pathlib import Path

    from domain.access import ACTIONS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    table = doc[doc.index("### Projects, roles and the permission table"):doc.index("### What is hashed where")]
    assert not [a for a in ACTIONS if f"`{a}`" not in table]


def test_a_revoked_token_stops_working_in_another_process_within_a_second(api: Any) -> None:
    """A second API process (its own identity cache and LISTEN connection) on the same database: once the revoke
    answers, the other refuses the token within a second (the read model's NOTIFY reloads its cache)."""
    client, services = api
    other = build_services(services.settings)
    try:
        with TestClient(create_app(other), raise_server_exceptions=False) as elsewhere:
            r = client.post("/api/v1/tokens", json={"name": "two-processes"})
            token, token_id = r.json()["token"], r.json()["id"]

            def works() -> bool:
                return elsewhere.get("/api/v1/me", headers=bearer(token)).status_code == 200
            eventually(works, timeout=10, interval=0.05, message="the other process never knew the token")
            assert client.request("DELETE", f"/api/v1/tokens/{token_id}").status_code == 200
            revoked_at = time.monotonic()
            eventually(lambda: not works(), timeout=1.0, interval=0.02,
                       message="the other process still took the revoked token after a second")
            print(f"refused elsewhere {time.monotonic() - revoked_at:.3f} s after the revoke answered")
    finally:
        other.close()
