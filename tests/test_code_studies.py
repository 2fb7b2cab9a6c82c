"""Studies of the user's own code, `trainyard run DIR`, and a code job's artifacts (issue 19 items 1, 3, 5) on
`trainyard up`: a study of 8 code trials whose script reports a curve that depends on its sampled param prunes the
bad trials with a median pruner and completes with a best trial; `trainyard run` packs a folder, uploads it once
and follows the job it submits; files a script hands over with `run.log_artifact` are listed on its job and
downloadable there (project-scoped), within their bounds."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import trainyard
from tests.support.stack import FINISHED, JOBS, Stack, up_on_a_fresh_database
from tests.test_code_jobs import upload
from tests.test_studies import ENDED, STUDIES, create, trials, wait_study

pytestmark = pytest.mark.integration

CURVE = '''
import time
import trainyard.sdk as ty

run = ty.init()
x = run.params["x"]
for step in range(1, run.params["steps"] + 1):
    loss = x + 1.0 / step  # a worse x is worse at every step: the pruner can tell early
    run.log({"loss": loss}, step=step)
    run.report(loss, step)
    if run.should_stop():
        break
    time.sleep(0.05)  # room for the pruner's answer to come back while the trial runs
run.finish(metrics={"val_loss": loss})
'''

ARTIFACTS = '''
import trainyard.sdk as ty

run = ty.init()
report = run.output_dir / "report.txt"
report.write_text("confusion matrix\\n" * 100)
run.log_artifact(report, "report.txt")
run.log_artifact(report, "copy/of/report")
run.finish(metrics={"done": 1})
'''


@pytest.fixture(scope="module")
def stack(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-code-studies")) as s:
        yield s


def code_study(code_id: str, **over: Any) -> dict[str, Any]:
    body = {"name": "curve", "framework": "python", "task": "regression", "dataset": {"uri": "builtin://diabetes"},
            "code": {"code_id": code_id, "entrypoint": "curve.py"}, "objective": {"metric": "val_loss"},
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 10.0}}, "fixed_params": {"steps": 30},
            "sampler": {"type": "random", "seed": 11}, "pruner": {"type": "median", "n_startup_trials": 2,
                                                                  "n_warmup_steps": 2},
            "n_trials": 8, "max_parallel": 2, "resources": {"cpus": 1, "memory_mb": 1024}}
    body.update(over)
    return body


def test_a_study_of_code_trials_prunes_bad_trials_and_finds_the_best(stack: Stack) -> None:
    code_id = upload(stack.http, {"curve.py": CURVE})
    study_id = create(stack, code_study(code_id))
    done = wait_study(stack, study_id, lambda st: st["status"] in ENDED, timeout=300)
    assert done["status"] == "completed", done
    assert done["objective"] == {"metric": "val_loss", "direction": "minimize"}
    rows = trials(stack, study_id)
    assert len(rows) == 8
    pruned = [t for t in rows if t["state"] == "pruned"]
    completed = [t for t in rows if t["state"] == "completed"]
    assert pruned and completed, rows
    best = min(completed, key=lambda t: t["value"])
    assert done["best_trial"]["number"] == best["number"] and done["best_trial"]["value"] == best["value"]
    for t in pruned:
        assert t["pruned_at_step"] is not None and t["pruned_at_step"] < 30
        job = stack.job(t["job_id"])
        assert job["status"] == "cancelled" and job["framework"] == "python", job
        assert job["params"]["steps"] == 30 and job["params"]["x"] == t["params"]["x"]
        assert job["code"]["code_id"] == code_id and job["resources"]["memory_mb"] == 1024
    # the trial's reports are its `objective` series too (what a rebuilt pruner reads back)
    steps = [p["step"] for p in stack.full_series(best["job_id"], "objective", expected=30)]
    assert steps == list(range(1, 31))


@pytest.mark.parametrize("change, field", [
    ({"code": None}, "code"),
    ({"code": {"code_id": "0" * 32, "entrypoint": "curve.py"}}, "code.code_id"),
    ({"framework": "lightgbm", "objective": {"metric": "rmse"}, "fixed_params": {},
      "search_space": {"num_leaves": {"type": "int", "low": 4, "high": 8}}}, "code"),
    ({"objective": {"metric": "val\x00loss"}}, "objective.metric"),
    ({"search_space": {"steps": {"type": "int", "low": 1, "high": 5}}}, "search_space.steps"),
    ({"search_space": {"x": {"type": "float", "low": 5, "high": 1}}}, "search_space.x.low"),
    ({"fixed_params": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": 1}}}}}}}}}}}},
     "fixed_params.a.b.c.d.e.f.g.h.i.j"),
])
def test_bad_code_studies_are_refused_naming_the_field(stack: Stack, change: dict, field: str) -> None:
    code_id = upload(stack.http, {"curve.py": CURVE})
    body = code_study(code_id)
    body.update(change)
    r = stack.http.post(STUDIES, json=body)
    assert r.status_code == 422, r.text
    assert r.json().get("field") == field or field in r.text, r.text


def test_trainyard_run_packs_uploads_once_and_follows_the_job(stack: Stack, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in stack.cli_env().items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "train.py").write_text(CURVE.replace("curve", "train"))
    (folder / ".gitignore").write_text("data/\n")
    (folder / "data").mkdir()
    (folder / "data" / "big.bin").write_bytes(b"\0" * 100_000)
    code, out = trainyard("run", str(folder), "--entry", "train.py", "-p", "x=0.5", "-p", "steps=3",
                          "--task", "regression", "--cpus", "1", "--memory-mb", "512", "--watch")
    assert code == 0, out
    assert "uploaded" in out and "completed" in out, out
    jobs = stack.http.get(JOBS, params={"limit": 5}).json()["items"]
    job = stack.job(jobs[0]["job_id"])
    assert job["status"] == "completed" and job["params"] == {"x": 0.5, "steps": 3}, job
    assert job["resources"] == {"cpus": 1, "memory_mb": 512, "gpus": 0} and job["final_metrics"]["val_loss"] > 0
    bundle = stack.http.get(f"/api/v1/code/{job['code']['code_id']}").json()
    assert bundle["files"] == 2  # .gitignore and train.py: data/ left out

    code, out = trainyard("run", str(folder), "--entry", "train.py", "-p", "x=1", "-p", "steps=2")
    assert code == 0 and "already uploaded" in out, out
    job_id = out.strip().splitlines()[-1]
    assert stack.wait(job_id, lambda j: j["status"] in FINISHED)["code"]["code_id"] == bundle["code_id"]

    code, out = trainyard("run", str(folder), "--entry", "missing.py")
    assert code == 1 and "code.entrypoint" in out, out


def test_a_code_jobs_artifacts_are_listed_and_downloadable_in_its_project(stack: Stack) -> None:
    http = stack.http
    code_id = upload(http, {"arts.py": ARTIFACTS})
    r = http.post(JOBS, json={"name": "arts", "framework": "python", "task": "regression",
                              "code": {"code_id": code_id, "entrypoint": "arts.py"}})
    assert r.status_code == 202, r.text
    job = stack.wait(r.json()["job_id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "completed", job
    text = b"confusion matrix\n" * 100
    digest = hashlib.sha256(text).hexdigest()
    listed = {a["name"]: a for a in job["artifacts"]}
    assert set(listed) == {"report.txt", "copy/of/report"}
    assert listed["report.txt"]["sha256"] == digest and listed["report.txt"]["size_bytes"] == len(text)
    assert not job.get("artifact")  # no model saved

    got = http.get(f"{JOBS}/{job['job_id']}/artifacts/report.txt")
    assert got.status_code == 200 and got.content == text, got.text
    assert "report.txt" in got.headers["content-disposition"]
    got = http.get(f"{JOBS}/{job['job_id']}/artifacts/copy/of/report")
    assert got.status_code == 200 and got.content == text
    missing = http.get(f"{JOBS}/{job['job_id']}/artifacts/nope")
    assert missing.status_code == 404 and missing.json()["field"] == "name", missing.text

    # another project sees no such job, and no artifact of it
    assert http.post("/api/v1/projects", json={"name": "other-arts"}).status_code in (201, 409)
    other = http.get(f"{JOBS}/{job['job_id']}/artifacts/report.txt", headers={"X-Trainyard-Project": "other-arts"})
    assert other.status_code == 404, other.text
