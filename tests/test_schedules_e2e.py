"""Schedules end to end through `trainyard up`: schedules fire every minute, serve is SIGKILLed, and after its restart
every scheduled time has been handled exactly once, fired or missed as each catch-up policy says.

The service runs on a clock 30 times faster than the wall (infra/clock.py, the edge of the world): a minute of the
schedule is two real seconds, so the real serve process and its real scheduler run minutes of schedule in seconds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from croniter import croniter

from commands.schedules import run_key
from commands.training import job_id_for
from infra.clock import FastClock
from tests.support.stack import Stack, up_on_a_fresh_database
from tests.support.waiting import eventually

SPEED = 30.0
SCHEDULES = "/api/v1/schedules"
JOB = {"name": "every-minute", "framework": "lightgbm", "task": "binary_classification",
       "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}}


def runs(stack: Stack, schedule_id: str) -> list[dict[str, Any]]:
    r = stack.http.get(f"{SCHEDULES}/{schedule_id}/runs", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["items"]))  # oldest first


def times(first: datetime, last: datetime) -> list[datetime]:
    it, out = croniter("* * * * *", first - timedelta(seconds=1)), []
    while (t := it.get_next(datetime)) <= last:
        out.append(t)
    return out


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def test_schedules_fire_every_minute_survive_a_serve_sigkill_and_catch_up_per_policy(
        postgres_server: str, nats_url: str, tmp_path: Path) -> None:
    clock = FastClock(datetime(2030, 1, 1, 0, 0, 30, tzinfo=timezone.utc), time.time(), SPEED)
    with up_on_a_fresh_database(postgres_server, nats_url, tmp_path, TRAINYARD_SCHEDULER_CLOCK=clock.spec(),
                                TRAINYARD_RUNNERS="1") as stack:
        made = {}
        for policy in ("all", "latest", "none"):
            r = stack.http.post(SCHEDULES, json={"name": f"every-minute-{policy}", "cron": "* * * * *",
                                                 "timezone": "Europe/Berlin", "job": JOB, "overlap": "queue",
                                                 "catch_up": policy})
            assert r.status_code == 201, r.text
            made[policy] = r.json()
        first = {p: at(s["next_fire_at"]) for p, s in made.items()}

        # three minutes of the schedule, each fired on time
        eventually(lambda: all(len(runs(stack, s["id"])) >= 3 for s in made.values()), timeout=60, interval=0.3,
                   message="the schedules never fired three times")
        # serve frozen, then killed: three minutes of the schedule with no scheduler, whatever the time `up` then
        # takes to start serve again (a restart quicker than the grace would fire the late times as on time)
        serve = stack.endpoints()["pids"]["serve"]
        os.kill(serve, signal.SIGSTOP)
        killed_at = clock.now()
        time.sleep(6)
        os.kill(serve, signal.SIGKILL)
        stack.wait_ready()
        until = clock.now() + timedelta(minutes=2)
        eventually(lambda: all(at(runs(stack, s["id"])[-1]["last_scheduled_for"]) >= until for s in made.values()),
                   timeout=60, interval=0.3, ignoring=(AssertionError,), message="the schedules stopped firing")

        for policy, schedule in made.items():
            handled = runs(stack, schedule["id"])
            fired = [at(r["scheduled_for"]) for r in handled if r["outcome"] == "fired"]
            missed = [t for r in handled if r["outcome"] == "missed"
                      for t in times(at(r["scheduled_for"]), at(r["last_scheduled_for"]))]
            assert all(r["outcome"] != "skipped" for r in handled)
            # every minute from the first to the last handled exactly once: none lost, none twice
            assert sorted(fired + missed) == times(first[policy], at(handled[-1]["last_scheduled_for"])), policy
            assert len(set(fired)) == len(fired)
            for r in handled:
                if r["outcome"] == "fired":  # the run's id derives from the schedule and its time
                    assert r["run_id"] == str(job_id_for(run_key(schedule["id"], at(r["scheduled_for"])), "default"))
                    assert stack.http.get(f"/api/v1/training/jobs/{r['run_id']}").status_code == 200
                else:
                    assert r["count"] == len(times(at(r["scheduled_for"]), at(r["last_scheduled_for"])))
                    assert f"catch_up {policy}" in r["reason"]
            down = [t for t in times(first[policy], until) if killed_at + timedelta(minutes=1) < t < until
                    - timedelta(minutes=2)]
            caught_up = [r for r in handled if r["trigger"] == "catch_up"]
            assert down, "serve was down for less than a minute of the schedule"
            if policy == "all":
                assert not missed and set(down) <= set(fired) and caught_up
            elif policy == "latest":
                assert missed and len([r for r in caught_up if r["outcome"] == "fired"]) <= 1
            else:
                assert missed and all(r["outcome"] == "missed" for r in caught_up)

        # the same schedule through the rest of its API
        sid = made["none"]["id"]
        r = stack.http.post(f"{SCHEDULES}/{sid}/trigger", headers={"Idempotency-Key": "now-1"})
        assert r.status_code == 202 and r.json()["outcome"] == "fired", r.text
        again = stack.http.post(f"{SCHEDULES}/{sid}/trigger", headers={"Idempotency-Key": "now-1"})
        assert again.json()["run_id"] == r.json()["run_id"]
        paused = stack.http.post(f"{SCHEDULES}/{sid}/pause").json()
        assert paused["status"] == "paused" and paused["next_fire_at"] is None
        r = stack.http.patch(f"{SCHEDULES}/{sid}", json={"cron": "*/5 * * * *", "overlap": "skip"})
        assert r.status_code == 200 and r.json()["cron"] == "*/5 * * * *", r.text
        r = stack.http.patch(f"{SCHEDULES}/{sid}", json={"cron": "99 * * * *"})
        assert r.status_code == 422 and r.json()["field"] == "cron", r.text
        r = stack.http.post(SCHEDULES, json={"name": "bad", "cron": "* * * * *", "job": {**JOB, "params": {"nope": 1}}})
        assert r.status_code == 422 and r.json()["field"].startswith("job.params"), r.text
        assert stack.http.post(f"{SCHEDULES}/{sid}/resume").json()["status"] == "active"
        cli = subprocess.run([sys.executable, "-m", "entrypoints.cli", "schedule", "runs", sid, "--json"],
                             env=stack.cli_env(), capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and '"missed"' in cli.stdout, cli.stderr
        assert stack.http.delete(f"{SCHEDULES}/{sid}").status_code == 204
        assert stack.http.get(f"{SCHEDULES}/{sid}").status_code == 404
        assert [s["id"] for s in stack.http.get(SCHEDULES).json()["items"]].count(sid) == 0
