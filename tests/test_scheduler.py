"""The scheduler's commands on the real event store: two schedulers racing fire each time once, the overlap
policies do what they say with the reason in the event, and the read model lists every handled time."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from croniter import croniter

from commands.application import ANONYMOUS
from commands.schedules import CreateSchedule, ScheduleCommands, ScheduleNotFoundError
from commands.training import TrainingApplication
from domain.training_job import TrainingJob
from infra.postgres import eventsourcing_env, pool as pg_pool
from projections.schedules import SCHEDULES_DDL, SchedulesProjection, SchedulesView, ScheduleQueries
from tests.support.replay import project_all

JOB = {"name": "nightly", "framework": "lightgbm", "task": "binary_classification",
       "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}}
START = datetime(2024, 10, 27, 0, 0, 30, tzinfo=timezone.utc)  # Berlin falls back at 01:00 UTC


class Clock:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t


@pytest.fixture
def apps(database_url: str) -> Iterator[list[TrainingApplication]]:
    made = [TrainingApplication(env=eventsourcing_env(database_url)) for _ in range(2)]
    yield made
    for app in made:
        app.close()


def create(commands: ScheduleCommands, cron: str = "* * * * *", **kwargs: Any) -> Any:
    cmd = CreateSchedule(project="default", name="nightly", cron=cron, timezone=kwargs.pop("tz", "Europe/Berlin"),
                         kind="job", template=JOB, **kwargs)
    return commands.create(cmd, ctx=ANONYMOUS).aggregate


def test_two_schedulers_racing_fire_each_time_once_and_exactly_croniters_times(apps: list[TrainingApplication]) -> None:
    clock = Clock(START)
    a, b = (ScheduleCommands(app, clock) for app in apps)
    schedule = create(a, "*/10 * * * *", catch_up="all", overlap="queue")
    fired: list[Any] = []
    for minutes in range(0, 185, 7):  # across the repeated hour, both deciding at once at every step
        clock.t = START + timedelta(minutes=minutes)
        barrier = threading.Barrier(2)

        def race(commands: ScheduleCommands) -> None:
            barrier.wait()
            fired.extend(h for h in commands.run_due(schedule.id) if h.outcome == "fired")
        threads = [threading.Thread(target=race, args=(c,)) for c in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    it = croniter("*/10 * * * *", START.astimezone(schedule.cursor.tzinfo))
    expected = []
    while (t := it.get_next(datetime)) <= START + timedelta(minutes=184):
        expected.append(t.astimezone(timezone.utc))
    assert sorted(h.scheduled_for for h in fired) == expected
    jobs = [apps[0].repository.get(h.run_id) for h in fired]
    assert len({j.id for j in jobs}) == len(expected) and all(isinstance(j, TrainingJob) for j in jobs)
    assert apps[0].repository.get(schedule.id).fired == len(expected)


def test_overlap_skip_records_why_cancel_previous_stops_the_previous_run_and_queue_runs_both(
        apps: list[TrainingApplication]) -> None:
    clock = Clock(START)
    commands = ScheduleCommands(apps[0], clock)
    skip, cancel, queue = (create(commands, overlap=o) for o in ("skip", "cancel_previous", "queue"))
    outcomes = {}
    for minute in (1, 2):
        clock.t = START + timedelta(minutes=minute)
        for s in (skip, cancel, queue):
            outcomes[(s.overlap, minute)] = commands.run_due(s.id)
    assert [h.outcome for h in outcomes[("skip", 2)]] == ["skipped"]
    assert "still queued (overlap skip)" in outcomes[("skip", 2)][0].reason
    first, second = outcomes[("cancel_previous", 1)][0], outcomes[("cancel_previous", 2)][0]
    assert second.outcome == "fired" and "was cancelled" in second.reason
    assert apps[0].repository.get(first.run_id).status == "cancelled"  # a queued job's cancel ends it at once
    assert [h.outcome for h in outcomes[("queue", 2)]] == ["fired"]
    assert "overlap queue" in outcomes[("queue", 2)][0].reason


def test_downtime_is_caught_up_per_policy_and_the_read_model_lists_every_time(
        apps: list[TrainingApplication], database_url: str) -> None:
    clock = Clock(START)
    commands = ScheduleCommands(apps[0], clock, grace_s=60)
    policies = {p: create(commands, catch_up=p, overlap="queue", tz="UTC") for p in ("none", "latest", "all")}
    clock.t = START + timedelta(minutes=5, seconds=10)  # 00:01 … 00:05 are due; only 00:05 within the grace
    handled = {p: commands.run_due(s.id) for p, s in policies.items()}
    assert [(h.outcome, h.scheduled_for.minute) for h in handled["none"]] == [("missed", 4), ("fired", 5)]
    assert [(h.outcome, h.scheduled_for.minute) for h in handled["latest"]] == [("missed", 4), ("fired", 5)]
    assert [h.outcome for h in handled["all"]] == ["fired"] * 5
    clock.t = START + timedelta(minutes=9, seconds=30)  # 00:06 … 00:10 are due; 00:09 and 00:10 within the grace
    for policy in ("latest", "none"):
        assert [(h.outcome, h.scheduled_for.minute) for h in commands.run_due(policies[policy].id)] == [
            ("missed", 8), ("fired", 9), ("fired", 10)]
    assert commands.run_due(policies["all"].id)[-1].scheduled_for.minute == 10

    pool = pg_pool(database_url)
    try:
        with pool.connection() as conn:
            conn.execute(SCHEDULES_DDL)
        project_all(database_url, [(TrainingApplication, SchedulesProjection, SchedulesView)])
        queries = ScheduleQueries(pool)
        row = queries.get(policies["latest"].id, project="default")
        assert row is not None and (row["fired"], row["missed"]) == (3, 7)
        assert row["next_fire_at"] == datetime(2024, 10, 27, 0, 11, tzinfo=timezone.utc)
        runs, total = queries.runs(policies["latest"].id)
        assert total == 5 and [r["outcome"] for r in runs] == ["fired", "fired", "missed", "fired", "missed"]
        assert runs[2]["count"] == 3 and "catch_up latest" in runs[2]["reason"]
        assert queries.get(policies["latest"].id, project="other") is None
        with pytest.raises(ScheduleNotFoundError):
            commands.pause(policies["latest"].id, project="other")
    finally:
        pool.close()
