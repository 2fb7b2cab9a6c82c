"""The Schedule aggregate and its fire times: what fires is what croniter says, over random crons, timezones and DST
edges, however often (and however late) a scheduler looks; any command sequence replays to the same object."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from eventsourcing.application import Application
from hypothesis import HealthCheck, given, settings, strategies as st

from domain.schedule import Plan, Schedule, ScheduleError, ScheduleSpecError, Trigger
from domain.schedule_times import check_cron

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago",
         "Pacific/Chatham", "Europe/London"]
# Starts near the DST changes of these zones (spring forward and fall back), and plain days.
EDGES = [datetime(2024, 3, 31, 0, 0, tzinfo=timezone.utc), datetime(2024, 10, 27, 0, 0, tzinfo=timezone.utc),
         datetime(2024, 3, 10, 6, 0, tzinfo=timezone.utc), datetime(2024, 11, 3, 5, 0, tzinfo=timezone.utc),
         datetime(2024, 4, 6, 14, 0, tzinfo=timezone.utc), datetime(2024, 9, 7, 2, 0, tzinfo=timezone.utc),
         datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)]
TEMPLATE = {"name": "nightly", "framework": "lightgbm", "task": "binary_classification",
            "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}}

crons = st.one_of(
    st.tuples(st.sampled_from(["*", "*/5", "*/15", "0", "30", "0,30", "7", "10-20/5"]),
              st.sampled_from(["*", "*/2", "1", "2", "3", "1-3", "0", "23"]),
              st.sampled_from(["*", "*", "1", "1,15"]),
              st.just("*"), st.sampled_from(["*", "*", "0", "1-5", "6"])).map(" ".join),
    st.sampled_from(["0 2 * * *", "30 2 * * *", "59 1 * * *", "0 3 * * 0", "*/30 1-3 * * *", "0 0 1 * *"]))


def new_schedule(cron: str, tz: str, start: datetime, catch_up: str = "all", overlap: str = "queue") -> Schedule:
    return Schedule.create(uuid4(), project="default", name="nightly", cron=cron, timezone=tz, kind="job",
                           template=TEMPLATE, overlap=overlap, catch_up=catch_up, now=start)


def croniters_times(cron: str, tz: str, start: datetime, until: datetime) -> list[datetime]:
    it, out = croniter(cron, start.astimezone(ZoneInfo(tz))), []
    while (t := it.get_next(datetime).astimezone(timezone.utc)) <= until:
        out.append(t)
    return out


def run_scheduler(s: Schedule, wakeups: list[datetime], grace_s: float) -> list[datetime]:
    """A scheduler that looks at these times: what it fires, in order."""
    fired: list[datetime] = []
    for now in wakeups:
        plan = s.plan(now, grace_s)
        while True:
            s.miss(plan.missed, "missed")
            for t, trigger in plan.fire:
                s.fire(t, trigger, uuid4(), "due")
                fired.append(t)
            if not plan.more:
                break
            plan = s.plan(now, grace_s)
    return fired


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cron=crons, tz=st.sampled_from(ZONES), start=st.sampled_from(EDGES),
       offset_s=st.integers(0, 3 * 3600), steps=st.lists(st.integers(1, 4 * 3600), min_size=1, max_size=30))
def test_with_catch_up_all_the_fires_are_croniters_times_exactly_however_the_scheduler_looks(
        cron: str, tz: str, start: datetime, offset_s: int, steps: list[int]) -> None:
    start = start - timedelta(seconds=offset_s)
    wakeups, now = [], start
    for step in steps:
        now += timedelta(seconds=step)
        wakeups.append(now)
    s = new_schedule(cron, tz, start)
    assert run_scheduler(s, wakeups, grace_s=60) == croniters_times(cron, tz, start, wakeups[-1])


@settings(max_examples=100, deadline=None)
@given(cron=crons, tz=st.sampled_from(ZONES), start=st.sampled_from(EDGES), catch_up=st.sampled_from(["none", "latest"]),
       steps=st.lists(st.integers(1, 6 * 3600), min_size=1, max_size=20))
def test_every_scheduled_time_is_fired_or_missed_once_and_only_downtime_is_missed(
        cron: str, tz: str, start: datetime, catch_up: str, steps: list[int]) -> None:
    s, wakeups, now = new_schedule(cron, tz, start, catch_up), [], start
    for step in steps:
        now += timedelta(seconds=step)
        wakeups.append(now)
    fired, missed, previous = [], [], start
    for now in wakeups:
        plan = s.plan(now, 60)
        expected = croniters_times(cron, tz, previous, now)
        on_time = [t for t in expected if now - t <= timedelta(seconds=60)]
        assert sorted(plan.missed + [t for t, _ in plan.fire]) == expected
        assert [t for t, trig in plan.fire if trig == Trigger.CRON] == on_time
        if catch_up == "latest" and expected and not on_time:
            assert plan.fire == [(expected[-1], Trigger.CATCH_UP)]
        if catch_up == "none":
            assert all(trig == Trigger.CRON for _, trig in plan.fire)
        s.miss(plan.missed, "missed")
        for t, trig in plan.fire:
            s.fire(t, trig, uuid4(), "due")
        fired += [t for t, _ in plan.fire]
        missed += plan.missed
        previous = now
    assert sorted(fired + missed) == croniters_times(cron, tz, start, wakeups[-1])
    assert s.fired == len(fired) and s.missed == len(missed)


def test_dst_in_the_schedules_timezone_a_skipped_wall_time_fires_after_the_gap_and_a_repeated_hour_twice() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    s = new_schedule("30 2 * * *", "Europe/Berlin", datetime(2024, 3, 30, 12, tzinfo=berlin))
    fired = run_scheduler(s, [datetime(2024, 4, 1, 12, tzinfo=berlin)], 60)
    assert [t.astimezone(berlin).isoformat() for t in fired] == ["2024-03-31T03:00:00+02:00",
                                                                   "2024-04-01T02:30:00+02:00"]
    s = new_schedule("0 9 * * *", "America/New_York", datetime(2024, 11, 1, 12, tzinfo=timezone.utc))
    fired = run_scheduler(s, [datetime(2024, 11, 5, 0, tzinfo=timezone.utc)], 60)
    assert [t.hour for t in fired] == [13, 13, 14, 14]  # 09:00 local is 13:00 UTC in EDT, 14:00 in EST


def test_a_time_is_handled_once_fire_and_skip_refuse_what_the_cursor_passed() -> None:
    start = datetime(2024, 6, 1, 12, 0, 30, tzinfo=timezone.utc)
    s = new_schedule("* * * * *", "UTC", start)
    t = datetime(2024, 6, 1, 12, 1, tzinfo=timezone.utc)
    s.fire(t, Trigger.CRON, uuid4(), "due")
    for again in (lambda: s.fire(t, Trigger.CRON, uuid4(), "due"), lambda: s.skip(t, Trigger.CRON, "busy"),
                  lambda: s.miss([t], "down")):
        with pytest.raises(ScheduleError):
            again()
    assert s.plan(t + timedelta(seconds=30), 60) == Plan([], [])
    s.fire(t, Trigger.MANUAL, uuid4(), "triggered by request")  # a manual run leaves the cursor alone
    assert s.cursor == t and s.fired == 2


def test_pause_resume_does_not_catch_up_the_pause_and_a_deleted_schedule_stays_deleted() -> None:
    start = datetime(2024, 6, 1, 12, 0, 30, tzinfo=timezone.utc)
    s = new_schedule("* * * * *", "UTC", start)
    s.pause()
    assert s.plan(start + timedelta(hours=1), 60) == Plan([], [])
    s.resume(start + timedelta(hours=1))
    assert s.plan(start + timedelta(hours=1, seconds=40), 60).fire == [
        (datetime(2024, 6, 1, 13, 1, tzinfo=timezone.utc), Trigger.CRON)]
    s.delete()
    with pytest.raises(ScheduleError):
        s.resume(start)
    assert s.plan(start + timedelta(hours=2), 60) == Plan([], [])


def test_a_new_cron_counts_from_the_change_and_bad_specs_name_their_field() -> None:
    start = datetime(2024, 6, 1, 12, 0, 30, tzinfo=timezone.utc)
    s = new_schedule("* * * * *", "UTC", start)
    s.change(start + timedelta(hours=1), cron="0 * * * *", timezone="Europe/Berlin")
    assert s.cursor == start + timedelta(hours=1) and s.cron == "0 * * * *"
    assert s.next_time() == datetime(2024, 6, 1, 14, tzinfo=timezone.utc)
    for field, kwargs in (("cron", {"cron": "61 * * * *"}), ("cron", {"cron": "* * *"}),
                          ("timezone", {"timezone": "Mars/Olympus"}), ("overlap", {"overlap": "twice"}),
                          ("catch_up", {"catch_up": "some"})):
        with pytest.raises(ScheduleSpecError) as e:
            s.change(start, **kwargs)
        assert e.value.field == field
    assert check_cron("  */10  * * * * * ") == "*/10 * * * * *"
    with pytest.raises(ValueError):
        check_cron("0 0 30 2 *")  # February 30th never comes


commands = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(1, 7200)),
    st.tuples(st.just("skip"), st.integers(1, 600)),
    st.tuples(st.just("manual"), st.integers(0, 600)),
    st.tuples(st.just("pause"), st.just(0)), st.tuples(st.just("resume"), st.integers(0, 600)),
    st.tuples(st.just("change"), st.sampled_from(["*/5 * * * *", "0 * * * *", "* * * * *"])),
    st.tuples(st.just("delete"), st.just(0))), max_size=25)


@settings(max_examples=150, deadline=None)
@given(cmds=commands, catch_up=st.sampled_from(["none", "latest", "all"]))
def test_any_command_sequence_replayed_from_its_stored_events_equals_the_live_schedule(
        cmds: list[tuple], catch_up: str) -> None:
    now = datetime(2024, 10, 26, 23, 0, 30, tzinfo=timezone.utc)
    s = new_schedule("*/10 * * * *", "Europe/Berlin", now, catch_up)
    for op, arg in cmds:
        try:
            if op == "tick":
                now += timedelta(seconds=arg)
                plan = s.plan(now, 60)
                s.miss(plan.missed, "missed while down")
                for t, trigger in plan.fire:
                    s.fire(t, trigger, uuid4(), "due", cancelled=uuid4())
            elif op == "skip" and (t := s.next_time()) is not None:
                s.skip(t, Trigger.CRON, "previous run still running")
            elif op == "manual":
                s.fire(now, Trigger.MANUAL, uuid4(), "triggered by request")
            elif op == "pause":
                s.pause("maintenance")
            elif op == "resume":
                s.resume(now + timedelta(seconds=arg))
            elif op == "change":
                s.change(now, cron=arg, template={**TEMPLATE, "params": {"n_estimators": 7}})
            elif op == "delete":
                s.delete()
        except ScheduleError:
            pass
        assert s.cursor.tzinfo is not None
    events = list(s.collect_events())
    mapper = Application().mapper
    stored = [mapper.to_domain_event(mapper.to_stored_event(e)) for e in events]
    rebuilt = None
    for e in stored:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None and rebuilt.__dict__ == s.__dict__
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert isinstance(s.id, UUID)


def test_every_schedule_event_validates_against_its_documented_schema() -> None:
    from api.asyncapi import SCHEDULE_EVENTS, Envelope
    from domain.contract import envelope, snake

    start = datetime(2024, 6, 1, 12, 0, 30, tzinfo=timezone.utc)
    s = new_schedule("* * * * *", "UTC", start, catch_up="none")
    s.fire(datetime(2024, 6, 1, 12, 1, tzinfo=timezone.utc), Trigger.CRON, uuid4(), "due", cancelled=uuid4())
    s.skip(datetime(2024, 6, 1, 12, 2, tzinfo=timezone.utc), Trigger.CRON, "the previous run is still running")
    s.miss(s.plan(start + timedelta(hours=1), 60).missed, "missed while no scheduler ran")
    s.change(start + timedelta(hours=1), cron="0 * * * *", template={**TEMPLATE, "params": {}})
    s.pause("maintenance")
    s.resume(start + timedelta(hours=2))
    s.delete("not needed")
    seen = set()
    for e in s.collect_events():
        subject, body = envelope(e)
        assert subject.startswith("trainyard.v1.schedule.") and body["aggregate"] == "schedule"
        name = subject.rsplit(".", 1)[1]
        Envelope[SCHEDULE_EVENTS[name]].model_validate(body)
        seen.add(name)
    declared = {snake(n) for n, v in vars(Schedule).items()
                if isinstance(v, type) and v.__qualname__ == f"Schedule.{n}" and n != "Event"}
    assert seen == set(SCHEDULE_EVENTS) == declared  # a new event must be documented
