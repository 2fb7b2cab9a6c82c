"""The studies read model on real PostgreSQL: replays change nothing, a rebuild from zero equals the live tables,
and the queries agree with the Study aggregate."""
from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4, uuid5

import psycopg
import pytest
from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, given, settings, strategies as st

from commands.context import CommandContext
from commands.training import TrainingApplication
from domain.study import Study, StudyError
from infra.postgres import eventsourcing_env, pool as make_pool
from projections.studies import StudiesProjection, StudiesView, StudyQueries
from tests.support.database import create_database, drop_database
from tests.support.strategies import apply_study_command, new_study, study_commands

pytestmark = pytest.mark.integration

ACTORS = ["alice", "ci-bot", "driver:study"]


def make_view(database_url: str) -> StudiesView:
    env = Environment("studies", eventsourcing_env(database_url))
    return InfrastructureFactory.construct(env=env).tracking_recorder(StudiesView)


@pytest.fixture(scope="module")
def store(postgres_server: str) -> Iterator[SimpleNamespace]:
    """One event store, its live read model and queries, and a replica database for rebuilds, per module."""
    url, replica_url = create_database(postgres_server), create_database(postgres_server)
    app = TrainingApplication(env=eventsourcing_env(url))
    live, replica = StudiesProjection(view=make_view(url)), StudiesProjection(view=make_view(replica_url))
    pool = make_pool(url, max_size=2)
    yield SimpleNamespace(app=app, url=url, live=live, replica=replica, replica_url=replica_url,
                          queries=StudyQueries(pool))
    pool.close()
    for p in (live, replica):
        p.view.datastore.close()
    app.close()
    drop_database(postgres_server, url)
    drop_database(postgres_server, replica_url)


def ctx(actor: int = 0) -> CommandContext:
    return CommandContext(actor=ACTORS[actor % 3], correlation_id=f"req-{actor}", trace_id="ab" * 16)


def save(app: TrainingApplication, study: Study, actor: int = 0) -> None:
    if study.pending_events:
        app.save_with(ctx(actor), study)


def run_study(app: TrainingApplication, direction: str, n_trials: int, max_parallel: int, cmds: list[tuple],
              actor: int) -> Study:
    """The Study's commands (tests/support/strategies.py), saved after each one; job ids are made unique to the study (trials.job_id is)."""
    study = new_study(direction, n_trials, max_parallel)
    save(app, study, actor)
    for cmd in cmds:
        if cmd[0] == "ask_next":
            cmd = ("ask", study.next_number, 0.1, cmd[1] or UUID(int=100 + study.next_number))
        if cmd[0] == "ask":
            cmd = (*cmd[:3], uuid5(study.id, str(cmd[3])))
        try:
            apply_study_command(study, cmd)
        except (StudyError, ValueError):
            pass
        save(app, study, actor)
    return study


def events_of(app: TrainingApplication, study_id: UUID) -> list[tuple[Any, Tracking]]:
    return [(app.mapper.to_domain_event(n), Tracking(app.name, n.id))
            for n in app.recorder.select_notifications(start=1, limit=100_000) if n.originator_id == study_id]


def catch_up(s: SimpleNamespace) -> None:
    start = (s.live.view.max_tracking_id(s.app.name) or 0) + 1
    for n in s.app.recorder.select_notifications(start=start, limit=100_000):
        s.live.process_event(s.app.mapper.to_domain_event(n), Tracking(s.app.name, n.id))


def rows(database_url: str, study_id: UUID | None = None) -> tuple[list[tuple], list[tuple]]:
    """Every column of the study's rows (or of all rows), ordered."""
    cond, params = ("WHERE {} = %s", (study_id,)) if study_id else ("", ())
    with psycopg.connect(database_url) as conn:
        return (conn.execute(f"SELECT * FROM studies {cond.format('id')} ORDER BY id", params).fetchall(),
                conn.execute(f"SELECT * FROM trials {cond.format('study_id')} ORDER BY study_id, number",
                             params).fetchall())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(direction=st.sampled_from(["maximize", "minimize"]), n_trials=st.integers(1, 4),
       max_parallel=st.integers(1, 3), cmds=st.lists(study_commands, max_size=30), cut=st.floats(0, 1),
       actor=st.integers(0, 2))
def test_processing_a_prefix_twice_changes_nothing_and_a_rebuild_equals_the_live_tables(
        store, direction: str, n_trials: int, max_parallel: int, cmds: list[tuple], cut: float, actor: int) -> None:
    study = run_study(store.app, direction, n_trials, max_parallel, cmds, actor)
    events = events_of(store.app, study.id)
    k = round(cut * len(events))
    for e, t in events[:k]:
        store.live.process_event(e, t)
    after_prefix = rows(store.url, study.id)
    for e, t in events[:k]:  # a crash and replay of the prefix
        store.live.process_event(e, t)
    assert rows(store.url, study.id) == after_prefix
    for e, t in events:
        store.live.process_event(e, t)
    final = rows(store.url, study.id)
    for e, t in events:
        store.live.process_event(e, t)
    assert rows(store.url, study.id) == final

    got = store.queries.get(study.id, project="default")
    assert got["status"] == study.status and got["counts"] == study.counts and got["best_trial"] == study.best
    assert got["reason"] == (study.finished_reason if study.is_finished else study.cancel_reason)
    assert got["created_by"] == ACTORS[actor] and (got["finished_at"] is not None) == study.is_finished
    assert [(h["number"], h["value"], h["best_so_far"]) for h in store.queries.history(study.id)] == study.history()
    trials, total = store.queries.trials(study.id)
    assert total == len(study.trials)
    assert [(r["number"], r["state"], r["params"], r["value"], r["job_id"], r["pruned_at_step"]) for r in trials] == [
        (n, t.state, t.params, t.value, t.job_id, t.pruned_at_step) for n, t in study.trials.items()]
    with psycopg.connect(store.url) as conn:  # trial events move the study's version too
        assert conn.execute("SELECT version FROM studies WHERE id = %s", (study.id,)).fetchone()[0] == study.version

    for e, t in events:  # a rebuild into a database that has never seen this study
        store.replica.process_event(e, t)
    assert rows(store.replica_url, study.id) == final
    with psycopg.connect(store.replica_url, autocommit=True) as conn:
        for e, t in events:  # each event again over the newer rows, its position forgotten: the guards hold alone
            conn.execute("DELETE FROM studies_tracking")
            store.replica.process_event(e, t)
            assert rows(store.replica_url, study.id) == final


def test_a_rebuild_from_position_zero_into_a_fresh_database_equals_the_live_tables(store,
                                                                                  postgres_server: str) -> None:
    for i, cmds in enumerate(([("ask_next", None), ("start", 0), ("finish", 0, "completed", 0.5)],
                              [("ask_next", None), ("ask_next", None), ("prune", 1, 3, 0.2), ("cancel",),
                               ("finish", 1, "pruned", None), ("finish", 0, "failed", math.nan)],
                              [("fail",)], [])):
        run_study(store.app, "minimize", 2, 2, cmds, i)
    catch_up(store)
    rebuilt_url = create_database(postgres_server)
    rebuilt = StudiesProjection(view=make_view(rebuilt_url))
    try:
        for n in store.app.recorder.select_notifications(start=1, limit=100_000):
            rebuilt.process_event(store.app.mapper.to_domain_event(n), Tracking(store.app.name, n.id))
        live_studies, live_trials = rows(store.url)
        ids = {r[0] for r in live_studies}
        rebuilt_studies, rebuilt_trials = rows(rebuilt_url)
        assert len(ids) >= 4 and live_trials
        assert [r for r in rebuilt_studies if r[0] in ids] == live_studies
        assert [r for r in rebuilt_trials if r[0] in ids] == live_trials
    finally:
        rebuilt.view.datastore.close()
        drop_database(postgres_server, rebuilt_url)


def ask_and_start(study: Study, numbers: range) -> list[UUID]:
    jobs = [uuid4() for _ in numbers]
    for n, job in zip(numbers, jobs):
        study.ask_trial(n, {"lr": 0.1 * (n + 1)}, job)
        study.trial_started(n)
    return jobs


@pytest.mark.parametrize("direction, best, history", [
    ("maximize", 1, [0.5, 0.9, 0.9]), ("minimize", 2, [0.5, 0.5, 0.1])])
def test_a_three_trial_study_completes_with_counts_best_trial_and_history(store, direction: str, best: int,
                                                                           history: list[float]) -> None:
    study = new_study(direction, n_trials=3, max_parallel=3)
    jobs = ask_and_start(study, range(3))
    save(store.app, study, 1)
    catch_up(store)
    got = store.queries.get(study.id, project="default")
    assert (got["status"], got["best_trial"], got["reason"], got["finished_at"]) == ("running", None, None, None)
    assert got["counts"] == {"queued": 0, "running": 3, "completed": 0, "pruned": 0, "failed": 0}
    values = [0.5, 0.9, 0.1]
    for n, v in enumerate(values):
        study.finish_trial(n, "completed", v)
        save(store.app, study, 1)
    catch_up(store)
    got = store.queries.get(study.id, project="default")
    assert (got["status"], got["reason"], got["created_by"]) == ("completed", "all 3 trials finished", "ci-bot")
    assert got["counts"] == {"queued": 0, "running": 0, "completed": 3, "pruned": 0, "failed": 0}
    assert got["best_trial"] == {"number": best, "value": values[best], "params": {"lr": 0.1 * (best + 1)},
                                 "job_id": jobs[best]}
    assert got["finished_at"] is not None and got["search_space"] == study.search_space and got["n_trials"] == 3
    assert store.queries.history(study.id) == [
        {"number": n, "value": v, "best_so_far": b} for n, v, b in zip(range(3), values, history)]
    assert store.queries.completed_trials(study.id) == [({"lr": 0.1 * (n + 1)}, v) for n, v in enumerate(values)]


def test_cancel_with_a_running_trial_is_cancelling_until_it_ends(store) -> None:
    study = new_study(n_trials=5, max_parallel=3)
    ask_and_start(study, range(1))
    study.ask_trial(1, {"lr": 0.5}, uuid4())
    study.finish_trial(1, "completed", 0.7)
    study.request_cancel("user asked")
    save(store.app, study)
    catch_up(store)
    got = store.queries.get(study.id, project="default")
    assert (got["status"], got["reason"], got["finished_at"]) == ("cancelling", "user asked", None)
    assert got["counts"]["running"] == 1 and got["best_trial"]["number"] == 1
    study.prune_trial(0, 4, 0.2)
    study.finish_trial(0, "pruned")
    save(store.app, study)
    catch_up(store)
    got = store.queries.get(study.id, project="default")
    assert (got["status"], got["reason"]) == ("cancelled", "user asked") and got["finished_at"] is not None
    (trial,), total = store.queries.trials(study.id, state="pruned")
    assert total == 1 and (trial["number"], trial["pruned_at_step"]) == (0, 4) and trial["finished_at"]


def test_list_filters_by_status_and_tags_newest_first_with_the_total(store) -> None:
    tag = f"t-{uuid4().hex[:8]}"
    made = []
    for end in ("complete", None, "cancel"):
        study = Study(id=uuid4(), name=f"s-{end}", framework="lightgbm", task="regression",
                      dataset={"uri": "builtin://diabetes"}, objective={"metric": "r2", "direction": "maximize"},
                      search_space={}, fixed_params={}, sampler={"type": "random"}, pruner={}, n_trials=1,
                      max_parallel=1, timeout_s=600, priority="low", tags=[tag, end or "open"])
        if end == "complete":
            study.ask_trial(0, {"lr": 0.1}, uuid4())
            study.finish_trial(0, "completed", 1.0)
        elif end == "cancel":
            study.request_cancel()
        save(store.app, study)
        made.append(study.id)
    catch_up(store)
    listed, total = store.queries.list(project="default", tag=tag)
    assert total == 3 and [r["study_id"] for r in listed] == made[::-1]
    assert [r["status"] for r in listed] == ["cancelled", "running", "completed"]
    assert set(listed[0]) == set(store.queries.get(made[0], project="default"))
    assert [r["study_id"] for r in store.queries.list(project="default", status="running", tag=[tag])[0]] == [made[1]]
    assert store.queries.list(project="default", status=["completed", "cancelled"], tag=[tag])[1] == 2
    assert store.queries.list(project="default", tag=[tag, "cancel"])[1] == 1
    page, total = store.queries.list(project="default", tag=tag, limit=1, offset=1)
    assert total == 3 and [r["study_id"] for r in page] == [made[1]]


def test_trials_filter_by_state_in_number_order(store) -> None:
    study = new_study(n_trials=5, max_parallel=5)
    jobs = ask_and_start(study, range(3))
    study.ask_trial(3, {"lr": 0.9}, uuid4())
    study.finish_trial(0, "completed", 0.3)
    study.finish_trial(1, "failed", error="oom")
    save(store.app, study)
    catch_up(store)
    all_trials, total = store.queries.trials(study.id)
    assert total == 4 and [(r["number"], r["state"]) for r in all_trials] == [
        (0, "completed"), (1, "failed"), (2, "running"), (3, "queued")]
    assert set(all_trials[0]) == {"number", "state", "params", "value", "job_id", "started_at", "finished_at",
                                  "pruned_at_step", "asked_at"}
    assert all_trials[2]["job_id"] == jobs[2] and all_trials[2]["started_at"] and all_trials[3]["started_at"] is None
    assert [r["number"] for r in store.queries.trials(study.id, state="running")[0]] == [2]
    assert [r["number"] for r in store.queries.trials(study.id, state=["failed", "completed"])[0]] == [0, 1]
    page, total = store.queries.trials(study.id, limit=2, offset=2)
    assert total == 4 and [r["number"] for r in page] == [2, 3]
    assert store.queries.trials(uuid4()) == ([], 0) and store.queries.get(uuid4(), project="default") is None


def test_a_nan_value_is_stored_as_null(store, database_url: str) -> None:
    study = new_study()
    ask_and_start(study, range(1))
    study.finish_trial(0, "failed", math.nan, error="nan loss")
    save(store.app, study)
    catch_up(store)
    with psycopg.connect(store.url) as conn:
        assert conn.execute("SELECT value IS NULL, error FROM trials WHERE study_id = %s",
                            (study.id,)).fetchone() == (True, "nan loss")
    # the projection's own guard: an event that carries a NaN (the aggregate never makes one) stores NULL too
    study = new_study()
    ask_and_start(study, range(2))
    study.finish_trial(0, "failed", error="nan loss")
    study.finish_trial(1, "failed", error="inf loss")
    events = list(study.collect_events())
    object.__setattr__(events[-2], "value", math.nan)
    object.__setattr__(events[-1], "value", math.inf)
    projection = StudiesProjection(view=make_view(database_url))
    try:
        for i, e in enumerate(events, 1):
            projection.process_event(e, Tracking("trainyard", i))
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT number, state, value FROM trials ORDER BY number").fetchall() == [
                (0, "failed", None), (1, "failed", None)]
            assert conn.execute("SELECT count(*) FROM projection_poisoned").fetchone() == (0,)
    finally:
        projection.view.datastore.close()
