"""The jobs read model on real PostgreSQL: replays change nothing, a rebuild from zero equals the live table."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, given, settings, strategies as st

from commands.context import CommandContext
from commands.training import SubmitJob, TrainingApplication
from domain.training_job import JobError
from infra.postgres import eventsourcing_env
from projections.jobs import JobsProjection, JobsView
from tests.support.database import create_database, drop_database
from tests.support.strategies import job_commands

pytestmark = pytest.mark.integration

SUBMIT = SubmitJob(project="default", name="p", framework="lightgbm", task="regression", dataset={"uri": "builtin://diabetes"})


def make_view(database_url: str) -> JobsView:
    env = Environment("jobs", eventsourcing_env(database_url))
    return InfrastructureFactory.construct(env=env).tracking_recorder(JobsView)


@pytest.fixture(scope="module")
def store(postgres_server: str) -> Iterator[tuple[TrainingApplication, str]]:
    url = create_database(postgres_server)
    app = TrainingApplication(env=eventsourcing_env(url))
    yield app, url
    app.close()
    drop_database(postgres_server, url)


ACTORS = ["alice", "ci-bot", "runner:h:1"]


def run_commands(app: TrainingApplication, cmds: list[tuple], actor: int = 0) -> UUID:
    ctx = CommandContext(actor=ACTORS[actor % 3], correlation_id=f"req-{actor}", trace_id="ab" * 16)
    job_id = app.submit_job(SUBMIT, ctx=ctx).job_id
    for name, *args in cmds:
        try:
            if name == "claim":
                app.claim(job_id, args[0], args[1], ctx)
            elif name == "progress":
                app.record_progress(job_id, *args, ctx)
            elif name == "complete":
                app.complete(job_id, args[0], {"rmse": 1.5}, {"uri": "file:///m", "sha256": "ab"}, ctx)
            elif name == "fail":
                app.fail(job_id, args[0], "boom", ctx)
            elif name == "cancel":
                app.request_cancel(job_id, project="default", ctx=ctx)
            elif name == "confirm_cancelled":
                app.confirm_cancelled(job_id, args[0], ctx)
            elif name == "hand_back":
                app.hand_back(job_id, args[0], "stopping", ctx)
            elif name == "expire":
                app.expire_lease(job_id, args[0], "runner gone", ctx)
            else:
                app.requeue(job_id, "no work item", ctx)
        except (JobError, ValueError):
            pass
    return job_id


def events_of(app: TrainingApplication, job_id: UUID) -> list[tuple[Any, Tracking]]:
    out = []
    for n in app.recorder.select_notifications(start=1, limit=100_000):
        if n.originator_id == job_id:
            out.append((app.mapper.to_domain_event(n), Tracking(app.name, n.id)))
    return out


def rows(database_url: str, job_id: UUID | None = None) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        if job_id is None:
            return conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchall()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=st.lists(job_commands, max_size=12), cut=st.floats(0, 1), actor=st.integers(0, 2))
def test_processing_a_prefix_twice_leaves_the_read_model_unchanged(store, cmds: list[tuple], cut: float,
                                                                   actor: int) -> None:
    app, url = store
    job_id = run_commands(app, cmds, actor)
    projection = JobsProjection(view=make_view(url))
    events = events_of(app, job_id)
    k = round(cut * len(events))
    for e, t in events[:k]:
        projection.process_event(e, t)
    after_prefix = rows(url, job_id)
    for e, t in events[:k]:  # a crash and replay of the prefix
        projection.process_event(e, t)
    assert rows(url, job_id) == after_prefix
    for e, t in events:
        projection.process_event(e, t)
    final = rows(url, job_id)
    job = app.get_job(job_id)
    with psycopg.connect(url) as conn:
        status, attempt, version = conn.execute(
            "SELECT status, attempt, version FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert (status, attempt, version) == (job.status, job.attempt, job.version)
    with psycopg.connect(url) as conn:
        counts = conn.execute("SELECT lost_leases, hand_backs FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert counts == (job.lost_leases, job.hand_backs)
    for e, t in events:
        projection.process_event(e, t)
    assert rows(url, job_id) == final


def test_a_rebuild_from_position_zero_equals_the_live_read_model(store, postgres_server: str) -> None:
    app, url = store
    live = JobsProjection(view=make_view(url))
    for i, cmds in enumerate(([("claim", "l1", "h:1"), ("progress", "l1", 3, 10), ("complete", "l1")],
                              [("claim", "l1", "h:1"), ("expire", "l1"), ("claim", "l2", "h:2"), ("fail", "l2")],
                              [("claim", "l1", "h:1"), ("hand_back", "l1"), ("requeue",)], [("cancel",)], [])):
        job_id = run_commands(app, cmds, i)
        for e, t in events_of(app, job_id):
            live.process_event(e, t)
    rebuilt_url = create_database(postgres_server)
    try:
        rebuilt = JobsProjection(view=make_view(rebuilt_url))
        for n in app.recorder.select_notifications(start=1, limit=100_000):
            rebuilt.process_event(app.mapper.to_domain_event(n), Tracking(app.name, n.id))
        live_ids = {r[0] for r in rows(url)}
        assert [r for r in rows(rebuilt_url) if r[0] in live_ids] == rows(url)
    finally:
        drop_database(postgres_server, rebuilt_url)


def test_hand_backs_are_counted_apart_from_lost_runners_and_the_requeue_says_why(store) -> None:
    """Five graceful stops and one lost runner: one attempt of the budget spent, five hand-backs, six runs; a
    requeue of missing work is no hand-back."""
    app, url = store
    cmds: list[tuple] = []
    for n in range(5):
        cmds += [("claim", f"l{n}", "h:1"), ("hand_back", f"l{n}")]
    cmds += [("claim", "l5", "h:1"), ("expire", "l5"), ("requeue",)]
    job_id = run_commands(app, cmds)
    projection = JobsProjection(view=make_view(url))
    for e, t in events_of(app, job_id):
        projection.process_event(e, t)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status, attempt, lost_leases, hand_backs, requeue_reason FROM jobs WHERE id = %s",
                           (job_id,)).fetchone()
    assert row == ("queued", 6, 1, 5, "no work item")
    job_id = run_commands(app, [("claim", "l1", "h:1"), ("hand_back", "l1")])
    for e, t in events_of(app, job_id):
        projection.process_event(e, t)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT hand_backs, requeue_reason FROM jobs WHERE id = %s",
                            (job_id,)).fetchone() == (1, "stopping")


def test_the_metadata_of_the_submit_lands_in_the_read_model(store) -> None:
    app, url = store
    job_id = run_commands(app, [("claim", "l1", "h:1")], actor=1)
    projection = JobsProjection(view=make_view(url))
    for e, t in events_of(app, job_id):
        projection.process_event(e, t)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT created_by, correlation_id FROM jobs WHERE id = %s",
                            (job_id,)).fetchone() == ("ci-bot", "req-1")


def test_an_event_the_read_model_cannot_hold_is_set_aside_and_the_next_one_flows(store) -> None:
    app, url = store
    poison = app.submit_job(SubmitJob(project="default", name="p", framework="lightgbm", task="regression",
                                      dataset={"uri": "builtin://diabetes"}, tags=["x" * 1_000_000])).job_id
    fine = app.submit_job(SUBMIT).job_id
    projection = JobsProjection(view=make_view(url))
    for job_id in (poison, fine):
        for e, t in events_of(app, job_id):
            projection.process_event(e, t)  # never raises for the poison: it is set aside
    assert rows(url, poison) == [] and len(rows(url, fine)) == 1
    with psycopg.connect(url) as conn:
        (error,) = conn.execute("SELECT error FROM projection_poisoned WHERE projection = 'jobs'").fetchone()
    assert "index row" in error or "size" in error
