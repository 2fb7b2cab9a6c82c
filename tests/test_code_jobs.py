"""Code jobs end to end (issue 19 items 2, 4's policy, 5) on `trainyard up`: a scikit-learn script in a bundle logs
per-epoch metrics, saves an ONNX model through skl2onnx and finishes; the job completes with its metrics and logs
queryable, registers as a model version with the code in its lineage, exports (validated, not converted), deploys
and predicts. A failing script fails its job with the traceback in the logs; bad submits are 4xx naming the field;
a viewer may not run code; a runner that accepts only built-in work never reads the code consumers."""
from __future__ import annotations

import asyncio
import io
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.vocabulary import PRIORITY_ORDER
from infra.messaging import WORK_STREAM, work_consumers
from tests.support.stack import FINISHED, JOBS, Stack, up_on_a_fresh_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
CODE, MODELS, DEPLOYMENTS, KEYS = "/api/v1/code", "/api/v1/models", "/api/v1/deployments", "/api/v1/api-keys"
DATASET = {"uri": "builtin://breast_cancer"}

TRAIN = '''
import pandas as pd
from skl2onnx import to_onnx
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline
import trainyard.sdk as ty

run = ty.init()
frame = pd.read_csv(run.dataset_path)
y = frame.pop("target")
X = frame.to_numpy(dtype="float32")
epochs = run.params["epochs"]
scaler = StandardScaler().fit(X)
model = SGDClassifier(loss="log_loss", alpha=run.params["optimizer"]["alpha"], random_state=0)
for epoch in range(1, epochs + 1):
    model.partial_fit(scaler.transform(X), y, classes=sorted(set(y)))
    run.log({"train_accuracy": model.score(scaler.transform(X), y)}, step=epoch)
    run.progress(epoch, epochs)
    print(f"epoch {epoch} done", flush=True)
pipeline = make_pipeline(scaler, model)
onnx = to_onnx(pipeline, X[:1], options={id(model): {"zipmap": False}})
path = run.output_dir / "model.onnx"
path.write_bytes(onnx.SerializeToString())
run.save_model(path, feature_names=list(frame.columns), class_labels=[str(c) for c in model.classes_],
               validation=(X[-100:], y[-100:]))
run.finish(metrics={"accuracy": model.score(scaler.transform(X), y)})
'''

FAILING = '''
import trainyard.sdk as ty

run = ty.init()
print("about to fail", flush=True)

def load_weights():
    raise ValueError("no weights in the bundle")

load_weights()
'''


def bundle(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def upload(http: httpx.Client, files: dict[str, str]) -> str:
    r = http.post(CODE, files={"file": ("code.tar.gz", bundle(files), "application/gzip")})
    assert r.status_code in (200, 201), r.text
    return r.json()["code_id"]


def code_job(code_id: str, entrypoint: str = "train.py", **extra: Any) -> dict[str, Any]:
    return {"name": "code", "framework": "python", "task": "binary_classification", "dataset": DATASET,
            "code": {"code_id": code_id, "entrypoint": entrypoint}, "params": {"epochs": 5,
                                                                             "optimizer": {"alpha": 1e-4}},
            "resources": {"cpus": 1, "memory_mb": 2048}, **extra}


@pytest.fixture(scope="module")
def stack(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-code")) as s:
        yield s


@pytest.fixture(scope="module")
def code_id(stack: Stack) -> str:
    return upload(stack.http, {"train.py": TRAIN, "fail.py": FAILING})


def test_a_scikit_learn_code_job_trains_registers_exports_deploys_and_predicts(stack: Stack, code_id: str) -> None:
    http = stack.http
    r = http.post(JOBS, json=code_job(code_id))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=180)
    assert job["status"] == "completed", job
    bundle_sha = http.get(f"{CODE}/{code_id}").json()["sha256"]
    assert job["code"] == {"code_id": code_id, "sha256": bundle_sha, "entrypoint": "train.py", "args": []}
    assert job["resources"] == {"cpus": 1, "memory_mb": 2048, "gpus": 0}
    assert job["params"] == {"epochs": 5, "optimizer": {"alpha": 1e-4}}
    assert job["final_metrics"]["accuracy"] > 0.9 and job["progress"]["current_step"] == 5
    assert job["artifact"]["format"] == "onnx" and job["artifact"]["class_labels"] == ["benign", "malignant"]
    assert len(job["artifact"]["feature_names"]) == 30
    report = http.get(f"{JOBS}/{job_id}/evaluation").json()  # on the 100 rows the script declared
    section = report["splits"]["validation"]
    assert section["rows"] == 100 and section["confusion_matrix"]["labels"] == ["benign", "malignant"]
    assert sum(map(sum, section["confusion_matrix"]["matrix"])) == 100 and section["metrics"]["accuracy"] > 0.8
    assert report["feature_importance_kind"] == "permutation" and report["feature_importance"][0]["feature"] in (
        job["artifact"]["feature_names"])

    points = stack.full_series(job_id, "train_accuracy", expected=5)
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5]
    lines = eventually(lambda: (m := [x["message"] for x in http.get(f"{JOBS}/{job_id}/logs").json()["lines"]])
                       and "epoch 5 done" in m and m, timeout=30, message="the script's output never reached its logs")
    assert "epoch 1 done" in lines

    r = http.post(MODELS, json={"name": "code-bc"})
    assert r.status_code == 201, r.text
    r = http.post(f"{MODELS}/code-bc/versions", json={"job_id": job_id})
    assert r.status_code == 201, r.text
    lineage = http.get(f"{MODELS}/code-bc/versions/1").json()["lineage"]
    assert lineage["framework"] == "python" and lineage["params"] == job["params"]
    assert lineage["artifact"]["code_sha256"] == bundle_sha and lineage["artifact"]["entrypoint"] == "train.py"
    assert len(lineage["dataset_sha256"]) == 64

    r = http.post(f"{MODELS}/code-bc/versions/1/exports", json={"format": "onnx"})
    assert r.status_code == 202, r.text
    export_id = r.json()["export_id"]
    export = eventually(lambda: (e := http.get(f"{MODELS}/code-bc/versions/1/exports/{export_id}").json())
                        ["status"] in FINISHED and e, timeout=120, message="the export never finished")
    assert export["status"] == "completed", export
    assert export["artifact"]["output_name"] == "probabilities" and export["artifact"]["n_features"] == 30
    assert export["artifact"]["validated_on"] == "validation rows" and export["parity"]["max_abs_diff"] == 0

    r = http.post(DEPLOYMENTS, json={"name": "code-bc", "variants": [
        {"name": "a", "model": "code-bc", "version": 1, "weight": 100}]})
    assert r.status_code == 201, r.text
    key = http.post(KEYS, json={"name": "code", "deployments": ["code-bc"]}).json()["key"]
    inference = httpx.Client(base_url=stack.endpoints()["inference"], timeout=30,
                             headers={"Authorization": f"Bearer {key}"})
    row = [0.5] * 30

    def predicted() -> dict | None:
        r = inference.post("/v1/deployments/code-bc/predict", json={"instances": [row]})
        return r.json() if r.status_code == 200 else None

    out = eventually(predicted, timeout=30, interval=0.1, ignoring=(httpx.TransportError,),
                     message="the code job's model was never served")
    assert out["predictions"][0] in ("benign", "malignant") and len(out["probabilities"][0]) == 2


def test_a_failing_script_fails_its_job_with_the_traceback_in_its_logs(stack: Stack, code_id: str) -> None:
    r = stack.http.post(JOBS, json=code_job(code_id, "fail.py"))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=120)
    assert job["status"] == "failed" and "ValueError: no weights in the bundle" in job["error"], job

    def traceback() -> list[str] | None:
        lines = [x["message"] for x in stack.http.get(f"{JOBS}/{job_id}/logs").json()["lines"]]
        return lines if any("Traceback" in m for m in lines) and any("load_weights" in m for m in lines) else None

    lines = eventually(traceback, timeout=30, message="the traceback never reached the job's logs")
    assert "about to fail" in lines


def test_a_code_job_reads_an_uploaded_dataset(stack: Stack, code_id: str) -> None:
    """Uploads are kept 0600 and a runner as root runs the script as a uid of its own: the script still reads it."""
    rows = "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(40))
    r = stack.http.post("/api/v1/datasets", files={"file": ("small.csv", f"a,b,target\n{rows}".encode())})
    assert r.status_code == 201, r.text
    r = stack.http.post(JOBS, json=code_job(code_id, dataset={"uri": r.json()["uri"], "target": "target"}))
    assert r.status_code == 202, r.text
    job = stack.wait(r.json()["job_id"], lambda j: j["status"] in FINISHED, timeout=120)
    assert job["status"] == "completed", job
    assert job["artifact"]["feature_names"] == ["a", "b"]


@pytest.mark.parametrize("change, status, field", [
    ({"code": {"code_id": "0" * 32, "entrypoint": "train.py"}}, 422, "code.code_id"),
    ({"code": {"code_id": "CODE", "entrypoint": "missing.py"}}, 422, "code.entrypoint"),
    ({"code": None}, 422, "code"),
    ({"params": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": 1}}}}}}}}}}}}, 422, "params.a.b.c.d.e.f.g.h.i.j"),
    ({"params": {"blob": ["x" * 4000] * 20}}, 422, "params"),
    ({"params": {"bad": "nul\x00"}}, 422, "params.bad"),
    ({"resources": {"cpus": 0}}, 422, "resources.cpus"),
    ({"framework": "lightgbm"}, 422, "code"),
])
def test_bad_code_job_submits_are_refused_naming_the_field(stack: Stack, code_id: str, change: dict, status: int,
                                                           field: str) -> None:
    body = code_job(code_id)
    body.update(change)
    if body.get("code") and body["code"]["code_id"] == "CODE":
        body["code"]["code_id"] = code_id
    r = stack.http.post(JOBS, json=body)
    assert r.status_code == status, r.text
    assert r.json().get("field") == field or field in r.text, r.text


def test_a_viewer_may_not_run_code(stack: Stack, code_id: str) -> None:
    http = stack.http
    assert http.post("/api/v1/users", json={"name": "code-viewer", "password": "viewers watch code run"}
                     ).status_code in (201, 409)
    assert http.put("/api/v1/projects/default/members/code-viewer", json={"role": "viewer"}).status_code == 200
    token = http.post("/api/v1/auth/token", data={"username": "code-viewer", "password": "viewers watch code run"},
                      headers={"Authorization": ""}).json()["access_token"]
    r = http.post(JOBS, json=code_job(code_id), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403, r.text


def test_a_runner_that_accepts_only_builtin_work_never_reads_the_code_consumers(stack: Stack) -> None:
    assert [d for _, d in work_consumers(code=False)] == [f"work-{p}" for p in PRIORITY_ORDER]
    assert {d for _, d in work_consumers(code=True)} - {d for _, d in work_consumers(code=False)} == {
        f"work-{p}-code" for p in PRIORITY_ORDER}

    async def filters() -> dict[str, list[str]]:
        import nats

        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            out = {}
            for _, durable in work_consumers(code=True):
                config = (await js.consumer_info(WORK_STREAM, durable)).config
                out[durable] = list(config.filter_subjects or [config.filter_subject])
            return out
        finally:
            await nc.close()

    found = asyncio.run(filters())
    assert found["work-high"] == ["trainyard.work.high.training.>", "trainyard.work.high.export.>"]
    assert found["work-high-code"] == ["trainyard.work.high.code.>"]


def test_a_builtin_runner_looks_only_at_builtin_consumers() -> None:
    from runners.runner import Runner

    builtin = Runner(None, None, None, 5.0, accepts_code=False, code_root=None)  # type: ignore[arg-type]
    both = Runner(None, None, None, 5.0, code_root=Path("/nonexistent"))  # type: ignore[arg-type]
    assert not any(d.endswith("-code") for _, d in builtin.consumers)
    assert [p for p, _ in both.consumers] == [p for p in PRIORITY_ORDER for _ in (0, 1)]
