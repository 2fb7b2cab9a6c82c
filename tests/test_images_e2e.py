"""Images end to end on real engines (`trainyard up`: serve, 2 runners, serve-inference on PostgreSQL, NATS, chDB): a
digits CNN trains to 95% and more, registers, exports with parity, deploys, and answers an uploaded PNG; an ImageFolder
archive uploads (a hostile one is a 422 naming the field) and a job that cannot train images is refused at submit."""
from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from sklearn.datasets import load_digits

from tests.support.images import declared_huge_png, digit_folder, digit_png, zipped
from tests.support.stack import FINISHED, Stack, up_on_a_fresh_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
MODELS, DEPLOYMENTS, KEYS, DATASETS = "/api/v1/models", "/api/v1/deployments", "/api/v1/api-keys", "/api/v1/datasets"


@pytest.fixture(scope="module")
def stack(postgres_server: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path_factory.mktemp("trainyard-images")) as s:
        yield s


def test_a_digits_cnn_trains_exports_deploys_and_predicts_an_uploaded_png(stack: Stack) -> None:
    http = stack.http
    job_id = stack.submit(framework="pytorch", task="image_classification", dataset={"uri": "builtin://digits"},
                          params={"epochs": 20, "lr": 0.003})
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=300)
    assert job["status"] == "completed", job
    assert job["final_metrics"]["accuracy"] >= 0.95, job["final_metrics"]
    evaluation = http.get(f"/api/v1/training/jobs/{job_id}/evaluation").json()
    assert len(evaluation["splits"]["validation"]["per_class"]) == 10

    assert http.post(MODELS, json={"name": "digits"}).status_code == 201
    assert http.post(f"{MODELS}/digits/versions", json={"job_id": job_id}).status_code == 201
    r = http.post(f"{MODELS}/digits/versions/1/exports", json={"format": "onnx"})
    assert r.status_code == 202, r.text
    export_id = r.json()["export_id"]
    export = eventually(lambda: (lambda e: e if e["status"] in FINISHED else None)(
        http.get(f"{MODELS}/digits/versions/1/exports/{export_id}").json()), timeout=120, interval=0.2,
        message="the export never finished")
    assert export["status"] == "completed" and export["parity"]["passed"], export
    r = http.post(DEPLOYMENTS, json={"name": "digits", "variants": [
        {"name": "a", "model": "digits", "version": 1, "weight": 100}]})
    assert r.status_code == 201, r.text
    r = http.post(KEYS, json={"name": "digits", "deployments": ["digits"]})
    assert r.status_code == 201, r.text
    inference = httpx.Client(base_url=stack.endpoints()["inference"], timeout=30,
                             headers={"Authorization": f"Bearer {r.json()['key']}"})
    digits = load_digits()
    index = 1790  # a digit the model validated on or never saw: either way not one it memorised as a PNG
    body = {"instances": [{"image": base64.b64encode(digit_png(index)).decode()},
                          {"pixels": digits.images[index].tolist()}]}

    def predicted() -> httpx.Response | None:
        answer = inference.post("/v1/deployments/digits/predict", json=body)
        return answer if answer.status_code == 200 else None

    answer = eventually(predicted, timeout=30, interval=0.1, ignoring=(httpx.TransportError,),
                        message="the inference server never served the digits deployment").json()
    assert answer["predictions"] == [str(digits.target[index])] * 2, answer
    assert answer["classes"] == [str(d) for d in range(10)] and abs(sum(answer["probabilities"][0]) - 1) < 1e-4
    bomb = {"instances": [{"image": base64.b64encode(declared_huge_png(50_000, 50_000)).decode()}]}
    refused = inference.post("/v1/deployments/digits/predict", json=bomb)
    assert refused.status_code == 422 and refused.json()["field"] == "instances.0.image", refused.text


def test_an_image_folder_uploads_and_trains_and_a_bad_one_or_job_is_refused_naming_the_field(stack: Stack) -> None:
    http = stack.http
    r = http.post(DATASETS, files={"file": ("digits.zip", zipped(digit_folder(size=12)), "application/zip")})
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 36 and r.json()["classes"] == ["0", "1", "7"]
    uri = r.json()["uri"]
    bad = http.post(DATASETS, files={"file": ("bad.zip", zipped({**digit_folder(), "0/b.png": declared_huge_png(
        5000, 5000)}), "application/zip")})
    assert bad.status_code == 422 and bad.json()["field"] == "file" and "pixels" in bad.json()["detail"], bad.text
    for body, field in [({"framework": "lightgbm"}, "framework"), ({"params": {"channels": [8]},
                                                                    "task": "multiclass_classification"},
                                                                   "params.channels"),
                        ({"dataset": {"uri": uri, "target": "label"}}, "dataset.target")]:
        job = {"name": "t", "framework": "pytorch", "task": "image_classification", "dataset": {"uri": uri}, **body}
        r = http.post("/api/v1/training/jobs", json=job)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    job_id = stack.submit(framework="pytorch", task="image_classification", dataset={"uri": uri},
                          params={"epochs": 3})
    job = stack.wait(job_id, lambda j: j["status"] in FINISHED, timeout=300)
    assert job["status"] == "completed" and job["artifact"]["feature_recipe"]["image"]["height"] == 12, job
