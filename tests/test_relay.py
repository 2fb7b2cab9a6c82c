"""The relay on real PostgreSQL and NATS: every event reaches JetStream once, in order, across crashes."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import nats
import pytest
from psycopg_pool import ConnectionPool

from commands.runner_reports import give_up_on
from commands.training import SubmitJob, TrainingApplication
from infra.messaging import EVENTS_STREAM, WORK_STREAM, ensure_streams
from infra.postgres import eventsourcing_env, pool as pg_pool
from infra.settings import Settings
from projections.relay import Relay

pytestmark = pytest.mark.integration


@pytest.fixture
def store(database_url: str) -> Iterator[tuple[TrainingApplication, ConnectionPool]]:
    app = TrainingApplication(env=eventsourcing_env(database_url))
    pool = pg_pool(database_url)
    yield app, pool
    pool.close()
    app.close()


def make_jobs(app: TrainingApplication, n: int) -> list[str]:
    ids = []
    for i in range(n):
        job_id = app.submit_job(SubmitJob(name=f"r{i}", framework="lightgbm", task="regression",
                                          dataset={"uri": "builtin://diabetes"})).job_id
        app.start_attempt(job_id, 1, "h:1")
        app.complete(job_id, 1, {"rmse": 1.0}, {"uri": "file:///m"})
        ids.append(str(job_id))
    return ids


async def published(js, job_ids: set[str]) -> list[dict]:
    """Every message of the events stream that belongs to `job_ids`, in stream order."""
    sub = await js.subscribe("trainyard.v1.training_job.>", stream=EVENTS_STREAM, ordered_consumer=True)
    out = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1.0)
        except nats.errors.TimeoutError:
            break
        body = json.loads(msg.data)
        if body["aggregate_id"] in job_ids:
            out.append(body)
    await sub.unsubscribe()
    return out


def test_a_relay_crash_after_publishing_but_before_saving_its_position_publishes_nothing_twice(
        store, nats_url: str) -> None:
    app, pool = store
    job_ids = set(make_jobs(app, 7))  # 21 events

    async def scenario() -> list[dict]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_streams(js, Settings())
        crashing = Relay(app, js, pool, batch_size=10)

        def crash(position: int) -> None:
            raise RuntimeError("killed before saving the position")

        crashing._save_position = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await crashing.publish_batch()  # 10 events out, position not saved
        assert crashing.position() == 0
        restarted = Relay(app, js, pool, batch_size=10)
        while await restarted.publish_batch():
            pass
        assert restarted.position() == app.recorder.max_notification_id()
        out = await published(js, job_ids)
        await nc.close()
        return out

    events = asyncio.run(scenario())
    assert len(events) == 21 and len({e["event_id"] for e in events}) == 21
    for job_id in job_ids:
        mine = [e for e in events if e["aggregate_id"] == job_id]
        assert [e["aggregate_version"] for e in mine] == [1, 2, 3]
        assert [e["type"] for e in mine] == ["training_job.submitted", "training_job.started", "training_job.completed"]


def test_a_work_item_out_of_deliveries_is_dead_lettered_and_its_job_fails(store, nats_url: str) -> None:
    app, pool = store
    job_id = app.submit_job(SubmitJob(name="doomed", framework="lightgbm", task="regression",
                                      dataset={"uri": "builtin://diabetes"})).job_id
    app.start_attempt(job_id, 5, "h:5")

    async def scenario() -> list[dict]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_streams(js, Settings())
        relay = Relay(app, js, pool)
        while await relay.publish_batch():
            pass
        work = await js.get_last_msg(WORK_STREAM, "trainyard.work.training.medium")
        assert json.loads(work.data)["aggregate_id"] == str(job_id)
        await give_up_on(js, app, work.seq)
        dead = await js.get_last_msg("TRAINYARD_DLQ", "trainyard.v1.dlq.work.training.medium")
        with pytest.raises(nats.js.errors.NotFoundError):  # gone from the work queue
            await js.get_msg(WORK_STREAM, work.seq)
        await nc.close()
        return [json.loads(dead.data)]

    dead = asyncio.run(scenario())
    assert dead[0]["aggregate_id"] == str(job_id)
    job = app.get_job(job_id)
    assert job.status == "failed" and "deliveries" in job.error
