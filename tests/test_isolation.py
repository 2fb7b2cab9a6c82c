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
# Alpha's models and deployments carry the canary; both projects also have a deployment named `twin` (names are
# unique per project), served from each project's own model, which the telemetry tests tell apart.
MODELS, DEPLOYMENTS, KEYS = "/api/v1/models", "/api/v1/deployments", "/api/v1/api-keys"
RUNNER = "runner:isolation"


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    """One small LightGBM model and its ONNX graph (real files: the inference server loads them)."""
    from runners.onnx_converter import convert
    from runners.trainers import TrainSpec, trainer_for
    from tests.support.fakes import QuietReporter

    result = trainer_for("lightgbm").fit(TrainSpec("lightgbm", "binary_classification", "builtin://breast_cancer",
                                                   None, {"n_estimators": 5}), QuietReporter())
    onnx = convert("lightgbm", "binary_classification", result.model_bytes, 30)
    return {"native": result.model_bytes, "onnx": onnx.onnx_bytes, "opset": onnx.opset,
            "feature_names": list(result.feature_names), "class_labels": list(result.class_labels or [])}


def _serveable(client: Any, services: Any, tenants: Tenants, trained: dict[str, Any], project: str,
               model: str) -> dict[str, Any]:
    """`project`'s model `model`, version 1 from a completed job of the project, with a completed ONNX export: the
    API for what users do, the application's runner commands for what a runner would report."""
    from commands.context import CommandContext
    from runners.artifacts import LocalArtifactStore

    store, runner = LocalArtifactStore(services.settings.artifacts), CommandContext(actor=RUNNER)
    deployer = tenants.headers(project, "deployer")
    r = client.post(JOBS, json=job_body(f"{model}-job"), headers=deployer)
    assert r.status_code == 202, r.text
    job_id = uuid.UUID(r.json()["job_id"])
    native = store.put(str(job_id), 1, trained["native"], "txt")
    services.app.claim(job_id, "lease-job", RUNNER, runner)
    services.app.complete(job_id, "lease-job", {"auc": 0.9}, {
        "uri": native.uri, "sha256": native.sha256, "size_bytes": native.size_bytes, "format": "lightgbm",
        "feature_names": trained["feature_names"], "class_labels": trained["class_labels"]}, runner)
    r = client.post(MODELS, json={"name": model, "description": f"{model} description", "tags": [f"{model}-tag"]},
                    headers=deployer)
    assert r.status_code == 201, r.text
    r = client.post(f"{MODELS}/{model}/versions", json={"job_id": str(job_id)}, headers=deployer)
    assert r.status_code == 201, r.text
    r = client.post(f"{MODELS}/{model}/versions/1/exports", json={}, headers=deployer)
    assert r.status_code == 202, r.text
    export_id = uuid.UUID(r.json()["export_id"])
    onnx = store.put(str(export_id), 1, trained["onnx"], "onnx")
    services.app.claim(export_id, "lease-export", RUNNER, runner)
    services.app.complete(export_id, "lease-export", {"max_abs_diff": 0.0, "n_rows": 10, "tolerance": 1e-4,
                                                     "metric_native": 0.9, "metric_onnx": 0.9}, {
        "uri": onnx.uri, "sha256": onnx.sha256, "size_bytes": onnx.size_bytes, "opset": trained["opset"],
        "input_name": "input", "output_name": "probabilities", "n_features": 30, "parity_metric": "auc"}, runner)
    return {"job_id": str(job_id), "export_id": str(export_id), "model": model}


def _deploy(client: Any, headers: dict[str, str], name: str, model: str) -> dict[str, Any]:
    from tests.support.waiting import eventually

    body = {"name": name, "variants": [{"name": "control", "model": model, "version": 1, "weight": 100},
                                       {"name": "challenger", "model": model, "version": 1, "weight": 0}]}
    r = eventually(lambda: (lambda r: r if r.status_code != 409 else None)(
        client.post(DEPLOYMENTS, json=body, headers=headers)), timeout=30, interval=0.2,
        message="the export never attached its ONNX")  # the export's completion reaches the aggregate at once
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def served(stack: tuple[Any, Any], tenants: Tenants, trained: dict[str, Any]) -> dict[str, Any]:
    """Alpha: a canary model, deployed as `<canary>-dep` and as `twin`, and an inference key; beta: its own model,
    deployed as `twin`, its own key and a model of the same name as one of alpha's."""
    client, services = stack
    a = _serveable(client, services, tenants, trained, "alpha", f"{CANARY}-model")
    b = _serveable(client, services, tenants, trained, "beta", "beta-model")
    alpha_deployer, beta_deployer = tenants.headers("alpha", "deployer"), tenants.headers("beta", "deployer")
    _deploy(client, alpha_deployer, f"{CANARY}-dep", a["model"])
    twins = {"alpha": _deploy(client, alpha_deployer, "twin", a["model"]),
             "beta": _deploy(client, beta_deployer, "twin", b["model"])}
    assert [v["model"] for v in twins["beta"]["variants"]] == ["beta-model"] * 2
    keys = {}
    for project, headers in (("alpha", alpha_deployer), ("beta", beta_deployer)):
        r = client.post(KEYS, json={"name": f"{CANARY}-key" if project == "alpha" else "beta-key",
                                    "deployments": "*"}, headers=headers)
        assert r.status_code == 201, r.text
        keys[project] = r.json()
    return {"alpha": a, "beta": b, "keys": keys, "dep": f"{CANARY}-dep"}


def _model_routes(served: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(role that may, method, path, body) for every route naming one of alpha's models, exports, deployments or
    keys."""
    m, e, d = served["alpha"]["model"], served["alpha"]["export_id"], served["dep"]
    key_id = served["keys"]["alpha"]["id"]
    return [
        ("viewer", "GET", f"{MODELS}/{m}", {}), ("viewer", "GET", f"{MODELS}/{m}/versions", {}),
        ("viewer", "GET", f"{MODELS}/{m}/versions/1", {}), ("viewer", "GET", f"{MODELS}/{m}/versions/1/exports/{e}", {}),
        ("viewer", "GET", f"{MODELS}/{m}/versions/1/artifact", {}), ("viewer", "GET", f"{MODELS}/{m}/versions/1/onnx", {}),
        ("engineer", "PUT", f"{MODELS}/{m}/aliases/production", {"json": {"version": 1}}),
        ("engineer", "DELETE", f"{MODELS}/{m}/aliases/production", {}),
        ("engineer", "POST", f"{MODELS}/{m}/versions", {"json": {"job_id": served["alpha"]["job_id"]}}),
        ("deployer", "POST", f"{MODELS}/{m}/versions/1/exports", {"json": {}}),
        ("viewer", "GET", f"{DEPLOYMENTS}/{d}", {}), ("viewer", "GET", f"{DEPLOYMENTS}/{d}/history", {}),
        ("viewer", "GET", f"{DEPLOYMENTS}/{d}/predictions", {}), ("viewer", "GET", f"{DEPLOYMENTS}/{d}/ab", {}),
        ("viewer", "GET", f"{DEPLOYMENTS}/{d}/ab/timeseries", {}),
        ("deployer", "PATCH", f"{DEPLOYMENTS}/{d}/traffic", {"json": {"weights": {"control": 100, "challenger": 0}}}),
        ("deployer", "PUT", f"{DEPLOYMENTS}/{d}", {"json": {"variants": [
            {"name": "control", "model": m, "version": 1, "weight": 100}]}}),
        ("deployer", "PUT", f"{DEPLOYMENTS}/{d}/policy", {"json": {"policy": None}}),
        ("deployer", "POST", f"{DEPLOYMENTS}/{d}/promote", {"json": {"variant": "control"}}),
        ("deployer", "POST", f"{DEPLOYMENTS}/{d}/rollback", {}),
        ("deployer", "POST", f"{DEPLOYMENTS}/{d}/feedback", {"json": [{"request_id": "r1", "label": "1"}]}),
        ("deployer", "DELETE", f"{DEPLOYMENTS}/{d}", {}),
        ("deployer", "DELETE", f"{KEYS}/{key_id}", {}),
    ]


def test_another_projects_models_deployments_and_keys_are_404_on_every_route_that_names_them(
        stack: tuple[Any, Any], tenants: Tenants, served: dict[str, Any], trained: dict[str, Any]) -> None:
    client, _ = stack
    order = list(ROLES)
    for role in ROLES:
        for least, method, path, kwargs in _model_routes(served):
            if order.index(role) < order.index(least):
                continue  # 403 before anything is looked up (test_a_role_without_the_action_…)
            for headers in (tenants.headers("beta", role), tenants.headers("beta", role, acting_in="alpha")):
                r = client.request(method, path, headers=headers, **kwargs)
                assert r.status_code == 404, (role, method, path, r.text)
                echoed = r.text  # what the path named comes back in the problem; nothing more may
                for part in sorted(path.split("/"), key=len, reverse=True):
                    echoed = echoed.replace(part, "") if len(part) > 3 else echoed
                assert_no_canary(echoed, [CANARY, served["alpha"]["export_id"]],
                                 f"beta {role} {method} {path}")
    # what beta was answered is what a name that exists nowhere is answered
    for path in (f"{MODELS}/{served['alpha']['model']}", f"{DEPLOYMENTS}/{served['dep']}"):
        theirs = client.get(path, headers=tenants.headers("beta", "viewer")).json()
        missing = client.get(path.replace(CANARY, "nothing"), headers=tenants.headers("beta", "viewer")).json()
        assert theirs["field"] == missing["field"] and theirs["title"] == missing["title"]
    # and alpha's own are all still there, unchanged by beta's attempts
    viewer = tenants.headers("alpha", "viewer")
    for least, method, path, _ in _model_routes(served):
        if method == "GET" and "/artifact" not in path and "/onnx" not in path:
            assert client.get(path, headers=viewer).status_code == 200, path
    r = client.get(f"{MODELS}/{served['alpha']['model']}/versions/1/onnx", headers=viewer)
    assert r.status_code == 200 and r.content == trained["onnx"]
    dep = client.get(f"{DEPLOYMENTS}/{served['dep']}", headers=viewer).json()
    assert dep["active"] and dep["revision"] == 1
    keys = client.get(KEYS, headers=tenants.headers("alpha", "deployer")).json()["items"]
    assert {k["id"]: k["revoked_at"] for k in keys}[served["keys"]["alpha"]["id"]] is None


def test_model_deployment_and_key_lists_show_only_the_callers_project(
        stack: tuple[Any, Any], tenants: Tenants, served: dict[str, Any]) -> None:
    client, _ = stack
    beta = tenants.headers("beta", "deployer")
    models = client.get(MODELS, headers=beta).json()
    assert {m["name"] for m in models["items"]} == {"beta-model"} and models["total"] == 1
    assert {d["name"] for d in client.get(DEPLOYMENTS, headers=beta).json()["items"]} == {"twin"}
    assert [k["name"] for k in client.get(KEYS, headers=beta).json()["items"]] == ["beta-key"]
    r = client.get(f"{KEYS}?id_prefix={served['keys']['alpha']['id'][:8]}", headers=beta)
    assert r.status_code == 200 and r.json()["items"] == []
    for path in (MODELS, DEPLOYMENTS, KEYS, f"{DEPLOYMENTS}/twin", f"{DEPLOYMENTS}/twin/history"):
        r = client.get(path, headers=beta)
        assert r.status_code == 200, r.text
        assert_no_canary(r.content, [CANARY, served["alpha"]["export_id"]], path)
    alpha = client.get(MODELS, headers=tenants.headers("alpha", "viewer")).json()
    assert {m["name"] for m in alpha["items"]} == {served["alpha"]["model"]} and alpha["total"] == 1
    # the default project (everything made before projects) sees none of them
    for path in (MODELS, DEPLOYMENTS, KEYS):
        assert_no_canary(client.get(path).content, [CANARY, "beta-model", "beta-key"], f"default {path}")


def test_a_version_a_variant_and_a_name_never_cross_projects(
        stack: tuple[Any, Any], tenants: Tenants, served: dict[str, Any]) -> None:
    client, _ = stack
    beta = tenants.headers("beta", "deployer")
    # alpha's completed job cannot become a version of beta's model: as missing as a job that never was
    r = client.post(f"{MODELS}/beta-model/versions", json={"job_id": served["alpha"]["job_id"]}, headers=beta)
    assert r.status_code == 404 and r.json()["field"] == "job_id", r.text
    missing = client.post(f"{MODELS}/beta-model/versions", json={"job_id": str(uuid.uuid4())}, headers=beta)
    assert missing.status_code == 404 and missing.json()["field"] == "job_id"
    # a deployment of beta cannot serve alpha's model, by version or alias
    for ref in ({"version": 1}, {"alias": "production"}):
        body = {"name": "steal", "variants": [{"name": "a", "model": served["alpha"]["model"], "weight": 100, **ref}]}
        r = client.post(DEPLOYMENTS, json=body, headers=beta)
        assert r.status_code == 422 and r.json()["field"] == "variants[0].model", r.text
        assert "no model" in r.json()["detail"]
    r = client.put(f"{DEPLOYMENTS}/twin", json={"variants": [
        {"name": "control", "model": served["alpha"]["model"], "version": 1, "weight": 100}]}, headers=beta)
    assert r.status_code == 422 and r.json()["field"] == "variants[0].model"
    # a name is unique in its project only: beta may have a model named as alpha's, and it is beta's own
    r = client.post(MODELS, json={"name": served["alpha"]["model"].replace(CANARY, "shared")}, headers=beta)
    assert r.status_code == 201
    for project in ("alpha", "beta"):
        r = client.post(MODELS, json={"name": "same-name"}, headers=tenants.headers(project, "engineer"))
        assert r.status_code in (201, 409), r.text
    assert client.post(MODELS, json={"name": "same-name"}, headers=beta).status_code == 409  # within one: conflict
    # and a key of beta cannot name alpha's deployments into reach: its names mean beta's deployments only
    r = client.post(KEYS, json={"name": "reach", "deployments": [served["dep"]]}, headers=beta)
    assert r.status_code == 201


def test_a_role_without_the_model_or_deployment_action_is_403(stack: tuple[Any, Any], tenants: Tenants,
                                                              served: dict[str, Any]) -> None:
    client, _ = stack
    viewer, engineer = tenants.headers("alpha", "viewer"), tenants.headers("alpha", "engineer")
    assert client.post(MODELS, json={"name": "v-model"}, headers=viewer).status_code == 403
    for method, path, kwargs in (
            ("POST", DEPLOYMENTS, {"json": {"name": "e-dep", "variants": [
                {"name": "a", "model": served["alpha"]["model"], "version": 1, "weight": 100}]}}),
            ("POST", KEYS, {"json": {"name": "e-key", "deployments": "*"}}), ("GET", KEYS, {}),
            ("POST", f"{MODELS}/{served['alpha']['model']}/versions/1/exports", {"json": {}}),
            ("DELETE", f"{DEPLOYMENTS}/{served['dep']}", {})):
        r = client.request(method, path, headers=engineer, **kwargs)
        assert r.status_code == 403, (method, path, r.text)


def test_an_inference_key_reaches_its_own_projects_deployments_only(
        stack: tuple[Any, Any], tenants: Tenants, served: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient

    from infra.health import Health
    from runners.artifacts import LocalArtifactStore
    from serving.app import InferenceApp
    from serving.feed import Feed
    from serving.state import ModelLoader, ServingState, Telemetry

    _, services = stack
    state, telemetry = ServingState(ModelLoader(LocalArtifactStore(services.settings.artifacts).get)), Telemetry("t")
    Feed(state, services.deployments, Health().stage("feed")).reload()
    http = TestClient(InferenceApp(state, telemetry, None, workers=1))
    alpha, beta = ({"Authorization": f"Bearer {served['keys'][p]['key']}"} for p in ("alpha", "beta"))
    row = {"instances": [[0.1] * 30]}

    def predict(path: str, headers: dict[str, str]) -> Any:
        return http.post(path, json=row, headers=headers)

    dep = served["dep"]
    r = predict(f"/v1/projects/alpha/deployments/{dep}/predict", alpha)
    assert r.status_code == 200 and r.json()["deployment"] == dep, r.text
    assert predict("/v1/projects/alpha/deployments/twin/predict", alpha).status_code == 200
    assert predict("/v1/projects/beta/deployments/twin/predict", beta).status_code == 200
    # beta's key on alpha's deployments: 404, exactly as for a deployment that does not exist
    missing = predict("/v1/projects/alpha/deployments/nothing-here/predict", beta)
    for path in (f"/v1/projects/alpha/deployments/{dep}/predict", "/v1/projects/alpha/deployments/twin/predict"):
        r = predict(path, beta)
        assert r.status_code == 404 == missing.status_code and r.json()["field"] == missing.json()["field"], r.text
    # a key names its project's deployments only, whatever the path: alpha's key on beta's twin is 404 too, and
    # the default project's route is the default project's (none of these is there)
    assert predict("/v1/projects/beta/deployments/twin/predict", alpha).status_code == 404
    assert predict(f"/v1/deployments/{dep}/predict", alpha).status_code == 404
    assert predict("/v1/deployments/twin/predict", beta).status_code == 404
    # what a key is shown is its project's
    for path in ("/v1/deployments", "/readyz"):
        r = http.get(path, headers=beta)
        assert r.status_code == 200, r.text
        assert_no_canary(r.content, [CANARY], f"inference {path}")
    assert [d["name"] for d in http.get("/v1/deployments", headers=beta).json()["items"]] == ["twin"]
    assert {d["name"] for d in http.get("/v1/deployments", headers=alpha).json()["items"]} == {dep, "twin"}
    # prediction records carry the scoped key: alpha's twin and beta's twin are two deployments in ClickHouse
    batch = telemetry.take()
    assert batch is not None
    assert sorted(set(batch.deployment)) == sorted({f"alpha/{dep}", "alpha/twin", "beta/twin"})


def test_prediction_stats_ab_reports_and_the_policy_read_their_own_projects_rows(
        stack: tuple[Any, Any], tenants: Tenants, served: dict[str, Any]) -> None:
    import time

    from commands.ab_policy import PolicyEngine
    from domain.contract import PredictionBatch
    from infra.health import Health
    from projections.deployments import PolicyEvaluations

    client, services = stack
    now = int(time.time() * 1000)
    n = 7  # alpha's twin answered 7 requests; beta's twin none
    services.predictions.insert_batches([PredictionBatch(
        batch_id=f"iso-{uuid.uuid4().hex}", server_id="t", ts_ms=[now] * n, request_id=[f"r{i}" for i in range(n)],
        deployment=["alpha/twin"] * n, revision=[1] * n, variant=["control"] * n,
        model=[served["alpha"]["model"]] * n, version=[1] * n, status=[200] * n, latency_us=[1000] * n,
        n_rows=[1] * n, shadow=[False] * n, prediction=["1"] * n, value=[None] * n, probabilities=[[0.2, 0.8]] * n,
        classes=[["0", "1"]] * n)], token=f"iso-{uuid.uuid4().hex}")

    def requests(project: str, path: str) -> int:
        r = client.get(f"{DEPLOYMENTS}/twin/{path}", headers=tenants.headers(project, "viewer"))
        assert r.status_code == 200, r.text
        body = r.json()
        return sum(i["requests"] for i in body.get("items", body.get("variants", [])))

    assert requests("alpha", "predictions") == n and requests("beta", "predictions") == 0
    assert requests("alpha", "ab") == n and requests("beta", "ab") == 0
    # the policy engine evaluates each project's twin on that project's rows, and records it under its key
    policy = {"policy": {"metric": "accuracy", "min_samples": 1000, "ramp": [50, 100], "step_every_s": 1}}
    for project in ("alpha", "beta"):
        r = client.put(f"{DEPLOYMENTS}/twin/policy", json=policy, headers=tenants.headers(project, "deployer"))
        assert r.status_code == 200, r.text
    asked: list[str] = []

    def stats(key: str, metric: str, since: int, until: int) -> tuple[list, list]:
        asked.append(key)
        return [], []
    PolicyEngine(services.deployment_commands, services.deployments, stats, Health().stage("policy"),
                 PolicyEvaluations(services.pool)).evaluate_all()
    assert {"alpha/twin", "beta/twin"} <= set(asked) and "twin" not in asked
    for project in ("alpha", "beta"):
        r = client.get(f"{DEPLOYMENTS}/twin", headers=tenants.headers(project, "viewer")).json()
        assert r["policy_state"]["last_evaluation"] is not None, project
    assert client.get(f"{DEPLOYMENTS}/twin").status_code == 404  # the default project has no twin


def test_the_deployments_quota_counts_the_projects_own_deployments(
        stack: tuple[Any, Any], tenants: Tenants, served: dict[str, Any]) -> None:
    client, _ = stack
    alpha = tenants.headers("alpha", "deployer")
    active = [d for d in client.get(DEPLOYMENTS, headers=alpha).json()["items"] if d["active"]]
    r = client.put("/api/v1/projects/alpha/quotas", json={"quotas": {"max_deployments": len(active)}})
    assert r.status_code == 200, r.text
    try:
        r = client.post(DEPLOYMENTS, headers=alpha, json={"name": "one-too-many", "variants": [
            {"name": "control", "model": served["alpha"]["model"], "version": 1, "weight": 100}]})
        assert r.status_code == 429 and "max_deployments" in r.text, r.text
        # beta's deployments are beta's: the same count does not hold beta back
        r = client.post(DEPLOYMENTS, headers=tenants.headers("beta", "deployer"), json={"name": "beta-more", "variants": [
            {"name": "control", "model": "beta-model", "version": 1, "weight": 100}]})
        assert r.status_code == 201, r.text
    finally:
        assert client.put("/api/v1/projects/alpha/quotas", json={"quotas": {"max_deployments": None}}).status_code == 200
