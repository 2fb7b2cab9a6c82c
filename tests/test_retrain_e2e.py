"""A deployment retrained end to end on real engines (`trainyard up`: serve with its retrain driver, 2 runners,
serve-inference; PostgreSQL, NATS, chDB): a weak deployed version, a better retrain that passes its gate, is
registered, exported and added as a challenger at 10%, and a worse one refused with the figures in its reason."""
from __future__ import annotations

from typing import Any

import pytest

from tests.support.stack import FINISHED, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
MODELS, DEPLOYMENTS = "/api/v1/models", "/api/v1/deployments"
GATE = {"metric": "auc", "max_regression": 0}


def _deploy_a_weak_version(stack: Stack) -> None:
    job_id = stack.submit(framework="lightgbm", task="binary_classification",
                          dataset={"uri": "builtin://breast_cancer"}, params={"n_estimators": 3, "num_leaves": 3})
    assert stack.wait(job_id, lambda j: j["status"] in FINISHED)["status"] == "completed"
    assert stack.http.post(f"{MODELS}/bc/versions", json={"job_id": job_id}).status_code == 201
    r = stack.http.post(f"{MODELS}/bc/versions/1/exports", json={"format": "onnx"})
    assert r.status_code == 202, r.text
    export = f"{MODELS}/bc/versions/1/exports/{r.json()['export_id']}"
    eventually(lambda: stack.http.get(export).json()["status"] in FINISHED, timeout=90, interval=0.2,
               message="the export never finished")
    r = stack.http.post(DEPLOYMENTS, json={"name": "bc", "variants": [
        {"name": "control", "model": "bc", "version": 1, "weight": 100}]})
    assert r.status_code == 201, r.text


def _settled(stack: Stack, location: str, until: tuple[str, ...]) -> dict[str, Any]:
    last: list[dict[str, Any]] = [{}]

    def done() -> dict[str, Any] | None:
        last[0] = stack.http.get(location).json()
        return last[0] if last[0]["status"] in until else None

    return eventually(done, timeout=90, interval=0.2, message=lambda: f"retrain never settled: {last[0]}")


def test_a_gated_retrain_registers_a_better_version_and_refuses_a_worse_one_with_the_figures(stack: Stack) -> None:
    assert stack.http.post(MODELS, json={"name": "bc"}).status_code == 201
    _deploy_a_weak_version(stack)

    better = stack.http.post(f"{DEPLOYMENTS}/bc/retrain", json={
        "params": {"n_estimators": 60, "num_leaves": 8}, "gate": GATE, "register_as": "bc",
        "challenger": {"weight": 10}})
    assert better.status_code == 202, better.text
    assert better.json()["status"] == "training" and better.json()["model_version"] == 1
    job = stack.wait(better.json()["job_id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "completed" and job["final_metrics"]["champion_test_auc"] > 0.5
    report = stack.http.get(f"/api/v1/training/jobs/{job['job_id']}/evaluation").json()
    assert report["champion"]["metrics"]["auc"] == job["final_metrics"]["champion_test_auc"]
    passed = _settled(stack, better.headers["Location"], ("challenger_added", "challenger_failed", "gate_failed"))
    assert passed["status"] == "challenger_added", passed
    assert passed["registered_version"] == 2 and passed["challenger_variant"] == "retrain-v2"
    figures = passed["figures"]
    assert figures["candidate"] == job["final_metrics"]["test_auc"] > figures["champion"]
    assert f"{figures['candidate']:.4f}" in passed["reason"] and f"{figures['champion']:.4f}" in passed["reason"]
    deployment = stack.http.get(f"{DEPLOYMENTS}/bc").json()
    assert {v["name"]: (v["version"], v["weight"]) for v in deployment["variants"]} == {
        "control": (1, 90), "retrain-v2": (2, 10)}

    worse = stack.http.post(f"{DEPLOYMENTS}/bc/retrain", json={
        "variant": "control", "params": {"n_estimators": 1, "num_leaves": 2}, "gate": GATE, "register_as": "bc"})
    assert worse.status_code == 202, worse.text
    refused = _settled(stack, worse.headers["Location"], ("gate_failed", "registered", "job_failed"))
    assert refused["status"] == "gate_failed", refused
    candidate, champion = refused["figures"]["candidate"], refused["figures"]["champion"]
    assert candidate < champion
    assert f"{candidate:.4f}" in refused["reason"] and f"{champion:.4f}" in refused["reason"]
    assert "over the allowed 0.0000" in refused["reason"]
    assert stack.http.get(f"{MODELS}/bc").json()["latest_version"] == 2  # nothing registered

    listed = stack.http.get(f"{DEPLOYMENTS}/bc/retrains").json()
    assert [r["status"] for r in listed["items"]] == ["gate_failed", "challenger_added"] and listed["total"] == 2


def test_retrain_refusals_name_the_field(stack: Stack) -> None:
    missing = stack.http.post(f"{DEPLOYMENTS}/nope/retrain", json={})
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    for body, field in (({"gate": {"metric": "speed"}}, "gate.metric"), ({"gate": {"metric": "rmse"}}, "gate.metric"),
                        ({"challenger": {"weight": 10}}, "challenger"),
                        ({"variant": "zzz"}, "variant"),
                        ({"params": {"n_estimators": -1}}, "params.n_estimators"),
                        ({"validation": {"strategy": "kfold"}}, "validation.test_fraction")):
        r = stack.http.post(f"{DEPLOYMENTS}/bc/retrain", json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text, (field, r.text)
    assert stack.http.get(f"{DEPLOYMENTS}/bc/retrains/00000000-0000-0000-0000-000000000000").status_code == 404


def test_a_schedule_carries_the_same_retrain(stack: Stack) -> None:
    r = stack.http.post("/api/v1/schedules", json={
        "name": "nightly-retrain", "cron": "0 3 * * *", "timezone": "UTC",
        "retrain": {"deployment": "bc", "params": {"n_estimators": 1, "num_leaves": 2}, "gate": GATE}})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "retrain" and r.json()["template"]["deployment"] == "bc"
    fired = stack.http.post(f"/api/v1/schedules/{r.json()['id']}/trigger")
    assert fired.status_code in (200, 202), fired.text
    job_id = fired.json()["run_id"]

    def retrained() -> dict[str, Any] | None:
        rows = [x for x in stack.http.get(f"{DEPLOYMENTS}/bc/retrains").json()["items"] if x["job_id"] == job_id]
        return rows[0] if rows and rows[0]["status"] == "gate_failed" else None

    refused = eventually(retrained, timeout=90, interval=0.2, message="the scheduled retrain never settled")
    assert "over the allowed" in refused["reason"]
    missing = stack.http.post("/api/v1/schedules", json={"name": "nope", "cron": "0 3 * * *",
                                                         "retrain": {"deployment": "nope"}})
    assert missing.status_code == 422 and "retrain.deployment" in missing.text
