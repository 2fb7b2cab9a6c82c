"""The hostile-tenant matrix, generated from the OpenAPI document (issue 17): every operation whose action is a
project action × every role × own or other project. Alpha plants objects whose names and tags carry a canary;
then, for each operation:
- beta's users, acting in beta, naming alpha's objects: 404 (as a missing one; 403 where beta's role lacks the
  action, 422 where the test's empty body is refused first: neither depends on alpha), never a canary in any body;
- beta's users naming project alpha: 404 (they are no members);
- alpha's users on alpha's objects: 403 exactly when their role lacks the operation's action, never 401/403/404
  from access control otherwise.
A new route is in the matrix the moment it is in the document."""
from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.access import PROJECT_ACTIONS, RANK, Role
from tests.support.tenants import ROLES, Tenants, assert_no_canary, isolated_app, make_tenants

pytestmark = pytest.mark.integration
CANARY = f"matrix{uuid.uuid4().hex[:10]}"
QUICK = {"framework": "lightgbm", "task": "binary_classification", "dataset": {"uri": "builtin://breast_cancer"},
         "params": {"n_estimators": 5}}


@pytest.fixture(scope="module")
def world(module_database_url: str, clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root: Path = tmp_path_factory.mktemp("matrix-datasets")
    with isolated_app(module_database_url, clickhouse.path.parent, root) as (client, services):
        tenants = make_tenants(client)
        alpha = tenants.headers("alpha", "admin")
        job = client.post("/api/v1/training/jobs", json={"name": f"{CANARY}-job", "tags": [CANARY], **QUICK},
                          headers=alpha)
        assert job.status_code == 202, job.text
        study = client.post("/api/v1/studies", headers=alpha, json={
            "name": f"{CANARY}-study", **{k: v for k, v in QUICK.items() if k != "params"},
            "objective": {"metric": "auc", "direction": "maximize"}, "fixed_params": {"n_estimators": 5},
            "search_space": {"num_leaves": {"type": "int", "low": 4, "high": 64}}, "n_trials": 1, "max_parallel": 1})
        assert study.status_code == 202, study.text
        model = client.post("/api/v1/models", json={"name": f"{CANARY}-model"}, headers=alpha)
        assert model.status_code == 201, model.text
        key = client.post("/api/v1/api-keys", json={"name": f"{CANARY}-key", "deployments": "*"}, headers=alpha)
        assert key.status_code == 201, key.text
        code = client.post("/api/v1/code", files={"file": (f"{CANARY}.tar.gz", _bundle())}, headers=alpha)
        assert code.status_code in (200, 201), code.text
        schedule = client.post("/api/v1/schedules", headers=alpha, json={
            "name": f"{CANARY}-schedule", "cron": "0 3 * * *", "timezone": "UTC", "enabled": False,
            "job": {"name": f"{CANARY}-nightly", **QUICK}})
        assert schedule.status_code in (200, 201, 202), schedule.text
        objects = {"job_id": job.json()["job_id"], "study_id": study.json()["study_id"], "name": f"{CANARY}-model",
                   "key_id": key.json()["id"], "code_id": code.json()["code_id"],
                   "schedule_id": schedule.json()["id"], "export_id": str(uuid.uuid4()), "version": "1", "alias": "production",
                   "retrain_id": str(uuid.uuid4()),
                   "project": "alpha", "principal": "admin"}  # removing the owner from alpha harms no test user
        yield client, tenants, objects, client.app.openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(method.upper(), path, op["x-trainyard-action"]) for path, ops in doc["paths"].items()
            for method, op in ops.items() if op["x-trainyard-action"] in PROJECT_ACTIONS]


def filled(path: str, objects: dict[str, str]) -> str:
    for name, value in objects.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path
    return path


def unechoed(r: Any, objects: dict[str, str]) -> str:
    """The body less what the request itself said (a 404 may name the model the caller asked for)."""
    text = r.text
    for value in objects.values():
        text = text.replace(value, "")
    return text


def _bundle() -> bytes:
    """A code bundle whose one file carries the canary."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        data = f"print('{CANARY}')\n".encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def call(client: Any, method: str, path: str, headers: dict[str, str]) -> Any:
    if path.endswith("/datasets") and method == "POST":
        return client.post(path, headers=headers, files={"file": ("x.csv", b"a,b\n1,2\n", "text/csv")})
    if path.endswith("/code") and method == "POST":
        return client.post(path, headers=headers, files={"file": ("x.tar.gz", b"not a bundle")})
    return client.request(method, path, headers=headers, json={} if method in ("POST", "PUT", "PATCH") else None)


def test_every_project_operation_answers_as_the_permission_table_says(world: Any) -> None:
    client, tenants, objects, doc = world
    ops = operations(doc)
    assert len(ops) > 35
    wrong: list[str] = []
    for method, template, action in ops:
        names_an_object = "{" in template
        path = filled(template, objects)
        for role in ROLES:
            # beta acting in beta, naming alpha's objects: 404 for whatever names one; nothing of alpha anywhere
            r = call(client, method, path.replace("/projects/alpha", "/projects/beta") if "/projects/alpha" in path
                     else path, tenants.headers("beta", role))
            # (422: the empty body this test sends is refused before any object is looked up, which tells nothing)
            if names_an_object and "{project}" not in template and r.status_code not in (403, 404, 422):
                wrong.append(f"beta {role} {method} {template} → {r.status_code} (want 404, or 403 for the role)")
            assert_no_canary(unechoed(r, objects), [CANARY], f"beta {role} {method} {template}")
            # beta naming project alpha: not a member
            r = call(client, method, path, tenants.headers("beta", role, acting_in="alpha"))
            if r.status_code != 404:
                wrong.append(f"beta {role} in alpha {method} {template} → {r.status_code} (want 404)")
            assert_no_canary(unechoed(r, objects), [CANARY], f"beta {role} in alpha {method} {template}")
            # alpha's own: 403 exactly when the role lacks the action
            r = call(client, method, path, tenants.headers("alpha", role))
            lacks = RANK[Role(role)] < RANK[PROJECT_ACTIONS[action]]
            if lacks and r.status_code != 403:
                wrong.append(f"alpha {role} {method} {template} → {r.status_code} (want 403: needs "
                             f"{PROJECT_ACTIONS[action].value})")
            if not lacks and r.status_code in (401, 403):
                wrong.append(f"alpha {role} {method} {template} → {r.status_code}: {r.text[:200]}")
    assert not wrong, "\n".join(wrong)
