"""A hostile tenant sees nothing of another project (issue 17 item 3): two projects, `alpha` and `beta`, a user per
role in each (tests/support/tenants.py). Another project's object is 404 on every route that names it, exactly as a
missing one; lists and their totals show only the caller's project; a role without the action is 403; and no
response body of beta's users ever holds a canary string planted in alpha's objects.

Sections: the shared app and tenants; jobs, studies and datasets; models, deployments and API keys."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.support.tenants import ROLES, Tenants, assert_no_canary, isolated_app, make_tenants

pytestmark = pytest.mark.integration


# ==== shared: the app (every read model beside it) and the two tenants =============================================
@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dataset-root")


@pytest.fixture(scope="module")
def stack(module_database_url: str, clickhouse: Any, dataset_root: Path) -> Iterator[tuple[Any, Any]]:
    # chDB allows one data path per process: share the session's (data_dir/chdb is the clickhouse fixture's path)
    with isolated_app(module_database_url, clickhouse.path.parent, dataset_root) as (client, services):
        yield client, services


@pytest.fixture(scope="module")
def tenants(stack: tuple[Any, Any]) -> Tenants:
    return make_tenants(stack[0])


# ==== jobs, studies, datasets =========================================================================================
JOBS, STUDIES, DATASETS, COMPARE = ("/api/v1/training/jobs", "/api/v1/studies", "/api/v1/datasets",
                                    "/api/v1/experiments/compare")
CANARY = f"canary{uuid.uuid4().hex[:10]}"  # in every name and tag alpha plants; never in a body beta gets


def job_body(name: str, **over: Any) -> dict[str, Any]:
    body = {"name": name, "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}, "tags": [f"{name}-tag"]}
    return {**body, **over}


def study_body(name: str, **over: Any) -> dict[str, Any]:
    body = {"name": name, "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "objective": {"metric": "auc", "direction": "maximize"},
            "search_space": {"num_leaves": {"type": "int", "low": 4, "high": 64}},
            "fixed_params": {"n_estimators": 5}, "n_trials": 2, "max_parallel": 1, "tags": [f"{name}-tag"]}
    return {**body, **over}


def _csv(rows: int = 30) -> bytes:
    return pd.DataFrame({"x": range(rows), "z": [0.5] * rows, "y": [0, 1] * (rows // 2)}).to_csv(index=False).encode()


@pytest.fixture(scope="module")
def alpha(stack: tuple[Any, Any], tenants: Tenants) -> dict[str, Any]:
    """What alpha's engineer made, every name and tag carrying the canary: a job, a study, an upload."""
    client, _ = stack
    eng = tenants.headers("alpha", "engineer")
    r = client.post(JOBS, json=job_body(f"{CANARY}-job"), headers=eng)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    r = client.post(STUDIES, json=study_body(f"{CANARY}-study"), headers=eng)
    assert r.status_code == 202, r.text
    study_id = r.json()["study_id"]
    r = client.post(DATASETS, files={"file": (f"{CANARY}-data.csv", _csv())}, headers=eng)
    assert r.status_code == 201, r.text
    return {"job_id": job_id, "study_id": study_id, "upload_uri": r.json()["uri"]}


def _routes_naming(alpha: dict[str, Any]) -> list[tuple[str, str]]:
    job, study = alpha["job_id"], alpha["study_id"]
    return [("GET", f"{JOBS}/{job}"), ("GET", f"{JOBS}/{job}/metrics"), ("GET", f"{JOBS}/{job}/metrics/valid_loss"),
            ("DELETE", f"{JOBS}/{job}"), ("GET", f"{COMPARE}?job_ids={job}"),
            ("GET", f"{STUDIES}/{study}"), ("GET", f"{STUDIES}/{study}/trials"),
            ("GET", f"{STUDIES}/{study}/history"), ("GET", f"{STUDIES}/{study}/importances"),
            ("DELETE", f"{STUDIES}/{study}")]


def test_another_projects_jobs_and_studies_are_404_on_every_route_that_names_them(
        stack: tuple[Any, Any], tenants: Tenants, alpha: dict[str, Any]) -> None:
    client, _ = stack
    missing = {"GET": f"{JOBS}/{uuid.uuid4()}", "DELETE": f"{STUDIES}/{uuid.uuid4()}"}
    for role in ROLES:
        for method, path in _routes_naming(alpha):
            action = "cancel" if method == "DELETE" else "read"
            if action == "cancel" and role == "viewer":
                continue  # 403 before anything is looked up (below)
            r = client.request(method, path, headers=tenants.headers("beta", role))
            assert r.status_code == 404, (role, method, path, r.text)
            assert_no_canary(r.content, [CANARY], f"beta {role} {method} {path}")
            assert r.json()["field"] in ("job_id", "study_id", "job_ids"), r.text
        # the same answer as for an id that names nothing at all (no existence leak)
        for method, path in missing.items():
            r = client.request(method, path, headers=tenants.headers("beta", role if role != "viewer" else "admin"))
            assert r.status_code == 404 and "no " in r.json()["detail"]
    # alpha's own users see them; its viewer may not cancel (403), and a cancel from beta changed nothing
    for method, path in _routes_naming(alpha):
        if path.endswith("/metrics/valid_loss"):  # the job is found; it has no points yet
            r = client.get(path, headers=tenants.headers("alpha", "viewer"))
            assert r.status_code == 404 and r.json()["field"] == "name", r.text
        elif method == "GET":
            r = client.get(path, headers=tenants.headers("alpha", "viewer"))
            assert r.status_code == 200, (path, r.text)
        else:
            assert client.delete(path, headers=tenants.headers("alpha", "viewer")).status_code == 403
    assert client.get(f"{JOBS}/{alpha['job_id']}", headers=tenants.headers("alpha", "viewer")).json()["status"] \
        == "queued"
    assert client.get(f"{STUDIES}/{alpha['study_id']}",
                      headers=tenants.headers("alpha", "viewer")).json()["status"] == "running"


def test_a_beta_user_naming_alpha_as_its_project_is_refused(stack: tuple[Any, Any], tenants: Tenants,
                                                             alpha: dict[str, Any]) -> None:
    client, _ = stack
    for method, path in _routes_naming(alpha):
        r = client.request(method, path, headers=tenants.headers("beta", "admin", acting_in="alpha"))
        assert r.status_code == 404, (method, path, r.text)
        assert_no_canary(r.content, [CANARY], path)


def test_lists_and_totals_show_only_the_callers_project(stack: tuple[Any, Any], tenants: Tenants,
                                                        alpha: dict[str, Any]) -> None:
    client, _ = stack
    beta = tenants.headers("beta", "viewer")
    before = {path: client.get(path, headers=beta).json() for path in (JOBS, STUDIES, DATASETS)}
    # alpha makes more; beta's lists and totals do not move
    eng = tenants.headers("alpha", "engineer")
    assert client.post(JOBS, json=job_body(f"{CANARY}-job2"), headers=eng).status_code == 202
    assert client.post(STUDIES, json=study_body(f"{CANARY}-study2"), headers=eng).status_code == 202
    assert client.post(DATASETS, files={"file": (f"{CANARY}-more.csv", _csv(40))}, headers=eng).status_code == 201
    for path in (JOBS, STUDIES, DATASETS):
        r = client.get(path, headers=beta)
        assert r.status_code == 200 and r.json() == before[path], path
        assert_no_canary(r.content, [CANARY, alpha["job_id"], alpha["study_id"]], path)
    # filters cannot reach across either: a tag, an id prefix, a study's trials
    for query in (f"?tag={CANARY}-job-tag", f"?id_prefix={alpha['job_id'][:8]}",
                  f"?study_id={alpha['study_id']}"):
        r = client.get(JOBS + query, headers=beta)
        assert r.status_code == 200 and r.json()["total"] == 0, query
    r = client.get(f"{STUDIES}?id_prefix={alpha['study_id'][:8]}", headers=beta)
    assert r.json()["total"] == 0
    # beta's own show up for beta, and alpha's lists count alpha's
    assert client.post(JOBS, json=job_body("beta-job"), headers=tenants.headers("beta", "engineer")).status_code == 202
    mine = client.get(JOBS, headers=beta).json()
    assert mine["total"] == before[JOBS]["total"] + 1 and mine["items"][0]["name"] == "beta-job"
    theirs = client.get(JOBS, headers=tenants.headers("alpha", "viewer")).json()
    assert {j["name"] for j in theirs["items"]} >= {f"{CANARY}-job", f"{CANARY}-job2"}
    assert "beta-job" not in {j["name"] for j in theirs["items"]} and theirs["total"] == len(theirs["items"])
    # the default project (the owner's, everything made before projects) sees none of alpha's either
    r = client.get(JOBS)
    assert_no_canary(r.content, [CANARY], "default project")


def test_compare_refuses_a_job_of_another_project_among_its_own(stack: tuple[Any, Any], tenants: Tenants,
                                                                 alpha: dict[str, Any]) -> None:
    client, _ = stack
    r = client.post(JOBS, json=job_body("beta-compare"), headers=tenants.headers("beta", "engineer"))
    own = r.json()["job_id"]
    beta = tenants.headers("beta", "viewer")
    assert client.get(f"{COMPARE}?job_ids={own}", headers=beta).status_code == 200
    r = client.get(f"{COMPARE}?job_ids={own},{alpha['job_id']}", headers=beta)
    assert r.status_code == 404 and r.json()["field"] == "job_ids"
    assert_no_canary(r.content, [CANARY], "compare")


def test_the_same_idempotency_key_in_two_projects_makes_two_jobs_and_two_studies(
        stack: tuple[Any, Any], tenants: Tenants) -> None:
    client, _ = stack
    key = {"Idempotency-Key": f"nightly-{uuid.uuid4().hex[:6]}"}
    made = {}
    for project in ("alpha", "beta"):
        eng = {**tenants.headers(project, "engineer"), **key}
        first = client.post(JOBS, json=job_body(f"{project}-nightly"), headers=eng)
        again = client.post(JOBS, json=job_body(f"{project}-nightly"), headers=eng)
        assert (first.status_code, again.status_code) == (202, 200), first.text
        assert first.json()["job_id"] == again.json()["job_id"]
        study = client.post(STUDIES, json=study_body(f"{project}-nightly"), headers=eng)
        assert study.status_code == 202, study.text
        made[project] = (first.json()["job_id"], study.json()["study_id"])
        assert client.get(f"{JOBS}/{made[project][0]}", headers=eng).json()["name"] == f"{project}-nightly"
    assert made["alpha"][0] != made["beta"][0] and made["alpha"][1] != made["beta"][1]
    # a key in the default project that spells alpha's scoped key is a conflict, never alpha's job
    r = client.post(JOBS, json=job_body("default-nightly"),
                    headers={"Idempotency-Key": f"alpha/{key['Idempotency-Key']}"})
    assert r.status_code == 409 and made["alpha"][0] not in r.text


def test_uploads_are_kept_and_listed_per_project_and_used_only_by_their_own(
        stack: tuple[Any, Any], tenants: Tenants, alpha: dict[str, Any], dataset_root: Path) -> None:
    client, _ = stack
    uri = alpha["upload_uri"]
    assert Path(uri.removeprefix("file://")).parent == (dataset_root / "uploads" / "alpha").resolve()
    listed = client.get(DATASETS, headers=tenants.headers("alpha", "viewer")).json()["items"]
    assert uri in {d["uri"] for d in listed}
    for role in ROLES:
        r = client.get(DATASETS, headers=tenants.headers("beta", role))
        assert r.status_code == 200 and uri not in r.text
        assert_no_canary(r.content, [CANARY], f"beta {role} datasets")
    # beta may not train or tune on alpha's upload (nor learn its columns from a wrong target)
    beta = tenants.headers("beta", "engineer")
    for path, body in ((JOBS, job_body("steal", dataset={"uri": uri, "target": "nope"})),
                       (STUDIES, study_body("steal", dataset={"uri": uri, "target": "nope"}))):
        r = client.post(path, json=body, headers=beta)
        assert r.status_code == 422 and r.json()["field"] == "dataset.uri", r.text
        assert "'x'" not in r.text and "this project's uploads" in r.json()["detail"]
    # a path inside alpha's folder that names no file is refused the same way (no existence probe)
    ghost = uri.rsplit("/", 1)[0] + "/nothing-here.csv"
    r = client.post(JOBS, json=job_body("probe", dataset={"uri": ghost, "target": "y"}), headers=beta)
    assert r.status_code == 422 and "this project's uploads" in r.json()["detail"]
    # beta's own upload works for beta, in beta's own folder; alpha's for alpha; builtin datasets for everyone
    own = client.post(DATASETS, files={"file": ("beta.csv", _csv())}, headers=beta).json()["uri"]
    assert Path(own.removeprefix("file://")).parent == (dataset_root / "uploads" / "beta").resolve()
    assert client.post(JOBS, json=job_body("own", dataset={"uri": own, "target": "y"}),
                       headers=beta).status_code == 202
    assert client.post(JOBS, json=job_body("a-own", dataset={"uri": uri, "target": "y"}),
                       headers=tenants.headers("alpha", "engineer")).status_code == 202
    # the default project's folder lists neither (the projects' folders sit inside it, never listed)
    assert not {own, uri} & {d["uri"] for d in client.get(DATASETS).json()["items"]}
    r = client.post(JOBS, json=job_body("d-steal", dataset={"uri": own, "target": "y"}))
    assert r.status_code == 422 and r.json()["field"] == "dataset.uri"


def test_a_role_without_the_action_is_403_in_its_own_project(stack: tuple[Any, Any], tenants: Tenants,
                                                              alpha: dict[str, Any]) -> None:
    client, _ = stack
    viewer = tenants.headers("alpha", "viewer")
    for method, path, kwargs in (("POST", JOBS, {"json": job_body("v")}), ("POST", STUDIES, {"json": study_body("v")}),
                                 ("POST", DATASETS, {"files": {"file": ("v.csv", _csv())}}),
                                 ("DELETE", f"{JOBS}/{alpha['job_id']}", {}),
                                 ("DELETE", f"{STUDIES}/{alpha['study_id']}", {})):
        r = client.request(method, path, headers=viewer, **kwargs)
        assert r.status_code == 403, (method, path, r.text)
    # the engineer may: cancelling alpha's own job works from alpha, only there
    r = client.post(JOBS, json=job_body(f"{CANARY}-to-cancel"), headers=tenants.headers("alpha", "engineer"))
    job_id = r.json()["job_id"]
    assert client.delete(f"{JOBS}/{job_id}", headers=tenants.headers("beta", "engineer")).status_code == 404
    r = client.delete(f"{JOBS}/{job_id}", headers=tenants.headers("alpha", "engineer"))
    assert r.status_code == 202 and r.json()["status"] == "cancelled"


# ==== models, deployments, API keys ===================================================================================
