"""Hyperparameter studies end to end on real engines: `trainyard up` (serve with the study driver + 2 runners).

A study's trials are training jobs on the runners; the driver asks Optuna, records each ask before the job is
submitted and tells each outcome; the read models show the study, its trials and its best trial.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.stack import JOBS, Stack, up_on_a_fresh_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
STUDIES = "/api/v1/studies"
ENDED = ("completed", "cancelled", "failed")


def study_body(**over: Any) -> dict[str, Any]:
    body = {"name": "bc-tpe", "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "objective": {"metric": "auc", "direction": "maximize"},
            "search_space": {"num_leaves": {"type": "int", "low": 4, "high": 64},
                             "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True}},
            "fixed_params": {"n_estimators": 20}, "sampler": {"type": "tpe", "seed": 7}, "n_trials": 12,
            "max_parallel": 2}
    body.update(over)
    return body


@pytest.fixture(scope="module")
def stack(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-studies")) as s:
        yield s


def create(s: Stack, body: dict[str, Any], **headers: str) -> str:
    r = s.http.post(STUDIES, json=body, headers=headers)
    assert r.status_code == 202, r.text
    return r.json()["study_id"]


def study(s: Stack, study_id: str) -> dict[str, Any]:
    r = s.http.get(f"{STUDIES}/{study_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_study(s: Stack, study_id: str, until: Any, timeout: float = 240) -> dict[str, Any]:
    last: list[dict[str, Any]] = [{}]

    def reached() -> dict[str, Any] | None:
        try:
            last[0] = study(s, study_id)
        except Exception:  # serve is being restarted
            return None
        return last[0] if until(last[0]) else None

    return eventually(reached, timeout=timeout, interval=0.2,
                      message=lambda: f"study {study_id} never reached the expected state: {last[0]}")


def trials(s: Stack, study_id: str) -> list[dict[str, Any]]:
    r = s.http.get(f"{STUDIES}/{study_id}/trials", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_a_tpe_study_runs_every_trial_once_and_reports_the_best(stack: Stack) -> None:
    study_id = create(stack, study_body())
    done = wait_study(stack, study_id, lambda st: st["status"] in ENDED)
    assert done["status"] == "completed", done
    rows = trials(stack, study_id)
    assert [t["number"] for t in rows] == list(range(12))  # every number exactly once, no gaps
    assert all(t["state"] == "completed" for t in rows) and done["counts"]["completed"] == 12
    best = max(rows, key=lambda t: (t["value"], -t["number"]))
    assert done["best_trial"]["number"] == best["number"] and done["best_trial"]["value"] == best["value"]
    assert len({t["job_id"] for t in rows}) == 12
    job = stack.job(best["job_id"])  # every trial is an ordinary training job
    assert job["study_id"] == study_id and job["trial_number"] == best["number"]
    assert job["final_metrics"]["auc"] == best["value"]
    assert job["params"]["n_estimators"] == 20 and job["params"]["num_leaves"] == best["params"]["num_leaves"]
    listed = stack.http.get(JOBS, params={"study_id": study_id, "limit": 100}).json()
    assert listed["total"] == 12
    history = stack.http.get(f"{STUDIES}/{study_id}/history").json()["points"]
    assert [p["number"] for p in history] == list(range(12))
    assert history[-1]["best_so_far"] == best["value"]
    imp = stack.http.get(f"{STUDIES}/{study_id}/importances").json()
    assert imp["completed_trials"] == 12 and set(imp["importances"]) == {"num_leaves", "learning_rate"}
    ids = ",".join(t["job_id"] for t in rows[:3])
    cmp = stack.http.get("/api/v1/experiments/compare", params={"job_ids": ids, "metric": "valid_auc"}).json()
    assert [r["job_id"] for r in cmp["runs"]] == [t["job_id"] for t in rows[:3]]
    assert all(len(r["points"]) == 20 and "auc" in r["final_metrics"] for r in cmp["runs"])
    assert stack.http.delete(f"{STUDIES}/{study_id}").status_code == 409  # finished


def test_cancel_mid_study_keeps_completed_trials(stack: Stack) -> None:
    body = study_body(name="to-cancel", fixed_params={"n_estimators": 3000}, n_trials=20,
                      search_space={"num_leaves": {"type": "int", "low": 4, "high": 8}})
    study_id = create(stack, body)
    wait_study(stack, study_id, lambda st: st["counts"]["running"] >= 1, timeout=60)
    r = stack.http.delete(f"{STUDIES}/{study_id}")
    assert r.status_code == 202, r.text
    ended = wait_study(stack, study_id, lambda st: st["status"] in ENDED, timeout=60)
    assert ended["status"] == "cancelled"
    rows = trials(stack, study_id)
    assert len(rows) < 20 and all(t["state"] in ("completed", "failed", "pruned") for t in rows)
    time.sleep(1.0)
    assert len(trials(stack, study_id)) == len(rows)  # no new trials after the cancel


def test_a_median_pruner_prunes_bad_trials(stack: Stack) -> None:
    body = study_body(name="pruned", sampler={"type": "random", "seed": 3}, n_trials=10, max_parallel=1,
                      fixed_params={"n_estimators": 200},
                      search_space={"learning_rate": {"type": "float", "low": 1e-5, "high": 0.5, "log": True}},
                      pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 5})
    study_id = create(stack, body)
    done = wait_study(stack, study_id, lambda st: st["status"] in ENDED)
    assert done["status"] == "completed", done
    rows = trials(stack, study_id)
    pruned = [t for t in rows if t["state"] == "pruned"]
    assert pruned, rows
    for t in pruned:
        assert t["pruned_at_step"] is not None and t["pruned_at_step"] < 200
        assert stack.job(t["job_id"])["status"] == "cancelled"


@pytest.mark.parametrize("field,body", [
    ("search_space.num_leaves.low", study_body(search_space={"num_leaves": {"type": "int", "low": 50, "high": 4}})),
    ("objective.metric", study_body(objective={"metric": "rmse"})),
    ("n_trials", study_body(n_trials=0)),
    ("search_space.num_leaves.choices", study_body(search_space={"num_leaves": {"type": "categorical",
                                                                                "choices": []}})),
    ("search_space.n_estimator", study_body(search_space={"n_estimator": {"type": "int", "low": 1, "high": 9}})),
    ("sampler.type", study_body(sampler={"type": "anneal"})),
    ("name", study_body(name="a\u0000b")),
])
def test_bad_studies_are_refused_naming_the_field(stack: Stack, field: str, body: dict[str, Any]) -> None:
    r = stack.http.post(STUDIES, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.headers["content-type"].startswith("application/problem+json")


def test_unknown_study_is_404(stack: Stack) -> None:
    r = stack.http.get(f"{STUDIES}/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["field"] == "study_id"


def test_a_killed_driver_resumes_the_study_without_duplicate_or_missing_trials(stack: Stack) -> None:
    study_id = create(stack, study_body(name="killed", n_trials=10, fixed_params={"n_estimators": 300}))
    wait_study(stack, study_id, lambda st: st["counts"]["completed"] >= 2, timeout=120)
    os.kill(stack.endpoints()["pids"]["serve"], signal.SIGKILL)  # the driver's process
    done = wait_study(stack, study_id, lambda st: st["status"] in ENDED, timeout=300)
    assert done["status"] == "completed", done
    rows = trials(stack, study_id)
    assert [t["number"] for t in rows] == list(range(10)) and len({t["job_id"] for t in rows}) == 10
    listed = stack.http.get(JOBS, params={"study_id": study_id, "limit": 100}).json()
    assert listed["total"] == 10  # one job per trial, none submitted twice


def test_the_cli_creates_watches_and_lists_a_study(stack: Stack, tmp_path: Any) -> None:
    import json

    from typer.testing import CliRunner

    from api.cli import cli

    spec = tmp_path / "study.json"
    spec.write_text(json.dumps(study_body(name="from-cli", n_trials=3)))
    api = str(stack.http.base_url).rstrip("/")
    result = CliRunner(env=stack.cli_env()).invoke(cli, ["study", "create", str(spec), "--watch", "--api", api])
    assert result.exit_code == 0, result.output
    study_id = result.output.splitlines()[0].strip()
    assert study(stack, study_id)["status"] == "completed"
    assert "from-cli" in result.output and "completed" in result.output and "3/3 trials" in result.output
    listed = CliRunner(env=stack.cli_env()).invoke(cli, ["studies", "--api", api])
    assert listed.exit_code == 0 and study_id in listed.output
    bad = CliRunner().invoke(cli, ["study", "watch", "not-a-uuid", "--api", api])
    assert bad.exit_code == 1 and bad.output.startswith("error:") and "Traceback" not in bad.output


def test_a_killed_runner_costs_its_trial_an_attempt_and_the_study_still_completes(stack: Stack) -> None:
    study_id = create(stack, study_body(name="runner-killed", n_trials=3, max_parallel=1,
                                        fixed_params={"n_estimators": 20000},
                                        search_space={"num_leaves": {"type": "int", "low": 4, "high": 6}}))
    first = wait_study(stack, study_id, lambda st: st["counts"]["running"] == 1, timeout=60)
    assert first["status"] == "running"
    job_id = trials(stack, study_id)[0]["job_id"]
    job = stack.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["current_step"] > 0, timeout=60)
    os.kill(int(job["runner_id"].rsplit(":", 1)[1]), signal.SIGKILL)
    done = wait_study(stack, study_id, lambda st: st["status"] in ENDED, timeout=300)
    assert done["status"] == "completed" and done["counts"]["completed"] == 3, done
    assert stack.job(job_id)["attempt"] == 2  # the lost lease spent one attempt; the trial is still trial 0
    assert [t["number"] for t in trials(stack, study_id)] == [0, 1, 2]


def test_hostile_study_requests_get_4xx_and_a_normal_one_still_runs(stack: Stack) -> None:
    deep: Any = 1
    for _ in range(10):
        deep = [deep]
    cases = [
        (422, study_body(search_space={"num_leaves": {"type": "categorical", "choices": deep}})),
        (422, study_body(fixed_params={"learning_rate": "NaN"})),
        (422, study_body(search_space={"num_leaves": {"type": "int", "low": 4, "high": "x" * 100}})),
        (422, study_body(tags=["a\u0000"])),
        (413, study_body(name="x" * 2_000_000)),
        (422, study_body(n_trials=2**70)),
        (422, study_body(max_parallel="2")),
    ]
    for status, body in cases:
        r = stack.http.post(STUDIES, json=body)
        assert r.status_code == status, (status, r.text[:300])
        assert r.headers["content-type"].startswith("application/problem+json")
    r = stack.http.post(STUDIES, content=b'{"name": "n", "search_space": {"x": {"low": NaN}}}',
                        headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    for query in ("?limit=0", "?offset=99999999999999999999", "?status=%00", "?tag=%00"):
        assert stack.http.get(f"{STUDIES}{query}").status_code == 422, query
    assert stack.http.get(f"{STUDIES}/not-a-uuid/trials").status_code == 422
    study_id = create(stack, study_body(name="after-hostile", n_trials=2))
    assert wait_study(stack, study_id, lambda st: st["status"] in ENDED)["status"] == "completed"


def test_a_forged_study_event_is_dead_lettered_and_studies_still_run(stack: Stack) -> None:
    import asyncio
    import json

    import nats

    async def forge() -> None:
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        await js.publish("trainyard.v1.study.created", b"\x00not json")
        await js.publish("trainyard.v1.study.created", json.dumps({"aggregate": "study", "type": "study.created",
                                                                    "aggregate_id": "nope"}).encode())
        await nc.close()

    asyncio.run(forge())
    eventually(lambda: stack.http.get("/readyz").json()["stages"]["study-driver"]["poisoned"] >= 2, timeout=30,
               interval=0.2, message=lambda: "the study driver never dead-lettered both forgeries: "
               f"{stack.http.get('/readyz').json()['stages']['study-driver']}")
    study_id = create(stack, study_body(name="after-forgery", n_trials=2))
    assert wait_study(stack, study_id, lambda st: st["status"] in ENDED)["status"] == "completed"
