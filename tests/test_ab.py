"""Online A/B end to end on real engines: two real models of different quality behind one deployment, synthetic
traffic with feedback, the report's statistics, and the policy acting on them (ramp and promote a better
challenger, roll back a worse one, roll back a slow one), every step explained in the history; a sample-ratio
mismatch is flagged."""
from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from tests.support.stack import FINISHED, Stack, up_on_a_fresh_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
MODELS, DEPLOYMENTS, KEYS = "/api/v1/models", "/api/v1/deployments", "/api/v1/api-keys"
DATA = load_breast_cancer()
ROWS, LABELS = DATA.data.tolist(), [str(DATA.target_names[t]) for t in DATA.target]
POLICY = {"metric": "accuracy", "min_samples": 100, "ramp": [20, 50, 100], "step_every_s": 1, "max_p_value": 0.05}


class AB:
    def __init__(self, stack: Stack) -> None:
        self.stack, self.http = stack, stack.http
        self.inference = httpx.Client(base_url=stack.endpoints()["inference"], timeout=30)
        # v1: one shallow tree with a tiny learning rate — it says "benign" to everyone (accuracy ≈ 0.63);
        # v2: a real model (accuracy ≈ 0.97).
        jobs = [stack.submit(framework="lightgbm", task="binary_classification",
                             dataset={"uri": "builtin://breast_cancer"}, params=p)
                for p in ({"n_estimators": 1, "num_leaves": 2, "learning_rate": 0.001}, {"n_estimators": 40})]
        for job_id in jobs:
            assert stack.wait(job_id, lambda j: j["status"] in FINISHED)["status"] == "completed"
        assert (r := self.http.post(MODELS, json={"name": "bc"})).status_code == 201, r.text
        for job_id in jobs:
            assert self.http.post(f"{MODELS}/bc/versions", json={"job_id": job_id}).status_code == 201
        for version in (1, 2):
            export = f"{MODELS}/bc/versions/{version}/exports/" + self.http.post(
                f"{MODELS}/bc/versions/{version}/exports", json={}).json()["export_id"]
            eventually(lambda: self.http.get(export).json()["status"] == "completed", timeout=120, interval=0.2,
                       message=f"the ONNX export of bc v{version} never completed")
        self.key = self.http.post(KEYS, json={"name": "ab", "deployments": "*"}).json()["key"]
        self.rng = random.Random(7)

    def deploy(self, name: str, control: int, challenger: int, weight: int = 0, **policy: Any) -> None:
        body = {"name": name, "policy": {**POLICY, **policy} if policy is not None else None, "variants": [
            {"name": "control", "model": "bc", "version": control, "weight": 100 - weight},
            {"name": "challenger", "model": "bc", "version": challenger, "weight": weight}]}
        r = self.http.post(DEPLOYMENTS, json=body)
        assert r.status_code == 201, r.text
        def served() -> bool:  # the key too may not be served yet (the feed applies what the read model confirms)
            r = self.inference.get("/v1/deployments", headers={"Authorization": f"Bearer {self.key}"})
            return r.status_code == 200 and name in {d["name"] for d in r.json()["items"]}
        eventually(served,
                   timeout=20, interval=0.05,  # the inference server's feed follows the events
                   message=f"{name} never served")

    def traffic(self, name: str, n: int, key: str | None = None) -> int:
        """`n` predictions of random rows, then feedback with their true labels; returns how many were answered."""
        feedback = []
        for _ in range(n):
            i = self.rng.randrange(len(ROWS))
            body: dict[str, Any] = {"instances": [ROWS[i]]}
            if key is not None:
                body["key"] = key
            r = self.inference.post(f"/v1/deployments/{name}/predict", json=body,
                                    headers={"Authorization": f"Bearer {self.key}"})
            if r.status_code == 200:
                feedback.append({"request_id": r.json()["request_id"], "label": LABELS[i]})
        if feedback:
            r = self.http.post(f"{DEPLOYMENTS}/{name}/feedback", json=feedback)
            assert r.status_code == 202, r.text
            assert r.json()["received"] == len(feedback)
        return len(feedback)

    def history(self, name: str) -> list[dict[str, Any]]:
        return self.http.get(f"{DEPLOYMENTS}/{name}/history").json()["revisions"]

    def drive(self, name: str, until: Any, per_round: int = 150, timeout: float = 150) -> list[dict[str, Any]]:
        """Traffic and feedback in rounds until `until(history)` holds."""
        def there() -> list[dict[str, Any]] | None:
            history = self.history(name)
            if until(history):
                return history
            self.traffic(name, per_round)
            return None

        return eventually(there, timeout=timeout, interval=0.5, message=lambda: f"{name}: never got there: "
                          f"{[(h['change'], h['reason']) for h in self.history(name)]}")


@pytest.fixture(scope="module")
def ab(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AB]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-ab"),
                                TRAINYARD_POLICY_INTERVAL_S="0.5",
                                TRAINYARD_INFERENCE_TEST_DELAY="slowpoke/challenger=40") as s:
        yield AB(s)


def changes(history: list[dict[str, Any]]) -> list[str]:
    return [h["change"] for h in history]


def test_a_better_challenger_is_ramped_up_and_promoted_and_the_history_says_why(ab: AB) -> None:
    ab.deploy("promote-me", control=1, challenger=2)
    history = ab.drive("promote-me", lambda h: "policy_promote" in changes(h))
    steps = [h for h in history if h["change"].startswith("policy_")]
    assert [h["change"] for h in steps] == ["policy_step", "policy_step", "policy_promote"], changes(history)
    assert [{v["name"]: v["weight"] for v in h["variants"]}["challenger"] for h in steps] == [20, 50, 100]
    promoted = steps[-1]
    assert "significantly better" in promoted["reason"] and promoted["figures"]["variant"] == "challenger"
    comparison = promoted["figures"]["comparison"]
    assert comparison["decision"] == "challenger_better" and comparison["p_value"] <= 0.05
    low, high = comparison["ci"]
    assert 0 < low <= comparison["difference"] <= high  # the interval covers the estimate and excludes 0
    assert all(h["actor"] == "policy" for h in steps)
    ab.traffic("promote-me", 100)
    time.sleep(2)  # more evaluations after the promotion: nothing more happens
    assert changes(ab.history("promote-me")) == changes(history)
    # those evaluations recorded no event, yet the deployment shows the last one and why it did nothing
    state = ab.http.get(f"{DEPLOYMENTS}/promote-me").json()["policy_state"]
    last = state["last_evaluation"]
    assert last["decision"] == "none" and last["revision"] == ab.http.get(f"{DEPLOYMENTS}/promote-me").json()[
        "revision"] and "takes all the traffic" in last["reason"], last
    assert state["steps"][0]["variant"] == "challenger" and last["figures"]["current"] is not None

    report = ab.http.get(f"{DEPLOYMENTS}/promote-me/ab", params={"metric": "accuracy"}).json()
    by_name = {v["name"]: v for v in report["variants"]}
    assert report["control"] == "control" and by_name["challenger"]["value"] > by_name["control"]["value"]
    assert by_name["control"]["ci"][0] <= by_name["control"]["value"] <= by_name["control"]["ci"][1]
    assert report["comparisons"][0]["decision"] == "challenger_better" and "mSPRT" in report["method"]
    assert by_name["challenger"]["latency_p99_ms"] > 0 and by_name["challenger"]["error_rate"] == 0
    assert report["srm"]["mismatch"] is False
    series = ab.http.get(f"{DEPLOYMENTS}/promote-me/ab/timeseries", params={"bucket": 60}).json()["points"]
    assert series and "challenger" in series[-1]["comparisons"]
    odd = ab.http.get(f"{DEPLOYMENTS}/promote-me/ab/timeseries", params={"bucket": 90})  # buckets are whole minutes
    assert odd.status_code == 422 and odd.headers["content-type"].startswith("application/problem+json")


def test_a_worse_challenger_is_rolled_back_and_never_ramped_again(ab: AB) -> None:
    ab.deploy("roll-me-back", control=2, challenger=1)
    history = ab.drive("roll-me-back", lambda h: "policy_halt" in changes(h))
    assert changes(history)[:2] == ["created", "policy_step"]
    halt = history[-1]
    assert halt["change"] == "policy_halt" and "significantly worse" in halt["reason"]
    assert {v["name"]: v["weight"] for v in halt["variants"]} == {"control": 100, "challenger": 0}
    ab.traffic("roll-me-back", 100)
    time.sleep(2)  # several more evaluations
    assert changes(ab.history("roll-me-back")) == changes(history)


def test_a_slow_challenger_is_rolled_back_for_latency(ab: AB) -> None:
    ab.deploy("slowpoke", control=2, challenger=2, weight=50, max_p99_latency_ms=20)
    history = ab.drive("slowpoke", lambda h: "policy_halt" in changes(h), per_round=60)
    assert history[-1]["change"] == "policy_halt" and "p99 latency" in history[-1]["reason"]


def test_routing_forced_off_the_weights_is_flagged(ab: AB) -> None:
    ab.deploy("srm", control=2, challenger=2, weight=50, ramp=[100], min_samples=10**6)
    assert ab.traffic("srm", 120, key="always-the-same-user") == 120  # one sticky key: every request, one variant

    def counted() -> dict[str, Any] | None:
        report = ab.http.get(f"{DEPLOYMENTS}/srm/ab").json()
        return report if sum(v["requests"] for v in report["variants"]) >= 120 else None

    report = eventually(counted, timeout=30, interval=0.3, message="the A/B report never counted the 120 requests")
    assert report["srm"]["mismatch"] is True and report["srm"]["revisions"][0]["p_value"] < 0.001


def test_labels_metrics_and_latencies_mean_what_the_model_means(ab: AB) -> None:
    """A label the model never had, a metric its task has not: clear 422s, not a silent miscount or an empty
    table; the shadow's latency is in ms, named, like the variants'."""
    body = {"name": "edges", "variants": [{"name": "control", "model": "bc", "version": 2, "weight": 100}],
            "shadow": {"model": "bc", "version": 1}}
    assert (r := ab.http.post(DEPLOYMENTS, json=body)).status_code == 201, r.text
    r = ab.http.post(f"{DEPLOYMENTS}/edges/feedback", json=[{"request_id": "r-1", "label": "benign"},
                                                            {"request_id": "r-2", "label": "Benign"}])
    assert r.status_code == 422 and r.json()["field"] == "1.label", r.text
    assert r.json()["detail"] == "1.label: 'Benign' is not a class of 'edges'; its classes: benign, malignant"
    r = ab.http.get(f"{DEPLOYMENTS}/edges/ab", params={"metric": "rmse"})
    assert r.status_code == 422 and r.json()["field"] == "metric", r.text
    assert r.json()["detail"].endswith("a binary_classification deployment; its metrics: accuracy, logloss")
    assert ab.http.get(f"{DEPLOYMENTS}/edges/ab/timeseries", params={"metric": "mae"}).status_code == 422

    eventually(lambda: "edges" in {d["name"] for d in ab.inference.get("/v1/deployments", headers={"Authorization": f"Bearer {ab.key}"}).json()["items"]},
               timeout=20, interval=0.05, message="edges never served")
    assert ab.traffic("edges", 40) == 40

    def compared() -> dict[str, Any] | None:
        shadow = ab.http.get(f"{DEPLOYMENTS}/edges/ab").json()["shadow"]
        return shadow if shadow and shadow["compared"] >= 40 else None

    shadow = eventually(compared, timeout=30, interval=0.3, message="the shadow's requests were never compared")
    (by_variant,) = shadow["by_variant"]
    assert set(by_variant) == {"variant", "compared", "agreed", "shadow_latency_p50_ms", "shadow_latency_p95_ms",
                               "shadow_latency_p99_ms"}
    # the same requests' latency as the shadow's own figure (a sketch, in ms): the same unit, so the same size
    assert 0.5 < by_variant["shadow_latency_p50_ms"] / shadow["latency_p50_ms"] < 2, shadow
