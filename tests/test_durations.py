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


@pytest.mark.parametrize(("ge", "le", "multiple_of"), [(1, 90 * 86400, None), (60, 86400, 60), (7, 1234, None)])
def test_the_documented_strings_are_exactly_the_in_bound_durations(ge: int, le: int, multiple_of: int | None) -> None:
    import re

    from api.schemas.common import _seconds, duration_pattern

    pattern = re.compile(duration_pattern(ge, le, multiple_of))
    for unit, size in (("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        for n in list(range(0, 2000)) + [le // size, le // size + 1, 99_999, 129_600, 129_601, 7_776_000, 7_776_001]:
            seconds = _seconds(f"{n}{unit}")
            fits = ge <= seconds <= le and (multiple_of is None or size % multiple_of == 0)
            assert bool(pattern.fullmatch(f"{n}{unit}")) == fits, (f"{n}{unit}", pattern.pattern)
