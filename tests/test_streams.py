"""Live streams (api/streams.py) on the real app over PostgreSQL and chDB: a job's SSE and WebSocket streams deliver
its points in step order, resume from an id with no gap or repeat, end with the job; another project's objects are
404; a revoked token ends a stream; hostile cursors are 400s naming the field; churn leaves no stream open.
Jobs here are ended by a cancel and their points inserted into chDB directly; runners are not part of these tests.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings, strategies as st

from infra.fanout import Fanout
from projections.live_streams import CursorError, decode, encode
from projections.telemetry.metric_store import MetricPoint
from tests.support.tenants import Tenants, isolated_app, make_tenants

pytestmark = pytest.mark.integration
JOBS = "/api/v1/training/jobs"


@pytest.fixture(scope="module")
def stack(module_database_url: str, clickhouse: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with isolated_app(module_database_url, clickhouse.path.parent, tmp_path_factory.mktemp("data")) as (c, s):
        yield c, s


@pytest.fixture(scope="module")
def tenants(stack: Any) -> Tenants:
    return make_tenants(stack[0])


def _job(client: Any, headers: dict[str, str] | None = None) -> str:
    body = {"name": "streamed", "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}}
    r = client.post(JOBS, json=body, headers=headers or {})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def _points(services: Any, job_id: str, steps: range, names: tuple[str, ...] = ("loss", "auc")) -> None:
    now = datetime.now(timezone.utc)
    services.metrics.insert([MetricPoint(job_id, 1, n, s, s / 10, now) for s in steps for n in names],
                            f"{job_id}-{steps.start}")
    services.fanout.notify(f"metrics:{job_id}")


def _sse(client: Any, path: str, headers: dict[str, str] | None = None, until: str = "end",
         params: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The stream's messages ({event, id, data}) up to and including the first `until` event."""
    out: list[dict[str, Any]] = []
    with client.stream("GET", path, headers=headers or {}, params=params or {}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        message: dict[str, Any] = {}
        for raw in r.iter_lines():
            if raw.startswith(":"):
                continue
            if not raw:
                if message:
                    message["data"] = json.loads(message.get("data", "null"))
                    out.append(message)
                    if message["event"] == until:
                        return out
                message = {}
                continue
            key, _, value = raw.partition(":")
            message[key] = value.lstrip(" ")
    return out


def _anonymous(client: Any) -> Any:
    """A client of the same app without the owner's Authorization header (the WebSocket's ?token= is then used)."""
    return type(client)(client.app, raise_server_exceptions=False)


def _series(messages: list[dict[str, Any]]) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = {}
    for m in messages:
        if m["event"] == "metrics":
            for p in m["data"]["points"]:
                steps.setdefault(p["name"], []).append(p["step"])
    return steps


def test_a_cancelled_jobs_stream_replays_its_points_in_order_and_ends(stack: Any) -> None:
    client, services = stack
    job_id = _job(client)
    _points(services, job_id, range(0, 50))
    _points(services, job_id, range(50, 80))
    assert client.delete(f"{JOBS}/{job_id}").status_code == 202
    messages = _sse(client, f"{JOBS}/{job_id}/stream")
    assert _series(messages) == {"loss": list(range(80)), "auc": list(range(80))}
    assert [m["event"] for m in messages][-1] == "end"
    assert [m["data"]["status"] for m in messages if m["event"] == "status"][-1] == "cancelled"
    assert all(m["id"] for m in messages)

    # resume from every id: what follows it, nothing before it, nothing twice
    for cut in range(len(messages) - 1):
        rest = _sse(client, f"{JOBS}/{job_id}/stream", headers={"Last-Event-ID": messages[cut]["id"]})
        assert [m["id"] for m in rest] == [m["id"] for m in messages[cut + 1:]]
    again = _sse(client, f"{JOBS}/{job_id}/stream", params={"from": messages[0]["id"]})
    assert _series(again) == _series(messages)


def _lines(services: Any, job_id: str, seqs: range) -> None:
    from domain.contract import LogBatch, LogLine

    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    batch = LogBatch(batch_id=f"{job_id}-log-{seqs.start}", job_id=job_id, attempt=1, runner_id="test",
                     lines=[LogLine(seq=q, ts_ms=now_ms, level="info", stream="stdout", message=f"line {q}")
                            for q in seqs])
    services.logs.insert_batches([batch], batch.batch_id)
    services.fanout.notify(f"logs:{job_id}")


def test_a_jobs_stream_carries_its_log_lines_in_order_and_resumes_after_them(stack: Any) -> None:
    client, services = stack
    job_id = _job(client)
    _lines(services, job_id, range(0, 3))
    _points(services, job_id, range(0, 2))
    _lines(services, job_id, range(3, 5))
    assert client.delete(f"{JOBS}/{job_id}").status_code == 202
    messages = _sse(client, f"{JOBS}/{job_id}/stream")
    logged = [ln["message"] for m in messages if m["event"] == "logs" for ln in m["data"]["lines"]]
    assert logged == [f"line {q}" for q in range(5)]
    cut = next(i for i, m in enumerate(messages) if m["event"] == "logs")
    rest = _sse(client, f"{JOBS}/{job_id}/stream", headers={"Last-Event-ID": messages[cut]["id"]})
    assert not [m for m in rest if m["event"] == "logs"]  # every line was in that one message: none again
    assert [m["id"] for m in rest] == [m["id"] for m in messages[cut + 1:]]


def test_points_that_land_just_after_the_job_ended_are_still_streamed(stack: Any) -> None:
    """A runner's last points are in JetStream before it reports the end, but may land in ClickHouse a moment after
    the job shows finished: the stream of a job that has just ended waits a few seconds before its end."""
    import threading
    import time

    client, services = stack
    job_id = _job(client)
    _points(services, job_id, range(0, 5))
    assert client.delete(f"{JOBS}/{job_id}").status_code == 202
    late = threading.Timer(1.0, lambda: _points(services, job_id, range(5, 8)))
    late.start()
    started = time.monotonic()
    messages = _sse(client, f"{JOBS}/{job_id}/stream")
    late.join()
    assert _series(messages) == {"loss": list(range(8)), "auc": list(range(8))}
    assert messages[-1]["event"] == "end" and time.monotonic() - started < 10


def test_the_websocket_sends_the_same_messages(stack: Any) -> None:
    client, services = stack
    job_id = _job(client)
    _points(services, job_id, range(0, 30))
    assert client.delete(f"{JOBS}/{job_id}").status_code == 202
    sse = _sse(client, f"{JOBS}/{job_id}/stream")
    token = client.headers["authorization"].split(" ", 1)[1]
    for how in ({"headers": {"Authorization": f"Bearer {token}"}}, {"params": {"token": token}}):
        path = f"{JOBS}/{job_id}/ws" + (f"?token={token}" if "params" in how else "")
        with _anonymous(client).websocket_connect(path, headers=how.get("headers", {})) as ws:
            frames = []
            while not frames or frames[-1]["event"] != "end":
                frames.append(ws.receive_json())
        assert [(f["event"], f["id"], f["data"]) for f in frames] == [(m["event"], m["id"], m["data"]) for m in sse]


def test_a_live_stream_gets_points_as_they_land(stack: Any) -> None:
    client, services = stack
    job_id = _job(client)
    token = client.headers["authorization"].split(" ", 1)[1]
    with client.websocket_connect(f"{JOBS}/{job_id}/ws?token={token}") as ws:
        assert ws.receive_json()["event"] == "status"  # queued
        _points(services, job_id, range(0, 5))
        frame = ws.receive_json()
        assert frame["event"] == "metrics" and len(frame["data"]["points"]) == 10
        client.delete(f"{JOBS}/{job_id}")
        events = [ws.receive_json()["event"] for _ in range(2)]
        assert events == ["status", "end"]


def test_another_projects_user_gets_404_on_every_stream(stack: Any, tenants: Tenants) -> None:
    client, services = stack
    job_id = _job(client, tenants.headers("alpha", "engineer"))
    beta = tenants.headers("beta", "admin")
    for path in (f"{JOBS}/{job_id}/stream", f"/api/v1/studies/{uuid.uuid4()}/stream",
                 "/api/v1/deployments/nowhere/stream"):
        r = client.get(path, headers=beta)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    from starlette.testclient import WebSocketDenialResponse

    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect(f"{JOBS}/{job_id}/ws", headers=beta):
            pass
    assert denied.value.status_code == 404


def test_a_revoked_token_ends_the_stream(stack: Any) -> None:
    client, services = stack
    r = client.post("/api/v1/tokens", json={"name": f"stream-{uuid.uuid4().hex[:6]}", "expires_in_days": 1})
    assert r.status_code == 201, r.text
    token, token_id = r.json()["token"], r.json()["id"]
    job_id = _job(client)
    import time

    with _anonymous(client).websocket_connect(f"{JOBS}/{job_id}/ws?token={token}") as ws:
        assert ws.receive_json()["event"] == "status"
        assert client.delete(f"/api/v1/tokens/{token_id}").status_code in (200, 202)
        revoked = time.monotonic()
        from starlette.websockets import WebSocketDisconnect

        with pytest.raises(WebSocketDisconnect):
            while True:
                ws.receive_json()
        assert time.monotonic() - revoked < 6


@pytest.mark.parametrize("given", ["nonsense", "s=1;s=2", "x=1", "s=1." + "9" * 30, "m=1.zzzzzzzz.3",
                                   "s=" + "1" * 9000, "s=1\x00"])
def test_a_hostile_cursor_is_a_400_naming_the_field(stack: Any, given: str) -> None:
    client, _ = stack
    job_id = _job(client)
    r = client.get(f"{JOBS}/{job_id}/stream", params={"from": given})
    assert r.status_code in (400, 422), r.text
    assert r.json()["field"] == "from"
    if "\x00" not in given:
        r = client.get(f"{JOBS}/{job_id}/stream", headers={"Last-Event-ID": given})
        assert r.status_code in (400, 422), r.text
        assert r.json()["field"] == "Last-Event-ID"


def test_churn_leaves_no_stream_open(stack: Any) -> None:
    from api.streams import slots

    client, services = stack
    job_id = _job(client)
    token = client.headers["authorization"].split(" ", 1)[1]
    for i in range(1000):
        if i % 2:
            with client.stream("GET", f"{JOBS}/{job_id}/stream") as r:
                assert r.status_code == 200
        else:
            with client.websocket_connect(f"{JOBS}/{job_id}/ws?token={token}") as ws:
                ws.receive_json()
    from tests.support.waiting import eventually

    eventually(lambda: slots(client).open == 0 and services.fanout.subscribers() == 0, timeout=10,
               message=lambda: f"{slots(client).open} streams still open")
    assert client.get(f"{JOBS}/{job_id}").status_code == 200


def test_past_the_limit_a_stream_is_a_503_with_retry_after(stack: Any) -> None:
    from api.streams import slots

    client, _ = stack
    job_id = _job(client)
    held = slots(client)
    limit, held.limit = held.limit, 0
    try:
        r = client.get(f"{JOBS}/{job_id}/stream")
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    finally:
        held.limit = limit


positions = st.dictionaries(st.sampled_from("smtd"), st.from_regex(r"[0-9a-z.,]{0,40}", fullmatch=True), min_size=1)


@given(positions)
def test_a_cursor_decodes_to_what_was_encoded(given: dict[str, str]) -> None:
    assert decode(encode(given), "smtd") == given


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_any_text_decodes_or_is_a_cursor_error(text: str) -> None:
    try:
        decode(text, "smtd")
    except CursorError:
        pass


def test_a_subscription_hands_over_what_was_notified_until_it_holds_too_much() -> None:
    async def scenario() -> None:
        fanout = Fanout(max_items=5)
        with fanout.subscribe("metrics:a", "logs:a") as sub:
            assert fanout.followed("metrics:a") and not fanout.followed("metrics:b")
            fanout.notify("metrics:a", ["x"], 2)
            await asyncio.to_thread(fanout.notify, "metrics:a", ["y"], 3)  # from another thread, in order
            assert await sub.wait(1) == {"metrics:a"}
            assert sub.take_pushed("metrics:a") == [["x"], ["y"]]
            assert sub.take_pushed("metrics:a") is None  # nothing since: a re-read goes to the store
            fanout.notify("metrics:a", ["big"], 6)  # more than it holds: read the store instead
            fanout.notify("metrics:a", ["after"], 1)
            assert sub.take_pushed("metrics:a") is None
            fanout.notify("metrics:a", ["next"], 1)  # complete again from the take on
            assert sub.take_pushed("metrics:a") == [["next"]]
            fanout.notify("logs:a")  # no data: read the store
            assert sub.take_pushed("logs:a") is None
        assert fanout.subscribers() == 0

    asyncio.run(scenario())


def test_a_caught_up_stream_takes_pushed_points_and_lines_in_order_once(stack: Any) -> None:
    from domain.contract import LogBatch, LogLine
    from projections.live_streams import LogLines, MetricPoints
    from projections.telemetry.log_store import stored_line

    client, services = stack
    job_id = _job(client)
    _points(services, job_id, range(0, 3), names=("loss",))
    points = MetricPoints(services.metrics, UUID(job_id))
    assert [p["step"] for m in points.read() for p in m[1]["points"]] == [0, 1, 2] and points.caught_up
    # Rows handed over by the projector (shaped as MetricsProjector.changes makes them; these are not stored, so
    # what comes out was read from the hand-over alone): out of order across chunks, one step already sent.
    ms = int(datetime.now(timezone.utc).timestamp() * 1000)
    pushed = [[("loss", 1, [5, 6], [0.5, 0.6], [ms, ms])], [("loss", 1, [2, 3, 4], [0.2, 0.3, 0.4], [ms] * 3)]]
    out = points.read(pushed)
    assert [(p["step"], p["value"]) for m in out for p in m[1]["points"]] == [(3, 0.3), (4, 0.4), (5, 0.5), (6, 0.6)]
    assert points.read([]) == [] and points.read(None) == []  # None: the store, which holds nothing newer
    _points(services, job_id, range(7, 9), names=("loss",))  # written with no rows handed over (another process)
    assert [p["step"] for m in points.read(None) for p in m[1]["points"]] == [7, 8]  # the periodic re-read

    lines = LogLines(services.logs, UUID(job_id))
    assert lines.read() == [] and lines.caught_up
    batch = LogBatch(batch_id="pushed", job_id=job_id, attempt=1, runner_id="test",
                     lines=[LogLine(seq=q, ts_ms=ms, level="info", stream="stdout", message=f"pushed {q}")
                            for q in (1, 0, 2)])
    out = lines.read([[stored_line(batch, ln) for ln in batch.lines]])
    assert [ln["message"] for m in out for ln in m[1]["lines"]] == ["pushed 0", "pushed 1", "pushed 2"]
