"""The API edge: every bound on what a request may carry, on the real app (PostgreSQL event store and read model,
chDB) in-process. Nothing hostile gets past validation, and every refusal is problem+json naming its field."""
from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from tests.support.auth import identity_projection, sign_in_owner
from entrypoints.bootstrap import build_services as build
from infra.settings import Settings

JOBS = "/api/v1/training/jobs"
DATASETS = "/api/v1/datasets"
MAX_UPLOAD = 64 * 1024


def job(**changes) -> dict:
    body = {"name": "edge", "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}}
    return {**body, **changes}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dataset-root")


@pytest.fixture(scope="module")
def client(module_database_url: str, clickhouse, root: Path) -> Iterator[TestClient]:
    # chDB allows one data path per process: share the session's (data_dir/chdb is the clickhouse fixture's path)
    services = build(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222", clickhouse_url=None,
                              data_dir=clickhouse.path.parent, dataset_roots=str(root), max_upload_bytes=MAX_UPLOAD))
    app = create_app(services)

    @app.get("/test-only/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with identity_projection(module_database_url), TestClient(app, raise_server_exceptions=False) as c:
        sign_in_owner(c, services)
        yield c
    services.close()


def problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    if field is not None:
        assert body["field"] == field, body
    return body


def post_raw(client: TestClient, text: str | bytes):
    return client.post(JOBS, content=text, headers={"content-type": "application/json"})


# ---- body size ---------------------------------------------------------------------------------
def test_a_10_mb_job_body_gets_a_prompt_413(client):
    started = time.monotonic()
    body = json.dumps(job(params={"n_estimators": 5, "pad": "x" * 10_000_000}))
    problem(post_raw(client, body), 413, "body")
    assert time.monotonic() - started < 2


def test_a_chunked_body_is_counted_as_it_arrives(client):
    def chunks():
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = client.post(JOBS, content=chunks(), headers={"content-type": "application/json"})
    problem(r, 413, "body")


# ---- text fields -------------------------------------------------------------------------------
@pytest.mark.parametrize("body, field", [
    (job(name="bad\x00name"), "name"),
    (job(name="bell\x07"), "name"),
    (job(name="x" * 201), "name"),
    (job(name=""), "name"),
    (job(tags=["a", "b", "c", "t\x00"]), "tags.3"),
    (job(tags=["a"] * 21), "tags"),
    (job(tags=["x" * 65]), "tags.0"),
    (job(tags=[""]), "tags.0"),
    (job(dataset={"uri": "builtin://breast_cancer\x00"}), "dataset.uri"),
    (job(dataset={"uri": "file:///" + "a" * 2048}), "dataset.uri"),
    (job(dataset={"uri": "builtin://breast_cancer", "target": "t\x1b[31m"}), "dataset.target"),
    (job(dataset={"uri": "builtin://breast_cancer", "target": "x" * 257}), "dataset.target"),
    (job(params={"n_estimators": 5, "boosting": "gbdt\x00"}), "params.boosting"),
    (job(params={"bad\x00key": 1}), "params"),
    (job(params={"k" * 65: 1}), "params"),
    (job(timeout_s=0), "timeout_s"),
    (job(timeout_s=604_801), "timeout_s"),
    (job(timeout_s="60"), "timeout_s"),
    (job(timeout_s=60.0), "timeout_s"),
    (job(unknown=1), "unknown"),
])
def test_text_and_size_bounds_name_the_field(client, body, field):
    problem(client.post(JOBS, json=body), 422, field)


def test_a_lone_surrogate_is_refused_and_the_problem_still_encodes(client):
    problem(post_raw(client, json.dumps(job(name="a\ud800b"))), 422, "name")
    assert problem(post_raw(client, json.dumps(job(**{"\ud800": 1}))), 422)["field"]


# ---- params ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    ('{"learning_rate": Infinity}', "params.learning_rate"),
    ('{"learning_rate": -Infinity}', "params.learning_rate"),
    ('{"learning_rate": NaN}', "params.learning_rate"),
    ('{"learning_rate": 1e400}', "params.learning_rate"),
    ('{"x": [1, [2, NaN]]}', "params.x.1.1"),
    ('{"a": {"b": {"c": {"d": {}}}}}', "params.a.b.c.d"),
    ('{"a": [[[[1]]]]}', "params.a.0.0.0"),
    ('{"n": 99999999999999999999}', "params.n"),
])
def test_params_shape_is_bounded_with_exact_fields(client, raw, field):
    body = json.dumps(job(framework="pytorch", params={})).replace('"params": {}', f'"params": {raw}')
    problem(post_raw(client, body), 422, field)


def test_params_json_size_is_bounded(client):
    params = {f"k{i}": "x" * 200 for i in range(100)}
    assert "16,384" in problem(client.post(JOBS, json=job(params=params)), 422, "params")["detail"]


@pytest.mark.parametrize("framework, params, field, words", [
    ("lightgbm", {"n_estimator": 10}, "params.n_estimator", "did you mean 'n_estimators'?"),
    ("lightgbm", {"device_type": "gpu"}, "params.device_type", "unknown"),
    ("lightgbm", {"boosting": "goss"}, "params.boosting", "one of gbdt, dart"),
    ("lightgbm", {"boosting": "gbdt objective=regression metric=l1"}, "params.boosting", "one of"),
    ("lightgbm", {"extra_trees": "true"}, "params.extra_trees", "true or false"),
    ("lightgbm", {"forcedsplits_filename": "/etc/passwd"}, "params.forcedsplits_filename", "not allowed"),
    ("lightgbm", {"machines": "10.0.0.1:12400"}, "params.machines", "not allowed"),
    ("lightgbm", {"num_machines": 2}, "params.num_machines", "not allowed"),
    ("lightgbm", {"objective": "huber"}, "params.objective", "cannot be set"),
    ("lightgbm", {"num_threads": 17}, "params.num_threads", "16"),
    ("lightgbm", {"n_estimators": 1000, "num_leaves": 4096}, "params.num_leaves", "budget"),
    ("pytorch", {"hidden_sizes": [2048] * 6}, "params.hidden_sizes", "20,000,000"),
    ("pytorch", {"hidden_sizes": [8] * 9}, "params.hidden_sizes", "at most 8"),
    ("pytorch", {"epochs": 10_001}, "params.epochs", "10000"),
    ("pytorch", {"batch_size": 65_537}, "params.batch_size", "65536"),
])
def test_framework_params_are_an_allowlist_with_bounds(client, framework, params, field, words):
    body = problem(client.post(JOBS, json=job(framework=framework, params=params)), 422, field)
    assert words in body["detail"]


# ---- query parameters --------------------------------------------------------------------------
@pytest.mark.parametrize("query, field", [
    (f"offset={2**63}", "offset"),
    ("offset=-1", "offset"),
    ("offset=1000001", "offset"),
    ("limit=0", "limit"),
    ("limit=501", "limit"),
    ("limit=ten", "limit"),
    ("tag=%00", "tag.0"),
    ("tag=a&tag=%1b", "tag.1"),
    ("status=bogus", "status.0"),
])
def test_query_parameters_are_bounded(client, query, field):
    problem(client.get(f"{JOBS}?{query}"), 422, field)


def test_filters_repeat(client):
    r = client.get(f"{JOBS}?status=queued&status=running&framework=lightgbm&framework=pytorch&tag=a&tag=b")
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0


def test_metric_routes_bound_their_inputs(client):
    job_id = uuid.uuid4()
    problem(client.get(f"{JOBS}/{job_id}/metrics/loss%00?attempt={2**63}"), 422)
    problem(client.get(f"{JOBS}/not-a-uuid"), 422, "job_id")


def test_an_unexpected_error_is_a_500_problem(client):
    body = problem(client.get("/test-only/boom"), 500)
    assert "a bug" not in json.dumps(body)


# ---- dataset roots -----------------------------------------------------------------------------
def test_files_outside_the_dataset_roots_are_refused(client, tmp_path):
    path = tmp_path / "elsewhere.csv"
    pd.DataFrame({"x": range(20), "y": [0, 1] * 10}).to_csv(path, index=False)
    body = problem(client.post(JOBS, json=job(dataset={"uri": path.as_uri(), "target": "y"})), 422, "dataset.uri")
    assert "outside the dataset roots" in body["detail"]


def test_a_symlink_in_a_root_leaks_nothing_of_its_target(client, root, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("SECRET_COLUMN,hunter2\n1,2\n")
    (root / "passwd.csv").symlink_to("/etc/passwd")
    (root / "secret.csv").symlink_to(secret)
    first_line = Path("/etc/passwd").read_text().splitlines()[0]
    for name in ("passwd.csv", "secret.csv"):
        r = client.post(JOBS, json=job(dataset={"uri": (root / name).as_uri(), "target": "nope"}))
        problem(r, 422, "dataset.uri")
        for leaked in (first_line, first_line.split(":")[0] + ":", "SECRET_COLUMN", "hunter2"):
            assert leaked not in r.text


# ---- upload ------------------------------------------------------------------------------------
def _csv(rows: int = 30) -> bytes:
    return pd.DataFrame({"x": range(rows), "z": [0.5] * rows, "y": [0, 1] * (rows // 2)}).to_csv(index=False).encode()


def uploads(root: Path) -> list[str]:
    folder = root / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_upload_stores_checks_and_names_the_file(client, root):
    data = _csv()
    r = client.post(DATASETS, files={"file": ("../../My Data!.csv", data, "text/csv")})
    assert r.status_code == 201, r.text
    out = r.json()
    sha = hashlib.sha256(data).hexdigest()
    assert out["sha256"] == sha and out["size_bytes"] == len(data)
    assert (out["rows"], out["columns"], out["column_names"]) == (30, 3, ["x", "z", "y"])
    stored = Path(out["uri"].removeprefix("file://"))
    assert stored.name == f"{sha[:16]}-My_Data.csv" and stored.parent == (root / "uploads").resolve()
    assert stored.read_bytes() == data
    # the URI is usable as a job's dataset: a wrong target lists the file's columns
    body = problem(client.post(JOBS, json=job(dataset={"uri": out["uri"], "target": "label"})), 422, "dataset.target")
    assert "'x', 'z', 'y'" in body["detail"]


def test_uploads_can_be_found_again_with_their_sha256_rows_and_columns(client, root):
    data = _csv(24)
    out = client.post(DATASETS, files={"file": ("listed.csv", data)}).json()
    listed = client.get(DATASETS)
    assert listed.status_code == 200, listed.text
    items = {d["uri"]: d for d in listed.json()["items"]}
    mine = items[out["uri"]]
    assert mine["sha256"] == hashlib.sha256(data).hexdigest() and mine["size_bytes"] == len(data)
    assert (mine["rows"], mine["columns"], mine["column_names"]) == (24, 3, ["x", "z", "y"])
    assert mine["name"] == f"{mine['sha256'][:16]}-listed.csv" and mine["uploaded_at"]
    # a file stored before uploads kept their figures beside them is read once and listed the same
    for sidecar in (root / "uploads").glob(".*.json"):
        sidecar.unlink()
    again = {d["uri"]: d for d in client.get(DATASETS).json()["items"]}
    assert again[out["uri"]] == mine and len(again) == len(items)


def test_upload_takes_parquet_and_a_name(client):
    buffer = io.BytesIO()
    pd.read_csv(io.BytesIO(_csv(40))).to_parquet(buffer)
    r = client.post(DATASETS, files={"file": ("t.parquet", buffer.getvalue())}, data={"name": "churn v2"})
    assert r.status_code == 201, r.text
    assert r.json()["uri"].endswith("-churn_v2.parquet") and r.json()["rows"] == 40


@pytest.mark.parametrize("filename, data, words", [
    ("garbage.parquet", b"\x00\xffnot parquet" * 100, "not a valid Parquet file"),
    ("garbage.csv", bytes(range(256)) * 20, "cannot read"),
    ("short.csv", b"a,b\n1,2\n", "at least 10 rows"),
    ("one.csv", b"a\n" + b"1\n" * 20, "2 columns"),
    ("data.txt", b"a,b\n1,2\n", ".csv or .parquet"),
])
def test_upload_refuses_unusable_files_and_keeps_nothing(client, root, filename, data, words):
    before = uploads(root)
    body = problem(client.post(DATASETS, files={"file": (filename, data)}), 422, "file")
    assert words in body["detail"]
    assert uploads(root) == before


@pytest.mark.parametrize("size, field", [(MAX_UPLOAD + 36 * 1024, "file"), (2 * 1024 * 1024, "body")])
def test_oversize_uploads_get_413_and_leave_no_file(client, root, size, field):
    before = uploads(root)
    data = (b"a,b\n" + b"1,2\n" * (size // 4))[:size]
    problem(client.post(DATASETS, files={"file": ("big.csv", data)}), 413, field)
    assert uploads(root) == before


def test_upload_needs_a_file(client):
    problem(client.post(DATASETS, data={"name": "x"}), 422, "file")


# ---- docs --------------------------------------------------------------------------------------
def test_docs_work_offline(client):
    r = client.get("/docs")
    assert r.status_code == 200
    assert "http://" not in r.text and "https://" not in r.text
    assets = re.findall(r'(?:href|src)="([^"]+)"', r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert len(assets) >= 3
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "604800" in schema["JobIn"]["properties"]["timeout_s"]["description"]



def test_the_command_headers_are_documented_on_every_command_route_and_checked(client):
    """X-Request-Id and traceparent are read by the command context (not declared per route):
    the OpenAPI document still lists them on every route that records events, and Idempotency-Key where it works."""
    spec = client.get("/openapi.json").json()["paths"]

    def headers(path: str, method: str) -> set[str]:
        return {p["name"] for p in spec[path][method].get("parameters", []) if p["in"] == "header"}

    command = {"X-Request-Id", "traceparent"}
    project = {"X-Trainyard-Project"}  # every project route names its project the same way
    assert headers(JOBS, "post") == command | project | {"Idempotency-Key"}
    assert headers("/api/v1/studies", "post") == command | project | {"Idempotency-Key"}
    assert headers(JOBS + "/{job_id}", "delete") == command | project
    assert headers(JOBS + "/{job_id}", "get") == project  # a query records nothing
    for bad, field in ((("X-Request-Id", "a b"), "X-Request-Id"), (("X-Request-Id", "x" * 129), "X-Request-Id"),
                       (("Idempotency-Key", "k" * 256), "Idempotency-Key"),
                       (("Idempotency-Key", b"caf\xe9"), "Idempotency-Key")):
        r = client.post(JOBS, json=job(), headers=dict([bad]))
        assert r.status_code == 422 and r.json()["field"] == field, (bad, r.text)
    r = client.post(JOBS, json=job(), headers={"traceparent": "not-a-traceparent" * 40})  # ignored, as W3C says
    assert r.status_code == 202, r.text

# ---- an accepted submit (waits up to 5 s for the read model: there is no projector here) --------
def test_a_sound_job_is_accepted(client):
    r = client.post(JOBS, json=job(tags=["a", "b"], timeout_s=120, params={"n_estimators": 50, "boosting": "dart"}))
    assert r.status_code == 202, r.text


# ---- hostile bodies ----------------------------------------------------------------------------
CONTROL = st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]] + ["\ud800", "\udfff"])
hostile_text = st.one_of(
    st.tuples(st.text(max_size=20), CONTROL, st.text(max_size=20)).map("".join),
    st.integers(300, 5000).map(lambda n: "x" * n),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), hostile_text)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                         max_size=4), max_leaves=20)
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])


def _nest(value, depth: int):
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


WRONG_TYPE = {"name": str, "framework": str, "task": str, "priority": str, "dataset": dict, "params": dict,
              "tags": list, "timeout_s": int}  # a value of any other type is wrong for the field
# Each mutation makes a body invalid, so no example is accepted (an accepted one would wait 5 s for the read model).
mutations = st.one_of(
    st.tuples(st.sampled_from(["name", "uri", "target", "tag"]), hostile_text),
    st.tuples(st.just("param"), st.one_of(non_finite, hostile_text, st.integers(5, 40).map(lambda d: _nest(1, d)))),
    st.tuples(st.just("param_key"), hostile_text),
    st.sampled_from(sorted(WRONG_TYPE)).flatmap(
        lambda f: st.tuples(st.just(f), junk.filter(lambda v: type(v) is not WRONG_TYPE[f]))),
    st.tuples(st.just("extra"), junk),
)


def _apply(body: dict, mutation) -> dict:
    kind, value = mutation
    dataset = body["dataset"] if isinstance(body["dataset"], dict) else {}
    params = body["params"] if isinstance(body["params"], dict) else {}
    if kind in ("uri", "target"):
        body["dataset"] = {**dataset, kind: value}
    elif kind == "tag":
        body["tags"] = ["ok", value]
    elif kind == "param":
        body["params"] = {**params, "learning_rate": value}
    elif kind == "param_key":
        body["params"] = {**params, value: 1}
    elif kind == "extra":
        body["unexpected"] = value
    else:
        body[kind] = value
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(framework=st.sampled_from(["lightgbm", "pytorch"]), changes=st.lists(mutations, min_size=1, max_size=3),
       whole=st.one_of(st.none(), junk, st.binary(max_size=200)))
def test_hostile_bodies_never_5xx_and_always_name_a_field(client, framework, changes, whole):
    if whole is None:
        body = job(framework=framework, params={})
        for change in changes:
            body = _apply(body, change)
        raw = json.dumps(body, allow_nan=True).encode()
    else:
        raw = whole if isinstance(whole, bytes) else json.dumps(whole, allow_nan=True).encode()
    r = post_raw(client, raw)
    assert r.status_code < 500, r.text
    assert r.status_code >= 400, raw[:300]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json().get("field"), r.text


# ---- names, not ids --------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path, body, words", [
    ("POST", "/api/v1/models/nosuch/versions/1/exports", {}, "no model 'nosuch'"),
    ("PUT", "/api/v1/models/nosuch/aliases/production", {"version": 1}, "no model 'nosuch'"),
    ("DELETE", "/api/v1/models/nosuch/aliases/production", None, "no model 'nosuch'"),
    ("DELETE", "/api/v1/deployments/nosuch", None, "no deployment 'nosuch'"),
    ("POST", "/api/v1/deployments/nosuch/rollback", None, "no deployment 'nosuch'"),
])
def test_an_unknown_name_is_a_404_saying_the_name_typed(client, method, path, body, words):
    """The model's and deployment's ids are derived from their names; the user knows only the name."""
    detail = problem(client.request(method, path, json=body), 404, "name")["detail"]
    assert detail == words, detail


# ---- short ids -----------------------------------------------------------------------------------
SHORT = "0565b60a"
IDS = {  # two ids that share the short id, the ids just outside it on either side, and one far away
    "low": uuid.UUID(f"{SHORT}-0000-0000-0000-000000000000"), "high": uuid.UUID(f"{SHORT}-ffff-ffff-ffff-ffffffffffff"),
    "before": uuid.UUID("0565b609-ffff-ffff-ffff-ffffffffffff"), "after": uuid.UUID("0565b60b-0000-0000-0000-000000000000"),
    "far": uuid.UUID("f565b60a-0000-4000-8000-000000000000"),
}
NOW = "2025-05-01T12:00:00+00:00"


@pytest.fixture(scope="module")
def short_ids(client, module_database_url: str) -> dict[str, uuid.UUID]:
    """Jobs, studies and API keys with the ids in IDS, written straight into their read models (no projector runs
    here), each named for its key in IDS."""
    spec = '{"uri": "builtin://breast_cancer"}'
    with psycopg.connect(module_database_url) as conn:
        for name, id_ in IDS.items():
            conn.execute("INSERT INTO jobs (id, name, framework, task, dataset, params, priority, tags, status, "
                         "created_at, updated_at, version) VALUES (%s, %s, 'lightgbm', 'binary_classification', "
                         "%s, '{}', 'medium', '{}', 'queued', %s, %s, 1)", (id_, name, spec, NOW, NOW))
            conn.execute("INSERT INTO studies (id, name, framework, task, dataset, objective, search_space, "
                         "fixed_params, sampler, pruner, n_trials, max_parallel, priority, tags, status, created_at, "
                         "updated_at, version) VALUES (%s, %s, 'lightgbm', 'binary_classification', %s, "
                         "'{\"metric\": \"auc\", \"direction\": \"maximize\"}', '{}', '{}', '{}', '{}', 4, 2, "
                         "'medium', '{}', 'running', %s, %s, 1)", (id_, name, spec, NOW, NOW))
            conn.execute("INSERT INTO api_keys (id, name, prefix, key_hash, deployments, created_at, version) "
                         "VALUES (%s, %s, 'ty_abc', %s, '{*}', %s, 1)", (id_, name, f"hash-{name}", NOW))
    return IDS


@pytest.mark.parametrize("path, id_key", [(JOBS, "job_id"), ("/api/v1/studies", "study_id"),
                                          ("/api/v1/api-keys", "id")])
@pytest.mark.parametrize("prefix, found", [
    (SHORT, {"low", "high"}),  # the short id the CLI shows names both: ambiguous
    (f"{SHORT}0000", {"low"}), (f"{SHORT}ffff", {"high"}),
    (IDS["high"].hex, {"high"}),  # all 32 digits
    ("0565b60b", {"after"}), ("0565b609", {"before"}), ("0565b60c", set()),
])
def test_a_list_filters_by_an_id_prefix(client, short_ids, path, id_key, prefix, found):
    r = client.get(path, params={"id_prefix": prefix})
    assert r.status_code == 200, r.text
    assert {i[id_key] for i in r.json()["items"]} == {str(short_ids[n]) for n in found}
    if "total" in r.json():
        assert r.json()["total"] == len(found)


@pytest.mark.parametrize("path", [JOBS, "/api/v1/studies", "/api/v1/api-keys"])
@pytest.mark.parametrize("prefix", ["0565B60A", "0565b60", "0565b60a-0000", "0565b60g", "0" * 33])
def test_an_id_prefix_is_8_to_32_lowercase_hex_digits(client, path, prefix):
    problem(client.get(path, params={"id_prefix": prefix}), 422, "id_prefix")


@pytest.mark.parametrize("names", [",".join(f"m{i}" for i in range(21)), "a,,b", "a\x00", "a,\x1b", "a\x7f", "x" * 201])
def test_series_names_are_bounded(client, names):
    problem(client.get(f"{JOBS}/{uuid.uuid4()}/metrics", params={"names": names}), 422, "names")
