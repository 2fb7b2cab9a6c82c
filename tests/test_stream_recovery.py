"""The streams and consumers the service owns come back when anyone on the bus deletes them (infra/messaging.py
`StreamKeeper`, visible in /readyz), and no stream grows without bound (`ensure_streams` limits)."""
from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import NotFoundError

from domain.contract import DLQ_PREFIX
from domain.vocabulary import PRIORITY_ORDER
from infra.messaging import DLQ_STREAM, EVENTS_STREAM, WORK_STREAM, ensure_streams, work_consumer
from infra.settings import Settings
from tests.support.stack import FINISHED, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def _job(stack: Stack) -> str:
    return stack.submit(framework="lightgbm", task="binary_classification", dataset={"uri": "builtin://breast_cancer"},
                        params={"n_estimators": 5})


async def _delete_work_consumers_and_the_events_stream(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for priority in PRIORITY_ORDER:
            await js.delete_consumer(WORK_STREAM, work_consumer(priority))
        await js.delete_stream(EVENTS_STREAM)
        with pytest.raises(NotFoundError):
            await js.stream_info(EVENTS_STREAM)
    finally:
        await nc.close()


def test_deleted_work_consumers_and_events_stream_come_back_and_a_new_job_completes(stack: Stack) -> None:
    assert stack.wait(_job(stack), lambda j: j["status"] in FINISHED)["status"] == "completed"
    asyncio.run(_delete_work_consumers_and_the_events_stream(stack.nats_url))

    def repaired() -> dict | None:
        stage = stack.http.get("/readyz").json()["stages"]["streams"]
        return stage if "recreated" in (stage["last_error"] or "") else None

    stage = eventually(repaired, timeout=20, interval=0.2, message="the streams were never recreated")
    assert EVENTS_STREAM in stage["last_error"] and work_consumer(PRIORITY_ORDER[0]) in stage["last_error"]
    assert stage["status"] == "ok"
    job = stack.wait(_job(stack), lambda j: j["status"] in FINISHED, timeout=90)
    assert job["status"] == "completed", job
    stack.wait_ready(timeout=30)


async def _flood_the_dlq(url: str, limit: int) -> tuple[int, int, bool]:
    """50 MB of dead letters under a `limit`-byte DLQ, and one message over the per-message limit: (bytes kept,
    messages kept, whether the big one was refused)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await ensure_streams(js, Settings(dlq_max_bytes=limit, dlq_max_msg_bytes=64 * 1024))
        chunk = b"x" * (60 * 1024)
        for i in range(50 * MiB // len(chunk)):
            await nc.publish(f"{DLQ_PREFIX}.flood.{i % 7}", chunk)
        await nc.flush()
        try:
            await js.publish(f"{DLQ_PREFIX}.flood.big", b"x" * (200 * 1024))
            refused = False
        except nats.js.errors.APIError:
            refused = True
        state = (await js.stream_info(DLQ_STREAM)).state
        return state.bytes, state.messages, refused
    finally:
        await ensure_streams(js, Settings())  # the defaults again, for the other tests
        await nc.close()


def test_a_flood_of_dead_letters_keeps_the_dlq_within_its_limit(nats_url: str) -> None:
    kept, messages, refused = asyncio.run(_flood_the_dlq(nats_url, 4 * MiB))
    assert 0 < kept <= 4 * MiB and messages > 0, (kept, messages)
    assert refused
