"""Duration query parameters (api/schemas/common.py `duration`): seconds or 30s/5m/1h/1d, bounded, a bad one a 422
problem+json naming the parameter. Served by the same validation and problem handlers as the service's routes."""
from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import problems
from api.ab import BucketS
from api.deployments import SinceS


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    problems.install(app)

    @app.get("/bucket")
    def bucket(bucket: BucketS = 60) -> int:
        return bucket

    @app.get("/since")
    def since(since_s: SinceS = 3600) -> int:
        return since_s

    return TestClient(app)


@pytest.mark.parametrize(("path", "given", "seconds"), [
    ("/bucket", "1m", 60), ("/bucket", "5m", 300), ("/bucket", "1h", 3600), ("/bucket", "1d", 86400),
    ("/bucket", "120s", 120), ("/bucket", "600", 600), ("/since", "30s", 30), ("/since", "90d", 90 * 86400),
    ("/since", "7", 7)])
def test_durations_as_people_write_them(client: TestClient, path: str, given: str, seconds: int) -> None:
    name = path.strip("/") if path == "/bucket" else "since_s"
    assert client.get(path, params={name: given}).json() == seconds


@pytest.mark.parametrize(("path", "given"), [
    ("/bucket", "90s"),  # whole minutes only
    ("/bucket", "2d"), ("/bucket", "30s"), ("/bucket", "1x"), ("/bucket", "-1m"), ("/bucket", "1.5h"),
    ("/bucket", "1m\x00"), ("/bucket", " 1m"), ("/bucket", "1M"), ("/bucket", "9" * 40), ("/bucket", ""),
    ("/since", "91d"), ("/since", "0s"), ("/since", "nan"), ("/since", "1e3")])
def test_a_bad_duration_is_a_422_naming_the_parameter(client: TestClient, path: str, given: str) -> None:
    name = path.strip("/") if path == "/bucket" else "since_s"
    answer = client.get(path, params={name: given})
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["field"] == name, answer.json()
