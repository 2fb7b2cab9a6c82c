"""The `trainyard` model-registry, export, deployment, API-key and predict commands, and the client methods behind
them, against scripted HTTP exchanges (`httpx.MockTransport`): each test lists the requests the command must make
(method, URL, query, JSON body) in order, with the API's answers, built through the API's own response models.
No server, no engines: fast."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import api.cli.app
from api.cli import cli
from api.client import TrainyardClient, TrainyardError
from api.schemas.deployments import DeploymentPublic, PredictionStats
from api.schemas.keys import ApiKeyCreated, ApiKeyPublic
from api.schemas.models import ExportPublic, ModelPublic, VersionPublic
from api.schemas.studies import StudyPublic
from tests.support.cli import one_error_line, trainyard
from tests.support.fakes import ANY, API, Script, Step, problem

pytestmark = pytest.mark.usefixtures("cli_env")
INFERENCE = "http://inference.test:9001"
NOW = "2025-05-01T12:00:00+00:00"
LATER = "2025-05-01T12:00:04+00:00"
JOB = str(uuid.uuid4())
EXPORT = str(uuid.uuid4())
KEY_ID = str(uuid.uuid4())
SHA = "ab" * 32


# ---- the API's answers, through its response models ---------------------------------------------------------
def model_out(name: str = "churn", latest: int = 0, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    return ModelPublic.model_validate({
        "name": name, "description": "", "tags": [], "aliases": aliases or {}, "latest_version": latest,
        "created_by": None, "created_at": NOW, "updated_at": NOW}).model_dump(mode="json")


def version_out(number: int, name: str = "churn") -> dict[str, Any]:
    return VersionPublic.model_validate({
        "model_name": name, "number": number, "job_id": JOB, "aliases": [], "onnx": None, "parity": None,
        "lineage": {"job_id": JOB, "framework": "lightgbm", "task": "binary_classification",
                    "final_metrics": {"auc": 0.991}, "artifact": {"feature_recipe": {"columns": [
                        {"name": "tenure", "type": "number"},
                        {"name": "contract", "type": "category", "levels": ["month", "two_year", "year"]}]}}},
        "created_by": None, "created_at": NOW}).model_dump(mode="json")


PARITY = {"max_abs_diff": 3.2e-07, "n_rows": 114, "tolerance": 1e-3, "metric": "auc", "metric_native": 0.991234,
          "metric_onnx": 0.991233, "passed": True}


def export_out(status: str, parity: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    running = status != "queued"
    ended = status in ("completed", "failed", "cancelled")
    return ExportPublic.model_validate({
        "id": EXPORT, "model_name": "churn", "model_version": 3, "format": "onnx", "tolerance": 1e-3,
        "status": status, "attempt": int(running), "runner_id": "runner-1" if running else None,
        "artifact": {"uri": "file:///data/onnx/churn-3.onnx", "sha256": SHA} if status == "completed" else None,
        "parity": parity, "error": error, "created_by": None, "created_at": NOW,
        "started_at": NOW if running else None, "finished_at": LATER if ended else None}).model_dump(mode="json")


def variant(name: str, version: int, weight: int) -> dict[str, Any]:
    return {"name": name, "model": "churn", "version": version, "weight": weight,
            "artifact": {"uri": f"file:///data/onnx/churn-{version}.onnx", "sha256": SHA}}


def deployment_out(revision: int, **weights: int) -> dict[str, Any]:
    versions = {"a": 3, "b": 4}
    return DeploymentPublic.model_validate({
        "name": "churn-api", "revision": revision, "active": True, "shadow": None, "created_by": None,
        "variants": [variant(n, versions[n], w) for n, w in weights.items()],
        "created_at": NOW, "updated_at": NOW}).model_dump(mode="json")


# ---- model registry ------------------------------------------------------------------------------------------
def test_register_creates_the_model_when_it_does_not_exist(scripted_api) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api(
        Step("GET", "/api/v1/models/churn", status=404, answer=problem(404, "Not found", "no model 'churn'", "name")),
        Step("POST", "/api/v1/models", {"name": "churn", "description": "", "tags": []}, 201, model_out()),
        Step("POST", "/api/v1/models/churn/versions", {"job_id": JOB}, 201, version_out(1)),
    )
    code, output = trainyard("model", "register", JOB, "--name", "churn", "--api", API)
    assert code == 0, output
    assert output.strip() == f"churn v1 registered from job {JOB}"
    script.done()


def test_register_on_an_existing_model_and_its_errors(scripted_api) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api(Step("GET", "/api/v1/models/churn", answer=model_out(latest=2)),
                   Step("POST", "/api/v1/models/churn/versions", {"job_id": JOB}, 201, version_out(3)))
    code, output = trainyard("model", "register", JOB, "--name", "churn", "--api", API)
    assert code == 0 and output.strip() == f"churn v3 registered from job {JOB}", output
    script.done()

    script = scripted_api(Step("GET", "/api/v1/models/churn", status=503,
                        answer=problem(503, "Service Unavailable", "the API is starting")))
    line = one_error_line(*trainyard("model", "register", JOB, "--name", "churn", "--api", API))
    assert line == "error: 503 Service Unavailable: the API is starting"  # no model created on a 5xx
    script.done()

    script = scripted_api()  # a job id that is no id is refused before any request: no model is created for it
    line = one_error_line(*trainyard("model", "register", "12ab", "--name", "churn", "--api", API))
    assert "'12ab' is not a job id" in line and line.endswith("(field job_id)")
    script.done()


def test_models_show_and_alias(scripted_api) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api(Step("GET", "/api/v1/models", params={"limit": "50", "offset": "0"},
                        answer={"items": [model_out(latest=3, aliases={"production": 3})], "total": 1, "limit": 50,
                                "offset": 0}),
                   Step("GET", "/api/v1/models/churn", answer=model_out(latest=3)),
                   Step("GET", "/api/v1/models/churn/versions", answer={"items": [version_out(1), version_out(3)]}),
                   Step("GET", "/api/v1/models/churn/versions/3", answer=version_out(3)),
                   Step("GET", "/api/v1/models/churn/versions/3", answer=version_out(3)),
                   Step("PUT", "/api/v1/models/churn/aliases/production", {"version": 3},
                        answer=model_out(latest=3, aliases={"production": 3})))
    code, output = trainyard("models", "--api", API)
    assert code == 0 and "1 models" in output and "churn" in output and "production→v3" in output, output
    code, output = trainyard("model", "show", "churn", "--api", API)
    assert code == 0 and "2 versions" in output and "v1" in output and "auc=0.991" in output, output
    code, output = trainyard("model", "show", "churn", "--version", "3", "--json", "--api", API)
    assert code == 0 and json.loads(output) == version_out(3), output
    code, output = trainyard("model", "show", "churn", "--version", "3", "--api", API)  # what to send to predict
    assert code == 0 and "tenure (number), contract (month|two_year|year)" in output, output
    code, output = trainyard("model", "alias", "churn", "production", "3", "--api", API)
    assert code == 0 and output.strip() == "churn: production → v3", output
    script.done()


def test_model_show_example_row_is_a_predict_body_the_version_accepts(scripted_api) -> None:  # type: ignore[no-untyped-def]
    builtin = {**version_out(1, "bc"), "inputs": None}
    builtin["lineage"] = {**builtin["lineage"], "dataset": {"uri": "builtin://breast_cancer"},
                          "feature_names": ["mean radius", "mean texture"], "artifact": {}}
    script = scripted_api(Step("GET", "/api/v1/models/churn/versions/3", answer=version_out(3)),
                          Step("GET", "/api/v1/models/bc", answer=model_out("bc", latest=1)),
                          Step("GET", "/api/v1/models/bc/versions/1", answer=builtin))
    code, output = trainyard("model", "show", "churn", "--version", "3", "--example-row", "--api", API)
    assert code == 0 and json.loads(output) == {"instances": [{"tenure": 0.0, "contract": "month"}]}, output
    code, output = trainyard("model", "show", "bc", "--example-row", "--api", API)  # the latest; the dataset's row 1
    assert code == 0 and json.loads(output) == {"instances": [{"mean radius": 17.99, "mean texture": 10.38}]}, output
    script.done()


# ---- exports ---------------------------------------------------------------------------------------------------
EXPORTS = "/api/v1/models/churn/versions/3/exports"


def test_export_watch_follows_it_to_completion_and_prints_the_parity(scripted_api) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api(Step("POST", EXPORTS, {"format": "onnx", "tolerance": 0.001}, 202, export_out("queued")),
                   Step("GET", f"{EXPORTS}/{EXPORT}", answer=export_out("queued")),
                   Step("GET", f"{EXPORTS}/{EXPORT}", answer=export_out("running")),
                   Step("GET", f"{EXPORTS}/{EXPORT}", answer=export_out("running")),
                   Step("GET", f"{EXPORTS}/{EXPORT}", answer=export_out("completed", PARITY)))
    code, output = trainyard("export", "churn", "3", "--tolerance", "0.001", "--watch", "--api", API)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == f"{EXPORT} queued" and lines[1] == f"{EXPORT} running on runner-1", output
    assert output.count("running") == 1  # one line per status change
    for text in ("completed", "(ran 4.0 s)", "passed: max_abs_diff 3.2e-07 (tolerance 0.001) on 114 rows",
                 "auc: native 0.991234, onnx 0.991233", "file:///data/onnx/churn-3.onnx"):
        assert text in output, f"{text!r} not in\n{output}"
    script.done()


def test_a_failed_export_prints_its_error_and_exits_1(scripted_api) -> None:  # type: ignore[no-untyped-def]
    failed = export_out("failed", {**PARITY, "max_abs_diff": 0.02, "passed": False},
                        "parity check failed: max_abs_diff 0.02 > tolerance 0.001")
    script = scripted_api(Step("POST", EXPORTS, {"format": "onnx"}, 202, export_out("queued")),
                   Step("GET", f"{EXPORTS}/{EXPORT}", answer=export_out("running")),
                   Step("GET", f"{EXPORTS}/{EXPORT}", answer=failed))
    code, output = trainyard("export", "churn", "3", "--watch", "--api", API)
    assert code == 1, output
    assert "FAILED: max_abs_diff 0.02" in output and "parity check failed: max_abs_diff 0.02 > tolerance" in output
    assert "Traceback" not in output
    script.done()

    script = scripted_api(Step("POST", EXPORTS, {"format": "onnx"}, 202, export_out("queued")))
    code, output = trainyard("export", "churn", "3", "--api", API)  # without --watch: the id, for scripts
    assert code == 0 and output.strip() == EXPORT, output
    script.done()


# ---- deployments -----------------------------------------------------------------------------------------------
SPEC = {"name": "churn-api", "variants": [{"name": "a", "model": "churn", "version": 3, "weight": 90},
                                          {"name": "b", "model": "churn", "alias": "staging", "weight": 10}],
        "reason": "first canary"}


def test_deploy_posts_the_file(scripted_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "churn-api.json"
    spec.write_text(json.dumps(SPEC))
    script = scripted_api(Step("POST", "/api/v1/deployments", SPEC, 201, deployment_out(1, a=90, b=10)))
    code, output = trainyard("deploy", str(spec), "--api", API)
    assert code == 0, output
    assert output.strip() == "churn-api revision 1: a=churn v3 90%, b=churn v4 10%"
    script.done()

    scripted_api()  # no request for a file that is not there or not JSON
    line = one_error_line(*trainyard("deploy", str(tmp_path / "missing.json"), "--api", API))
    assert "missing.json" in line and "No such file" in line
    spec.write_text("{not json")
    line = one_error_line(*trainyard("deploy", str(spec), "--api", API))
    assert line.startswith("error: Invalid input: ") and "churn-api.json" in line and "Expecting" in line


def test_traffic_parses_the_weights(scripted_api) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api(Step("PATCH", "/api/v1/deployments/churn-api/traffic",
                        {"weights": {"a": 90, "b": 10}, "reason": "canary"}, answer=deployment_out(2, a=90, b=10)),
                   Step("PATCH", "/api/v1/deployments/churn-api/traffic", {"weights": {"a": 50, "b": 50}},
                        answer=deployment_out(3, a=50, b=50)))
    code, output = trainyard("traffic", "churn-api", "a=90", "b=10", "--reason", "canary", "--api", API)
    assert code == 0 and output.strip() == "churn-api revision 2: a=churn v3 90%, b=churn v4 10%", output
    code, output = trainyard("traffic", "churn-api", "a=50", "b=50", "--json", "--api", API)
    assert code == 0 and json.loads(output)["revision"] == 3, output
    script.done()


@pytest.mark.parametrize("pairs", [["a=x", "b=10"], ["a90"], ["=90"], ["a=90", "a=10"], ["a=9.5"], ["a=-10"],
                                   ["a=101"], ["a=²"]])
def test_a_bad_weight_is_a_usage_error(scripted_api, pairs: list[str]) -> None:  # type: ignore[no-untyped-def]
    script = scripted_api()  # nothing is sent
    result = CliRunner().invoke(cli, ["traffic", "churn-api", *pairs, "--api", API])
    assert result.exit_code == 2, result.output
    assert "VARIANT=WEIGHT" in result.output or "given twice" in result.output, result.output
    assert "Traceback" not in result.output and not script.requests


def test_rollback_promote_undeploy_and_history(scripted_api) -> None:  # type: ignore[no-untyped-def]
    inactive = {**deployment_out(6, a=100), "active": False}
    script = scripted_api(Step("POST", "/api/v1/deployments/churn-api/rollback", {}, answer=deployment_out(3, a=90, b=10)),
                   Step("POST", "/api/v1/deployments/churn-api/rollback", {"reason": "bad canary"},
                        answer=deployment_out(4, a=100)),
                   Step("POST", "/api/v1/deployments/churn-api/promote", {"variant": "a"},
                        answer=deployment_out(5, a=100)),
                   Step("DELETE", "/api/v1/deployments/churn-api", params={"reason": "retired"}, answer=inactive),
                   Step("GET", "/api/v1/deployments/churn-api/history",
                        answer={"name": "churn-api", "revisions": [
                            {"revision": 1, "change": "created", "reason": "first", "active": True, "shadow": None,
                             "variants": [variant("a", 3, 100)], "rolled_back_to": None, "actor": "ann", "at": NOW},
                            {"revision": 2, "change": "rollback", "reason": "bad canary", "active": True,
                             "shadow": None, "variants": [variant("a", 3, 100)], "rolled_back_to": 1,
                             "actor": "bob", "at": LATER}]}),
                   Step("GET", "/api/v1/deployments/churn-api", answer=deployment_out(6, a=100)))
    code, output = trainyard("rollback", "churn-api", "--api", API)
    assert code == 0 and output.strip() == "churn-api revision 3: a=churn v3 90%, b=churn v4 10%", output
    code, output = trainyard("rollback", "churn-api", "--reason", "bad canary", "--api", API)
    assert code == 0 and "revision 4: a=churn v3 100%" in output, output
    code, output = trainyard("promote", "churn-api", "a", "--api", API)
    assert code == 0 and "revision 5" in output, output
    code, output = trainyard("undeploy", "churn-api", "--reason", "retired", "--api", API)
    assert code == 0 and "revision 6 (inactive)" in output, output
    code, output = trainyard("deployment", "churn-api", "--history", "--api", API)
    assert code == 0 and "2 revisions" in output and "rollback to 1" in output and "bad canary" in output, output
    assert "policy none" in " ".join(output.split()), output
    script.done()


POLICY = {"metric": "accuracy", "min_samples": 100, "min_lift": 0.0, "max_p_value": 0.05, "ramp": [10, 50, 100],
          "step_every_s": 60, "max_p99_latency_ms": None, "max_error_rate": None}
WAITING = "b at 10%: needs 100 labelled predictions per side at this revision, has 40 (control 380)"


def test_the_deployment_shows_its_policy_the_ramp_step_and_the_last_evaluation(scripted_api) -> None:  # type: ignore[no-untyped-def]
    current = {"a": {"requests": 400, "labelled": 380}, "b": {"requests": 45, "labelled": 40}}
    with_policy = DeploymentPublic.model_validate({
        **deployment_out(4, a=90, b=10), "policy": POLICY, "policy_state": {
            "steps": [{"variant": "b", "weight": 10, "step": 1, "of": 3, "ramp": [10, 50, 100], "halted": False}],
            "last_evaluation": {"at": LATER, "revision": 4, "decision": "none", "reason": WAITING,
                                "figures": {"current": current, "seconds_at_revision": 75.2}}}}).model_dump(mode="json")
    script = scripted_api(Step("GET", "/api/v1/deployments/churn-api", answer=with_policy),
                          Step("GET", "/api/v1/deployments/churn-api", answer=deployment_out(4, a=90, b=10)))
    code, output = trainyard("deployment", "churn-api", "--api", API)
    flat = " ".join(output.split())
    assert code == 0, output
    for text in ("accuracy, ramp 10% → 50% → 100%, a step every 60 s, 100 labelled per side",
                 "b 10%: ramp step 1 of 3", "on revision 4: none", WAITING,
                 "a 380 labelled/400 requests, b 40 labelled/45 requests; 75 s at the revision"):
        assert text in flat, f"{text!r} not in\n{output}"
    code, output = trainyard("deployment", "churn-api", "--api", API)
    assert code == 0 and "policy none" in " ".join(output.split()), output
    script.done()


# ---- API keys and predictions --------------------------------------------------------------------------------
def key_out(deployments: list[str], rate: float | None = None, revoked: bool = False) -> dict[str, Any]:
    return ApiKeyPublic.model_validate({
        "id": KEY_ID, "name": "mobile", "prefix": "ty_3kq", "deployments": deployments, "rate_limit_per_s": rate,
        "revoked_at": LATER if revoked else None, "revoked_reason": None, "created_by": None,
        "created_at": NOW}).model_dump(mode="json")


def test_api_key_create_prints_the_key_once(scripted_api) -> None:  # type: ignore[no-untyped-def]
    created = ApiKeyCreated.model_validate({**key_out(["churn-api"], 50.0), "key": "ty_3kqSECRET"}).model_dump(
        mode="json")
    script = scripted_api(Step("POST", "/api/v1/api-keys", {"name": "mobile", "deployments": ["churn-api"],
                                                     "rate_limit_per_s": 50.0}, 201, created),
                   Step("POST", "/api/v1/api-keys", {"name": "mobile", "deployments": "*"}, 201,
                        {**created, "deployments": ["*"], "rate_limit_per_s": None}),
                   Step("POST", "/api/v1/api-keys", {"name": "mobile", "deployments": "*"}, 201,
                        {**created, "deployments": ["*"], "rate_limit_per_s": None}),
                   Step("GET", "/api/v1/api-keys", answer={"items": [key_out(["churn-api"], 50.0)]}),
                   Step("DELETE", f"/api/v1/api-keys/{KEY_ID}", answer=key_out(["churn-api"], 50.0, revoked=True)))
    code, output = trainyard("api-key", "create", "mobile", "--deployment", "churn-api", "--rate", "50",
                             "--api", API)
    assert code == 0, output
    assert output.splitlines()[0] == "ty_3kqSECRET" and "shown only" in output and KEY_ID in output
    code, output = trainyard("api-key", "create", "mobile", "--api", API)
    assert code == 0 and output.splitlines()[0] == "ty_3kqSECRET", output
    code, output = trainyard("api-key", "create", "mobile", "-d", "*", "--api", API)  # all, as the API spells it
    assert code == 0 and output.splitlines()[0] == "ty_3kqSECRET", output
    code, output = trainyard("api-key", "create", "mobile", "-d", "*", "-d", "churn-api", "--api", API)
    assert code == 2 and "stands alone" in output, output
    code, output = trainyard("api-key", "list", "--api", API)
    assert code == 0 and KEY_ID in output and "ty_3kq" in output and "SECRET" not in output, output
    code, output = trainyard("api-key", "revoke", KEY_ID, "--api", API)
    assert code == 0 and output.strip() == f"{KEY_ID} (mobile) revoked", output
    script.done()


# ---- short ids: the first 8+ hex digits of an id, found through the list routes' id_prefix ---------------------
def study_out(study_id: str, status: str = "cancelling") -> dict[str, Any]:
    return StudyPublic.model_validate({
        "study_id": study_id, "name": "tune", "framework": "lightgbm", "task": "binary_classification",
        "dataset": {"uri": "builtin://breast_cancer"}, "objective": {"metric": "auc", "direction": "maximize"},
        "search_space": {}, "fixed_params": {}, "sampler": {}, "pruner": {}, "n_trials": 4, "max_parallel": 2,
        "timeout_s": None, "priority": "medium", "tags": [], "status": status, "counts": {}, "best_trial": None,
        "created_at": NOW, "finished_at": None}).model_dump(mode="json")


def page(items: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    return {"items": items, "total": len(items) if total is None else total, "limit": 5, "offset": 0}


def test_register_revoke_and_study_cancel_take_a_short_id(scripted_api) -> None:  # type: ignore[no-untyped-def]
    short = JOB.replace("-", "")[:10]
    jobs = {"id_prefix": short, "limit": "5"}
    script = scripted_api(
        Step("GET", "/api/v1/training/jobs", params=jobs, answer=page([{"job_id": JOB}])),
        Step("GET", "/api/v1/models/churn", answer=model_out(latest=2)),
        Step("POST", "/api/v1/models/churn/versions", {"job_id": JOB}, 201, version_out(3)),
        Step("GET", "/api/v1/api-keys", params={"id_prefix": KEY_ID[:8]}, answer={"items": [key_out(["*"])]}),
        Step("DELETE", f"/api/v1/api-keys/{KEY_ID}", answer=key_out(["*"], revoked=True)),
        Step("GET", "/api/v1/studies", params={"id_prefix": JOB[:8], "limit": "5"}, answer=page([study_out(JOB)])),
        Step("DELETE", f"/api/v1/studies/{JOB}", answer=study_out(JOB)))
    code, output = trainyard("model", "register", short.upper(), "--name", "churn", "--api", API)
    assert code == 0 and output.strip() == f"churn v3 registered from job {JOB}", output
    code, output = trainyard("api-key", "revoke", KEY_ID[:8], "--api", API)
    assert code == 0 and output.strip() == f"{KEY_ID} (mobile) revoked", output
    code, output = trainyard("study", "cancel", JOB[:8], "--api", API)
    assert code == 0 and output.strip() == f"{JOB} cancelling", output
    script.done()


def test_an_ambiguous_or_unknown_short_id_says_so_and_does_nothing(scripted_api) -> None:  # type: ignore[no-untyped-def]
    ids = [f"0565b60a-{n}000-4000-8000-000000000000" for n in range(3)]
    keys = [{**key_out(["*"]), "id": i} for i in ids]
    script = scripted_api(
        Step("GET", "/api/v1/api-keys", params={"id_prefix": "0565b60a"}, answer={"items": keys}),
        Step("GET", "/api/v1/studies", params={"id_prefix": "0565b60a", "limit": "5"},
             answer=page([study_out(i, "running") for i in ids[:2]])),
        Step("GET", "/api/v1/training/jobs", params={"id_prefix": "0565b60a", "limit": "5"}, answer=page([])),
        Step("GET", "/api/v1/api-keys", params={"id_prefix": "0565b60a"}, answer={"items": []}))
    line = one_error_line(*trainyard("api-key", "revoke", "0565b60a", "--api", API))
    assert line == (f"error: 422 Ambiguous id: '0565b60a' starts 3 API key ids: {', '.join(ids)}; give more of its "
                    "digits (field key_id)")
    line = one_error_line(*trainyard("study", "cancel", "0565b60a", "--api", API))
    assert line == (f"error: 422 Ambiguous id: '0565b60a' starts 2 study ids: {ids[0]}, {ids[1]}; give more of its "
                    "digits (field study_id)")
    line = one_error_line(*trainyard("model", "register", "0565b60a", "--name", "churn", "--api", API))
    assert line == "error: 404 Not found: no job id starts with '0565b60a' (field job_id)"
    line = one_error_line(*trainyard("api-key", "revoke", "0565b60a", "--api", API))
    assert line == "error: 404 Not found: no API key id starts with '0565b60a' (field key_id)"
    line = one_error_line(*trainyard("study", "watch", "0565b6", "--api", API))  # too short: no request
    assert line == ("error: 422 Invalid request: '0565b6' is not a study id (a UUID, or at least its first 8 hex "
                    "digits) (field study_id)")
    script.done()


ANSWER = {"predictions": [1], "probabilities": [[0.1, 0.9]], "classes": [0, 1], "deployment": "churn-api",
          "revision": 2, "variant": "a", "model": "churn", "version": 3, "request_id": "r1"}
PREDICT = f"{INFERENCE}/v1/deployments/churn-api/predict"


def test_predict_sends_the_bearer_key_to_the_inference_server(scripted_api, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    script = scripted_api(Step("POST", PREDICT, {"instances": [[1.5, 2.0]], "key": "user-7"}, answer=ANSWER,
                        headers={"authorization": "Bearer ty_secret"}),
                   Step("POST", PREDICT, {"instances": [[3.0, 4.0]]}, answer=ANSWER,
                        headers={"authorization": "Bearer ty_from_env"}))
    code, output = trainyard("predict", "churn-api", "--json", '{"instances": [[1.5, 2.0]]}', "--key", "user-7",
                             "--api-key", "ty_secret", "--inference", INFERENCE)
    assert code == 0 and json.loads(output) == ANSWER, output

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"instances": [[3.0, 4.0]]}))
    monkeypatch.setenv("TRAINYARD_INFERENCE_URL", INFERENCE)
    monkeypatch.setenv("TRAINYARD_API_KEY", "ty_from_env")
    code, output = trainyard("predict", "churn-api", "--json", f"@{request}")
    assert code == 0 and json.loads(output) == ANSWER, output
    script.done()

    script = scripted_api(Step("POST", PREDICT, ANY, 401, problem(401, "Unauthorized", "unknown API key")))
    line = one_error_line(*trainyard("predict", "churn-api", "--json", "[[1, 2]]"))
    assert line == "error: 401 Unauthorized: unknown API key"
    script.done()


def test_an_unreachable_server_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    transport = httpx.MockTransport(refuse)
    monkeypatch.setattr(api.cli.app, "TrainyardClient", lambda *a, **kw: TrainyardClient(*a, transport=transport, **kw))
    for args in (["models"], ["deployments"], ["traffic", "churn-api", "a=100"], ["api-key", "list"]):
        line = one_error_line(*trainyard(*args, "--api", API))
        assert line == f"error: cannot reach the Trainyard API at {API} (connection refused); " \
                       "is 'trainyard up' running?"
    line = one_error_line(*trainyard("predict", "churn-api", "--json", "[[1]]", "--inference", INFERENCE))
    assert line.startswith(f"error: cannot reach the inference server at {INFERENCE} (connection refused)")


# ---- the Python client -----------------------------------------------------------------------------------------
def test_the_client_methods() -> None:
    stats = PredictionStats.model_validate({"deployment": "churn-api", "items": []}).model_dump(mode="json")
    script = Script(
        Step("GET", "/api/v1/deployments/churn-api/predictions", params={"since_s": "600"}, answer=stats),
        Step("PUT", "/api/v1/deployments/churn-api",
             {"variants": [{"name": "a", "model": "churn", "version": 4, "weight": 100}],
              "shadow": {"model": "churn", "version": 5}, "reason": "v4"}, answer=deployment_out(7, a=100)),
        Step("DELETE", "/api/v1/deployments/churn-api", answer=deployment_out(8, a=100)),
        Step("DELETE", "/api/v1/models/churn/aliases/staging", answer=model_out(latest=3)),
        Step("GET", "/api/v1/deployments", params={"active": "true"}, answer={"items": []}),
        Step("GET", f"{EXPORTS}/{EXPORT}", answer=export_out("running")),
        Step("GET", f"{EXPORTS}/{EXPORT}", status=503, answer=problem(503, "Service Unavailable", "starting")),
        Step("GET", f"{EXPORTS}/{EXPORT}", answer=export_out("completed", PARITY)),
        Step("GET", "/api/v1/models/churn/versions/9", status=404,
             answer=problem(404, "Not found", "model 'churn' has no version 9", "version")),
    )
    with TrainyardClient(API, transport=httpx.MockTransport(script), inference_url=INFERENCE) as ty:
        assert ty.prediction_stats("churn-api", since_s=600) == stats
        ty.update_deployment("churn-api", [{"name": "a", "model": "churn", "version": 4, "weight": 100}],
                             shadow={"model": "churn", "version": 5}, reason="v4")
        assert ty.undeploy("churn-api")["revision"] == 8
        ty.remove_alias("churn", "staging")
        assert ty.deployments(active=True) == {"items": []}
        done = ty.wait_export("churn", 3, EXPORT, timeout=5, interval=0)
        assert done["status"] == "completed" and done["parity"]["n_rows"] == 114
        with pytest.raises(TrainyardError) as e:
            ty.version("churn", 9)
        assert e.value.status == 404 and e.value.field == "version" and not e.value.retryable
        with pytest.raises(TrainyardError) as e:
            ty.get_export("churn", 3, "nope")
        assert e.value.status == 422 and e.value.field == "export_id"
        assert ty.inference_url == INFERENCE and ty.api_key is None
    script.done()
