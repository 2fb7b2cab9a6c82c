"""Model registry, ONNX exports, deployments and the inference server end to end on real engines: `trainyard up`
(serve + 2 runners + serve-inference) against PostgreSQL, NATS and chDB.

train → register → export (parity) → deploy 90/10 → predict → change traffic → rollback → history → predictions
in ClickHouse; API keys (401/403/429, revocation); a SIGKILLed inference server comes back serving the current
revision.
"""
from __future__ import annotations

import hashlib
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from domain.features import FeatureRecipe
from infra.datasets import encode_frame
from runners.onnx_converter import native_predict
from tests.support.churn import churn_frame, raw_rows
from tests.support.stack import FINISHED, Stack, up_on_a_fresh_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
MODELS, DEPLOYMENTS, KEYS = "/api/v1/models", "/api/v1/deployments", "/api/v1/api-keys"
ROWS = load_breast_cancer().data.tolist()
FEATURES = [str(n) for n in load_breast_cancer().feature_names]


class Serving:
    """The stack with two registered, exported versions of a breast-cancer model and a key for every deployment."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.http = stack, stack.http
        self.inference = httpx.Client(base_url=stack.endpoints()["inference"], timeout=30)
        self.jobs = [stack.submit(framework="lightgbm", task="binary_classification",
                                  dataset={"uri": "builtin://breast_cancer"}, params={"n_estimators": n})
                     for n in (15, 30)]
        for job_id in self.jobs:
            assert stack.wait(job_id, lambda j: j["status"] in FINISHED)["status"] == "completed"
        assert self.http.post(MODELS, json={"name": "bc", "description": "breast cancer"}).status_code == 201
        for n, job_id in enumerate(self.jobs, 1):
            r = self.http.post(f"{MODELS}/bc/versions", json={"job_id": job_id})
            assert r.status_code == 201 and r.json()["version"] == n, r.text
        self.exports = [self.export(v) for v in (1, 2)]
        r = self.http.post(KEYS, json={"name": "everything", "deployments": "*"})
        assert r.status_code == 201, r.text
        self.key = r.json()["key"]
        self.auth = {"Authorization": f"Bearer {self.key}"}  # listing what is served takes a key too

    def export(self, version: int, model: str = "bc", **body: Any) -> dict[str, Any]:
        r = self.http.post(f"{MODELS}/{model}/versions/{version}/exports", json={"format": "onnx", **body})
        assert r.status_code == 202, r.text
        export_id = r.json()["export_id"]

        def finished() -> dict[str, Any] | None:
            out = self.http.get(f"{MODELS}/{model}/versions/{version}/exports/{export_id}").json()
            return out if out["status"] in FINISHED else None

        return eventually(finished, timeout=120, interval=0.2, message=f"export {export_id} never finished")

    def predict(self, name: str, instances: list, key: str | None = None, api_key: str | None = None,
                **headers: str) -> httpx.Response:
        api_key = self.key if api_key is None else api_key
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        body: dict[str, Any] = {"instances": instances}
        if key is not None:
            body["key"] = key
        return self.inference.post(f"/v1/deployments/{name}/predict", json=body, headers={**auth, **headers})

    def until_accepted(self, name: str, api_key: str, timeout: float = 10) -> float:
        """Seconds until the inference server accepts `api_key` on `name` (a new key travels through the feed)."""
        started = time.monotonic()
        eventually(lambda: self.predict(name, [ROWS[0]], api_key=api_key).status_code != 401, timeout=timeout,
                   interval=0.01, message="the new key never reached the inference server")
        return time.monotonic() - started

    def wait_revision(self, name: str, revision: int, timeout: float = 20) -> None:
        """Until the inference server serves `revision` of `name`."""
        served: list[dict[str, int] | None] = [None]

        def serves() -> bool:
            r = self.inference.get("/v1/deployments", headers=self.auth)
            if r.status_code == 401:  # the key was just created: it travels to the server through the feed
                return False
            served[0] = {d["name"]: d["revision"] for d in r.json()["items"]}
            return served[0].get(name) == revision

        eventually(serves, timeout=timeout, interval=0.05, ignoring=(httpx.TransportError,),
                   message=lambda: f"inference never served {name} revision {revision}: {served[0]}")


@pytest.fixture(scope="module")
def serving(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-serving")) as s:
        yield Serving(s)


def test_a_registered_version_keeps_its_lineage_and_its_onnx_export_passes_parity(serving: Serving) -> None:
    http = serving.http
    assert http.post(MODELS, json={"name": "bc"}).status_code == 409  # names are unique
    v1 = http.get(f"{MODELS}/bc/versions/1").json()
    lineage = v1["lineage"]
    job = serving.stack.job(serving.jobs[0])
    assert lineage["job_id"] == serving.jobs[0] and lineage["framework"] == "lightgbm"
    assert lineage["params"] == {"n_estimators": 15} and lineage["final_metrics"] == job["final_metrics"]
    assert lineage["artifact"]["sha256"] == job["artifact"]["sha256"] and len(lineage["dataset_sha256"]) == 64
    assert lineage["feature_names"] == FEATURES and lineage["class_labels"] == ["malignant", "benign"]
    export = serving.exports[0]
    assert export["status"] == "completed", export
    parity = export["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["n_rows"] == 114 and parity["metric"] == "auc"
    assert math.isclose(parity["metric_native"], parity["metric_onnx"], abs_tol=1e-6)
    assert math.isclose(parity["metric_native"], job["final_metrics"]["auc"], abs_tol=1e-9)
    assert v1["onnx"]["sha256"] == export["artifact"]["sha256"] and v1["onnx"]["input_shape"] == [None, 30]
    assert v1["onnx"]["opset"] and v1["onnx"]["input_name"] == "input" and v1["parity"]["passed"] is True
    assert [e["export_id"] for e in v1["exports"]] == [export["export_id"]]


def test_a_model_trained_on_a_text_column_answers_raw_rows_as_the_native_model(serving: Serving) -> None:
    """The README's churn story: upload a table with a text column, train, register, export, deploy, then call it
    with rows as the file has them (any key order, an unseen contract, a missing number)."""
    http, frame = serving.http, churn_frame(500)
    r = http.post("/api/v1/datasets", files={"file": ("churn.csv", frame.to_csv(index=False).encode(), "text/csv")})
    assert r.status_code == 201, r.text
    job_id = serving.stack.submit(framework="lightgbm", task="binary_classification",
                                  dataset={"uri": r.json()["uri"], "target": "churn"}, params={"n_estimators": 20})
    assert serving.stack.wait(job_id, lambda j: j["status"] in FINISHED)["status"] == "completed"
    assert http.post(MODELS, json={"name": "churn"}).status_code == 201
    assert http.post(f"{MODELS}/churn/versions", json={"job_id": job_id}).status_code == 201
    version = http.get(f"{MODELS}/churn/versions/1").json()
    assert version["inputs"] == [{"name": "tenure", "type": "number", "levels": None},
                                 {"name": "monthly_charges", "type": "number", "levels": None},
                                 {"name": "contract", "type": "category", "levels": ["month", "two_year", "year"]}]
    assert serving.export(1, model="churn")["status"] == "completed"
    r = http.post(DEPLOYMENTS, json={"name": "churn", "variants": [
        {"name": "a", "model": "churn", "version": 1, "weight": 100}]})
    assert r.status_code == 201, r.text
    serving.wait_revision("churn", 1)

    table = frame.drop(columns=["churn"]).head(60).astype({"contract": object})
    table.loc[0, "contract"], table.loc[1, "tenure"] = "weekly", float("nan")
    rows = raw_rows(table.assign(churn="?"))
    r = serving.predict("churn", rows)
    assert r.status_code == 200, r.text
    lineage = version["lineage"]
    recipe = FeatureRecipe.from_json(lineage["artifact"]["feature_recipe"])
    X = encode_frame(table, recipe).to_numpy(dtype="float32")  # the loader's own encoding of the same rows
    with open(lineage["artifact"]["uri"].removeprefix("file://"), "rb") as f:
        native = native_predict("lightgbm", "binary_classification", f.read(), X)
    served = [p[1] for p in r.json()["probabilities"]]
    assert max(abs(a - b) for a, b in zip(served, native)) <= 1e-4
    assert r.json()["classes"] == ["no", "yes"]
    encoded = [dict(zip(lineage["feature_names"], map(float, x))) for x in X[2:4]]  # the encoded form still works
    assert serving.predict("churn", encoded).json()["probabilities"] == r.json()["probabilities"][2:4]


def test_a_version_downloads_its_native_and_onnx_files_with_their_sha256(serving: Serving) -> None:
    http = serving.http
    v1 = http.get(f"{MODELS}/bc/versions/1").json()
    for route, recorded in (("artifact", v1["lineage"]["artifact"]), ("onnx", v1["onnx"])):
        with http.stream("GET", f"{MODELS}/bc/versions/1/{route}") as r:
            assert r.status_code == 200, route
            data = r.read()
        assert r.headers["x-content-sha256"] == recorded["sha256"] == hashlib.sha256(data).hexdigest()
        assert r.headers["content-type"] == "application/octet-stream" and "attachment" in r.headers[
            "content-disposition"]
    for path in ("nosuch/versions/1/onnx", "bc/versions/9/artifact"):
        r = http.get(f"{MODELS}/{path}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), path
    assert "nosuch" in http.get(f"{MODELS}/nosuch/versions/1/artifact").json()["detail"]


def test_registry_refusals_name_the_field(serving: Serving) -> None:
    http = serving.http
    r = http.post(f"{MODELS}/bc/versions", json={"job_id": "00000000-0000-0000-0000-000000000001"})
    assert r.status_code == 404 and r.json()["field"] == "job_id"  # as any missing object
    running = serving.stack.submit(framework="pytorch", task="regression", dataset={"uri": "builtin://diabetes"},
                                   params={"epochs": 2000})
    r = http.post(f"{MODELS}/bc/versions", json={"job_id": running})
    assert r.status_code == 409, r.text  # not completed
    assert http.delete(f"/api/v1/training/jobs/{running}").status_code in (200, 202)
    assert http.get(f"{MODELS}/nope").status_code == 404
    assert http.get(f"{MODELS}/bc/versions/9").status_code == 404
    assert http.post(MODELS, json={"name": "a\u0000b"}).status_code == 422
    r = http.post(f"{MODELS}/bc/versions/1/exports", json={"format": "onnx", "tolerance": 0})
    assert r.status_code == 422 and r.json()["field"] == "tolerance"


def test_aliases_move_between_versions(serving: Serving) -> None:
    http = serving.http
    assert http.put(f"{MODELS}/bc/aliases/staging", json={"version": 1}).json()["aliases"]["staging"] == 1
    assert http.put(f"{MODELS}/bc/aliases/staging", json={"version": 2}).json()["aliases"]["staging"] == 2
    assert http.get(f"{MODELS}/bc/versions/2").json()["aliases"] == ["staging"]
    assert http.get(f"{MODELS}/bc/versions/1").json()["aliases"] == []
    assert http.put(f"{MODELS}/bc/aliases/staging", json={"version": 7}).status_code == 404
    assert "staging" not in http.delete(f"{MODELS}/bc/aliases/staging").json()["aliases"]


def test_an_export_over_its_tolerance_fails_with_the_figures(serving: Serving) -> None:
    out = serving.export(1, tolerance=1e-12)
    assert out["status"] == "failed", out
    assert "max_abs_diff" in out["error"] and "tolerance" in out["error"]


def test_deploy_split_traffic_rollback_and_history(serving: Serving) -> None:
    http = serving.http
    r = http.post(DEPLOYMENTS, json={"name": "nothing-exported", "variants": [
        {"name": "a", "model": "bc", "version": 1, "weight": 100}, {"name": "b", "model": "missing", "version": 1,
                                                                     "weight": 0}]})
    assert r.status_code == 422 and r.json()["field"] == "variants[1].model"
    r = http.post(DEPLOYMENTS, json={"name": "bc", "reason": "first", "variants": [
        {"name": "a", "model": "bc", "version": 1, "weight": 90}, {"name": "b", "model": "bc", "version": 2,
                                                                    "weight": 10}]})
    assert r.status_code == 201, r.text
    assert r.json()["revision"] == 1 and [v["weight"] for v in r.json()["variants"]] == [90, 10]
    serving.wait_revision("bc", 1)

    seen: Counter[str] = Counter()
    for i in range(1000):
        r = serving.predict("bc", [ROWS[i % len(ROWS)]])
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["deployment"] == "bc" and out["revision"] == 1 and out["model"] == "bc"
        assert out["version"] == {"a": 1, "b": 2}[out["variant"]]
        assert out["predictions"][0] in ("malignant", "benign") and len(out["probabilities"][0]) == 2
        seen[out["variant"]] += 1
    assert 850 <= seen["a"] <= 950 and seen["a"] + seen["b"] == 1000, seen  # 90/10 (±5 sd)

    named = [dict(zip(FEATURES, ROWS[0]))]  # named features in any order
    named = [dict(reversed(list(named[0].items())))]
    assert serving.predict("bc", named).json()["predictions"] == serving.predict("bc", [ROWS[0]]).json()["predictions"]
    missing = serving.predict("bc", [{k: v for k, v in named[0].items() if k != "mean radius"}])
    assert missing.status_code == 422 and "mean radius" in missing.json()["field"]
    assert serving.predict("bc", [[1.0, 2.0]]).status_code == 422
    sticky = {serving.predict("bc", [ROWS[1]], key="user-42").json()["variant"] for _ in range(20)}
    assert len(sticky) == 1  # a key keeps its variant within a revision

    r = http.patch(f"{DEPLOYMENTS}/bc/traffic", json={"weights": {"a": 50, "b": 50}, "reason": "ramp up b"})
    assert r.status_code == 200 and r.json()["revision"] == 2
    assert http.patch(f"{DEPLOYMENTS}/bc/traffic", json={"weights": {"a": 60, "b": 30}}).status_code == 422
    serving.wait_revision("bc", 2)
    assert serving.predict("bc", [ROWS[0]]).json()["revision"] == 2
    r = http.post(f"{DEPLOYMENTS}/bc/rollback", json={"reason": "b looks worse"})
    assert r.status_code == 200 and r.json()["revision"] == 3 and [v["weight"] for v in r.json()["variants"]] == [90, 10]
    serving.wait_revision("bc", 3)
    history = http.get(f"{DEPLOYMENTS}/bc/history").json()["revisions"]
    assert [(h["revision"], h["change"], h["reason"]) for h in history] == [
        (1, "created", "first"), (2, "traffic", "ramp up b"), (3, "rollback", "b looks worse")]
    assert history[2]["rolled_back_to"] == 1 and all(h["at"] for h in history)

    def recorded() -> tuple[dict[str, int], list[dict[str, Any]]] | None:
        stats = http.get(f"{DEPLOYMENTS}/bc/predictions").json()["items"]
        counted = {s["variant"]: s["requests"] for s in stats if s["revision"] == 1 and not s["shadow"]}
        return (counted, stats) if sum(counted.values()) >= 1000 else None

    counted, stats = eventually(recorded, timeout=30, interval=0.3,  # records reach ClickHouse off the request path
                                message="the 1000 predictions of revision 1 never all reached ClickHouse")
    assert counted.get("a", 0) >= seen["a"] and counted.get("b", 0) >= seen["b"], stats
    assert all(s["p99_us"] > 0 for s in stats)


def test_a_shadow_gets_copies_but_never_answers(serving: Serving) -> None:
    r = serving.http.post(DEPLOYMENTS, json={"name": "shadowed", "shadow": {"model": "bc", "version": 2},
                                             "variants": [{"name": "main", "model": "bc", "version": 1,
                                                           "weight": 100}]})
    assert r.status_code == 201, r.text
    serving.wait_revision("shadowed", 1)
    for i in range(20):
        out = serving.predict("shadowed", [ROWS[i]]).json()
        assert out["variant"] == "main" and out["version"] == 1

    def recorded() -> list[dict[str, Any]] | None:
        stats = serving.http.get(f"{DEPLOYMENTS}/shadowed/predictions").json()["items"]
        return stats if sum(s["requests"] for s in stats if s["shadow"]) >= 20 else None

    stats = eventually(recorded, timeout=30, interval=0.3, message="the shadow's 20 predictions were never recorded")
    assert {s["version"] for s in stats if s["shadow"]} == {2}, stats
    shadow = serving.http.get(f"{DEPLOYMENTS}/shadowed/ab").json()["shadow"]  # the A/B report compares the shadow
    assert shadow["compared"] >= 20 and 0.5 <= shadow["agreement"] <= 1 and shadow["latency_p99_ms"] > 0


def test_keys_401_403_429_and_revocation_within_a_second(serving: Serving) -> None:
    http = serving.http
    body = {"name": "limited", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100}]}
    assert http.post(DEPLOYMENTS, json=body).status_code == 201
    serving.wait_revision("limited", 1)
    assert serving.predict("limited", [ROWS[0]], api_key="").status_code == 401
    assert serving.predict("limited", [ROWS[0]], api_key="ty_not-a-key").status_code == 401
    other = http.post(KEYS, json={"name": "other", "deployments": ["bc"]}).json()
    assert "key" in other and other["prefix"] == other["key"][:10]
    assert "key" not in http.get(KEYS).json()["items"][0]  # the key is shown once, only its hash is kept

    def known() -> httpx.Response | None:
        r = serving.predict("limited", [ROWS[0]], api_key=other["key"])
        return r if r.status_code != 401 else None

    denied = eventually(known, timeout=10, interval=0.01,  # the new key reaches the inference server through its feed
                        message="the new key never reached the inference server")
    assert denied.status_code == 403 and denied.headers["content-type"] == "application/problem+json"
    slow = http.post(KEYS, json={"name": "slow", "deployments": ["limited"], "rate_limit_per_s": 2}).json()
    assert serving.until_accepted("limited", slow["key"]) < 1.0  # the key reaches the server through its feed
    codes = [serving.predict("limited", [ROWS[0]], api_key=slow["key"]) for _ in range(6)]
    assert codes[-1].status_code == 429
    assert int(codes[-1].headers["Retry-After"]) >= 1
    x_api_key = serving.predict("limited", [ROWS[0]], api_key="", **{"X-API-Key": serving.key})
    assert x_api_key.status_code == 200
    ok = http.post(KEYS, json={"name": "soon revoked", "deployments": "*"}).json()
    serving.until_accepted("limited", ok["key"])
    assert http.delete(f"{KEYS}/{ok['id']}").status_code == 200
    eventually(lambda: serving.predict("limited", [ROWS[0]], api_key=ok["key"]).status_code == 401, timeout=1.0,
               interval=0.01, message="the revoked key was still accepted after a second")


def test_a_killed_inference_server_restarts_serving_the_current_revision(serving: Serving) -> None:
    http = serving.http
    body = {"name": "survivor", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100},
                                             {"name": "b", "model": "bc", "version": 2, "weight": 0}]}
    assert http.post(DEPLOYMENTS, json=body).status_code == 201
    assert http.post(f"{DEPLOYMENTS}/survivor/promote", json={"variant": "b"}).json()["revision"] == 2
    serving.wait_revision("survivor", 2)
    pid = serving.stack.endpoints()["pids"]["inference"]
    os.kill(pid, signal.SIGKILL)  # mid-load: requests are in flight from this test

    def answered() -> httpx.Response | None:
        r = serving.predict("survivor", [ROWS[3]])
        return r if r.status_code == 200 else None

    r = eventually(answered, timeout=60, interval=0.1, ignoring=(httpx.TransportError,),
                   message="the restarted inference server never answered")
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 2 and r.json()["variant"] == "b" and r.json()["version"] == 2
    assert serving.stack.endpoints()["pids"]["inference"] != pid


def test_a_deactivated_deployment_stops_serving_and_takes_no_change(serving: Serving) -> None:
    http = serving.http
    body = {"name": "retired", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100}]}
    assert http.post(DEPLOYMENTS, json=body).status_code == 201
    serving.wait_revision("retired", 1)
    assert http.post(f"{DEPLOYMENTS}/retired/rollback").status_code == 409  # no previous revision
    r = http.delete(f"{DEPLOYMENTS}/retired", params={"reason": "replaced"})
    assert r.status_code == 200 and r.json()["active"] is False
    eventually(lambda: serving.predict("retired", [ROWS[0]]).status_code == 404, timeout=10, interval=0.05,
               message="the deactivated deployment was still served")
    assert serving.predict("retired", [ROWS[0]]).status_code == 404
    assert http.patch(f"{DEPLOYMENTS}/retired/traffic", json={"weights": {"a": 100}}).status_code == 409
    assert http.get(f"{DEPLOYMENTS}/retired/history").json()["revisions"][-1]["change"] == "deactivate"


def test_revisions_swap_in_without_dropping_or_failing_a_request(serving: Serving) -> None:
    import threading

    http = serving.http
    body = {"name": "swapping", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 50},
                                             {"name": "b", "model": "bc", "version": 2, "weight": 50}]}
    assert http.post(DEPLOYMENTS, json=body).status_code == 201
    serving.wait_revision("swapping", 1)
    results: list[tuple[int, int]] = []
    done = threading.Event()

    def load() -> None:
        client = httpx.Client(base_url=str(serving.inference.base_url), timeout=30,
                              headers={"Authorization": f"Bearer {serving.key}"})
        while not done.is_set():
            r = client.post("/v1/deployments/swapping/predict", json={"instances": [ROWS[7]]})
            results.append((r.status_code, r.json().get("revision", -1)))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for revision, weights in enumerate(((90, 10), (10, 90), (100, 0), (0, 100), (50, 50)), 2):
            r = http.patch(f"{DEPLOYMENTS}/swapping/traffic", json={"weights": dict(zip("ab", weights))})
            assert r.json()["revision"] == revision
            serving.wait_revision("swapping", revision)
        update = {"variants": [{"name": "c", "model": "bc", "version": 2, "weight": 100}], "reason": "v2 only"}
        assert http.put(f"{DEPLOYMENTS}/swapping", json=update).json()["revision"] == 7
        serving.wait_revision("swapping", 7)
        time.sleep(0.2)
    finally:
        done.set()
        worker.join()
    assert len(results) > 50 and all(code == 200 for code, _ in results), Counter(c for c, _ in results)
    revisions = [rev for _, rev in results]
    assert revisions == sorted(revisions) and revisions[-1] == 7  # each request saw a whole revision, in order


def test_hostile_requests_get_a_4xx_and_the_next_request_still_works(serving: Serving) -> None:
    http = serving.http
    body = {"name": "hostile", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100}]}
    assert http.post(DEPLOYMENTS, json=body).status_code == 201
    serving.wait_revision("hostile", 1)
    auth = {"Authorization": f"Bearer {serving.key}", "content-type": "application/json"}
    url = "/v1/deployments/hostile/predict"
    nan_row = "[" + ", ".join(["NaN"] + ["1.0"] * 29) + "]"
    for content, status in [("[" * 200_000, 400),  # deeper than the parser goes
                            ('{"instances": [' + nan_row + "]}", 400),  # NaN is not JSON
                            ('{"instances": [[' + "1.0, " * 400_000 + "1.0]]}", 413),  # 2 MB
                            ('{"instances": [[[[[[1]]]]]]}', 422), ('{"instances": "x"}', 422),
                            ('{"instances": [["a\\u0000b"] ]}', 422), ('{"instances": [[1]], "extra": 1}', 422)]:
        r = serving.inference.post(url, content=content.encode(), headers=auth)
        assert r.status_code == status and r.headers["content-type"] == "application/problem+json", (content[:40], r.text)
    assert serving.predict("hostile", [ROWS[0]], key="user\u0000with a NUL").status_code == 200  # only hashed
    assert serving.predict("no-such-deployment", [ROWS[0]]).status_code == 404

    fb = f"{DEPLOYMENTS}/hostile/feedback"
    for content, status in [('[{"request_id": "r1", "label": "a\\u0000b"}]', 422),
                            ('[{"request_id": "r1", "value": NaN}]', 422),
                            ('[{"request_id": "r1", "label": "' + "x" * 2_000_000 + '"}]', 413),
                            ("[" * 5000 + "]" * 5000, 400), ('[{"request_id": 7, "label": "a"}]', 422),
                            ('[{"request_id": "r1", "label": "a", "value": 1.0}]', 422),
                            ('[{"request_id": "r1"}]', 422)]:
        r = http.post(fb, content=content.encode(), headers={"content-type": "application/json"})
        assert r.status_code == status and r.json().get("field"), (content[:40], r.status_code, r.text[:200])
    many = [{"request_id": f"r{i}", "label": "benign"} for i in range(10_001)]
    assert http.post(fb, json=many).status_code in (413, 422)
    assert http.post(f"{DEPLOYMENTS}/nope/feedback", json=[{"request_id": "r", "label": "a"}]).status_code == 404
    r = http.post(DEPLOYMENTS, json={**body, "name": "h2", "reason": "a\u0000b"})
    assert r.status_code == 422 and r.json()["field"] == "reason"
    assert http.patch(f"{DEPLOYMENTS}/hostile/traffic", content=b'{"weights": {"a": NaN}}',
                      headers={"content-type": "application/json"}).status_code == 422

    answered = serving.predict("hostile", [ROWS[0]])  # and a normal request right after
    assert answered.status_code == 200
    r = http.post(fb, json=[{"request_id": answered.json()["request_id"], "label": "benign"},
                            {"request_id": "never-answered", "label": "benign"}])
    assert r.status_code == 202 and r.json()["received"] == 2 and "never-answered" in r.json()["unknown_request_ids"]


def test_malformed_serving_messages_are_dead_lettered_and_serving_goes_on(serving: Serving) -> None:
    import asyncio
    import json

    import nats

    async def scenario() -> list[bytes]:
        nc = await nats.connect(serving.stack.nats_url)
        js = nc.jetstream()
        marker = f"garbage-{time.time_ns()}"
        await js.publish("trainyard.v1.telemetry.predictions", json.dumps({"batch_id": marker}).encode())
        await js.publish("trainyard.v1.telemetry.feedback", json.dumps({"batch_id": marker, "x": [1]}).encode())
        forged = {"aggregate": "deployment", "aggregate_id": marker, "type": "deployment.created", "payload": {}}
        await js.publish("trainyard.v1.deployment.created", json.dumps(forged).encode())
        seen: list[bytes] = []

        async def dead_letter(msg: Any) -> None:
            seen.append(msg.data)

        await js.subscribe("trainyard.v1.dlq.>", stream="TRAINYARD_DLQ", ordered_consumer=True, cb=dead_letter)
        await asyncio.to_thread(eventually, lambda: sum(marker.encode() in d for d in list(seen)) >= 3, timeout=20,
                                message="the prediction batch, feedback batch and forged event were not all "
                                        "dead-lettered")
        await nc.close()
        return [d for d in seen if marker.encode() in d]

    assert len(asyncio.run(scenario())) == 3  # the prediction batch, the feedback batch, the forged event
    body = {"name": "after-garbage", "variants": [{"name": "a", "model": "bc", "version": 1, "weight": 100}]}
    assert serving.http.post(DEPLOYMENTS, json=body).status_code == 201
    serving.wait_revision("after-garbage", 1)  # the feed still follows the events
    assert serving.predict("after-garbage", [ROWS[0]]).status_code == 200
