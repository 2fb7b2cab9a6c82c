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

from commands.training import SubmitJob, TrainingApplication
from domain.training_job import JobError
from infra.postgres import eventsourcing_env
from projections.jobs import JobsProjection, JobsView
from tests.conftest import create_database, drop_database
from tests.test_training_job import commands

pytestmark = pytest.mark.integration

SUBMIT = SubmitJob(name="p", framework="lightgbm", task="regression", dataset={"uri": "builtin://diabetes"})


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


def run_commands(app: TrainingApplication, cmds: list[tuple]) -> UUID:
    job_id = app.submit_job(SUBMIT).job_id
    for name, *args in cmds:
        try:
            if name == "start":
                app.start_attempt(job_id, args[0], args[1])
            elif name == "progress":
                app.report_progress(job_id, *args)
            elif name == "complete":
                app.complete(job_id, args[0], {"rmse": 1.5}, {"uri": "file:///m", "sha256": "ab"})
            elif name == "fail":
                app.fail(job_id, args[0], "boom")
            elif name == "cancel":
                app.request_cancel(job_id)
            elif name == "give_up":
                app.give_up(job_id, "runners kept dying")
            else:
                app.confirm_cancelled(job_id, args[0])
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
@given(cmds=st.lists(commands, max_size=12), cut=st.floats(0, 1))
def test_processing_a_prefix_twice_leaves_the_read_model_unchanged(store, cmds: list[tuple], cut: float) -> None:
    app, url = store
    job_id = run_commands(app, cmds)
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
    for e, t in events:
        projection.process_event(e, t)
    assert rows(url, job_id) == final


def test_a_rebuild_from_position_zero_equals_the_live_read_model(store, postgres_server: str) -> None:
    app, url = store
    live = JobsProjection(view=make_view(url))
    for cmds in ([("start", 1, "h:1"), ("progress", 1, 3, 10), ("complete", 1)],
                 [("start", 1, "h:1"), ("start", 2, "h:2"), ("fail", 2)],
                 [("cancel",)], []):
        job_id = run_commands(app, cmds)
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
