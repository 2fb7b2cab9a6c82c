"""The relay on real PostgreSQL and NATS: every event reaches JetStream once, in order, across crashes."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from uuid import UUID, uuid4

import nats
import pytest
from psycopg_pool import ConnectionPool

from commands.context import SYSTEM
from commands.training import SubmitJob, TrainingApplication
from infra.messaging import EVENTS_STREAM, WORK_STREAM, ensure_streams
from infra.postgres import eventsourcing_env, pool as pg_pool
from infra.settings import Settings
from projections.relay import Relay
from tests.support.waiting import eventually

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
        job_id = app.submit_job(SubmitJob(project="default", name=f"r{i}", framework="lightgbm", task="regression",
                                          dataset={"uri": "builtin://diabetes"})).job_id
        app.claim(job_id, "lease-1", "h:1", SYSTEM)
        app.complete(job_id, "lease-1", {"rmse": 1.0}, {"uri": "file:///m"}, SYSTEM)
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


def test_queueing_events_become_work_items_and_an_unpublishable_event_is_set_aside(store, nats_url: str) -> None:
    app, pool = store
    diabetes = {"uri": "builtin://diabetes"}
    huge = app.submit_job(SubmitJob(project="default", name="huge", framework="lightgbm", task="regression", dataset=diabetes,
                                    params={"x": "y" * 1_200_000})).job_id  # over NATS's 1 MB max payload
    job_id = app.submit_job(SubmitJob(project="default", name="fine", framework="lightgbm", task="regression", dataset=diabetes,
                                      priority="high")).job_id
    app.claim(job_id, "lease-1", "h:1", SYSTEM)
    app.hand_back(job_id, "lease-1", "runner stopping", SYSTEM)  # Requeued: work again

    async def scenario() -> tuple[list, list, dict]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_streams(js, Settings())
        relay = Relay(app, js, pool)
        while await relay.publish_batch():
            pass
        assert relay.position() == app.recorder.max_notification_id()  # the relay moved past the poison
        subject = f"trainyard.work.high.training.{job_id}"
        info = await js.stream_info(WORK_STREAM, subjects_filter=subject)
        work = await js.get_last_msg(WORK_STREAM, subject)
        tomb = await js.get_last_msg("TRAINYARD_DLQ", "trainyard.v1.dlq.training_job.submitted")
        events = await published(js, {str(job_id), str(huge)})
        await nc.close()
        return [info.state.subjects[subject], json.loads(work.data)], events, json.loads(tomb.data)

    (count, work), events, tomb = asyncio.run(scenario())
    assert count == 2 and work["kind"] == "training" and work["aggregate_id"] == str(job_id)  # submitted + requeued
    assert [e["type"] for e in events] == ["training_job.submitted", "training_job.started", "training_job.requeued"]
    assert tomb["aggregate_id"] == str(huge) and "MaxPayload" in tomb["error"]
    assert relay_stage_poisoned(pool) == 1


def relay_stage_poisoned(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        return conn.execute("SELECT count(*) FROM relay_poisoned").fetchone()[0]


def test_a_save_is_one_round_trip_through_the_event_stores_insert_function(store, database_url: str) -> None:
    """infra/postgres.OneTripRecorder: a plain save calls the `<events table>_insert` function (one statement, the
    table lock and the NOTIFY inside it) rather than eventsourcing's five pipelined statements. eventsourcing 9.5.6
    passes `tracking=None` to every insert, which once sent every save down the library's path unnoticed."""
    import psycopg

    app, _ = store
    recorder = app.recorder
    first = app.submit_job(SubmitJob(project="default", name="a", framework="lightgbm", task="regression",
                                     dataset={"uri": "builtin://diabetes"}))
    assert first.position is not None
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP FUNCTION {recorder._one_trip_name}")
    with pytest.raises(Exception, match=recorder._one_trip_name):
        app.submit_job(SubmitJob(project="default", name="b", framework="lightgbm", task="regression",
                                 dataset={"uri": "builtin://diabetes"}))


def test_the_recorders_reads_answer_what_the_librarys_reads_answer(store) -> None:
    """OneTripRecorder's select_events / select_notifications (statements made once per shape) return exactly what
    eventsourcing's own methods return, for every combination of bounds, order, limit and topics the library has."""
    import itertools

    from eventsourcing.postgres import PostgresApplicationRecorder as Library

    app, _ = store
    jobs = [UUID(j) for j in make_jobs(app, 2)]
    recorder, head = app.recorder, app.head()
    topics = sorted({n.topic for n in Library.select_notifications(recorder, 1, 1000)})
    for start, stop, inclusive, chosen, limit in itertools.product(
            (None, 1, head - 2), (None, head - 1), (True, False), ((), (topics[0],), topics[1:], ["no-such"]), (1, 100)):
        if start is None and not inclusive:
            continue
        args = dict(start=start, limit=limit, stop=stop, topics=chosen, inclusive_of_start=inclusive)
        mine = recorder.select_notifications(**args)
        assert mine == Library.select_notifications(recorder, **args), args
    for gt, lte, desc, limit in itertools.product((None, 1), (None, 2), (False, True), (None, 1)):
        for job in jobs:
            args = dict(gt=gt, lte=lte, desc=desc, limit=limit)
            assert recorder.select_events(job, **args) == Library.select_events(recorder, job, **args), args
    assert len(recorder.select_notifications(1, 1000)) == head > 4


def test_an_aggregates_origin_is_its_first_events_metadata_remembered_or_read(store, database_url: str) -> None:
    """TrainyardApplication.origin (what a claim's answer carries): the creating command's metadata, the same from the
    process that saved the job (remembered) and from one that did not (read from the first event), whatever came
    after."""
    from commands.context import CommandContext

    app, _ = store
    ctx = CommandContext(actor="alice", correlation_id="req-7", trace_id="ab" * 16)
    job_id = app.submit_job(SubmitJob(project="default", name="o", framework="lightgbm", task="regression",
                                      dataset={"uri": "builtin://diabetes"}), ctx=ctx).job_id
    app.claim(job_id, "lease-1", "h:1", SYSTEM)  # a later event, other metadata
    other = TrainingApplication(env=eventsourcing_env(database_url))
    try:
        for reader in (app, other, other):
            meta = reader.origin(job_id)
            assert (meta["actor"], meta["correlation_id"], meta["trace_id"]) == ("alice", "req-7", "ab" * 16)
        assert other.origin(uuid4()) == {}  # no such aggregate: nothing, and nothing remembered
    finally:
        other.close()


def test_work_goes_out_at_once_from_the_saving_process_and_the_relay_adds_no_second_copy(store, nats_url: str) -> None:
    """projections/relay.EagerWork: a committed save's work items reach the work stream without the relay's round,
    and the relay's own publish of them later is dropped by JetStream's duplicate window (same Nats-Msg-Id)."""
    from projections.relay import EagerWork

    app, pool = store
    diabetes = {"uri": "builtin://diabetes"}

    async def scenario() -> tuple[int, int, dict]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_streams(js, Settings())
        relay = Relay(app, js, pool)
        while await relay.publish_batch():  # what earlier tests left: out of the way first
            pass
        app.on_saved = EagerWork(js, asyncio.get_running_loop())
        try:
            job_id = (await asyncio.to_thread(app.submit_job, SubmitJob(
                project="default", name="eager", framework="lightgbm", task="regression", dataset=diabetes, priority="critical"))).job_id
        finally:
            app.on_saved = None
        subject = f"trainyard.work.critical.training.{job_id}"

        async def count() -> int:
            info = await js.stream_info(WORK_STREAM, subjects_filter=subject)
            return (info.state.subjects or {}).get(subject, 0)

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(eventually, lambda: asyncio.run_coroutine_threadsafe(count(), loop).result(),
                                timeout=10, interval=0.01, message="the work item never went out")
        before_relay = await count()
        assert relay.position() < app.recorder.max_notification_id()  # the relay has not published it
        while await relay.publish_batch():
            pass
        after_relay = await count()
        work = json.loads((await js.get_last_msg(WORK_STREAM, subject)).data)
        await nc.close()
        return before_relay, after_relay, work | {"job_id": str(job_id)}

    before_relay, after_relay, work = asyncio.run(scenario())
    assert (before_relay, after_relay) == (1, 1)
    assert work["kind"] == "training" and work["aggregate_id"] == work["job_id"] and work["priority"] == "critical"
