"""The scheduler's fire lag: how long after its scheduled second each time fires.

`--schedules` (20) schedules on a per-second cron (`* * * * * *`) in a fresh PostgreSQL database, their read model
projected, then the real scheduler (commands/scheduler.py `Scheduler.run`, the system clock, as serve runs it)
for `--seconds` (20). Each Fired event's lag is its time of decision (the event's timestamp) less its scheduled
time; every template is a job, saved with the Fired in one transaction, as in serve. Also checks that each
scheduled second fired once.

    python -m bench.schedule_lag [--schedules 20] [--seconds 20] [--pg postgresql://…]

Prints the fires, p50, p99 and max lag (ms); ends with `p99_lag_ms=` (goal ≤ 1000).
"""
from __future__ import annotations

import asyncio
from collections import Counter

from bench.harness import PG_SERVER, fresh_database, parser, percentile, print_ratio

JOB = {"name": "tick", "framework": "lightgbm", "task": "binary_classification",
       "dataset": {"uri": "builtin://breast_cancer"}, "params": {"n_estimators": 5}}


async def run_for(scheduler: object, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))  # type: ignore[attr-defined]
    await asyncio.sleep(seconds)
    stop.set()
    await task


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--schedules", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--pg", default=PG_SERVER)
    args = p.parse_args()

    from commands.application import ANONYMOUS
    from commands.scheduler import Scheduler
    from commands.schedules import CreateSchedule, ScheduleCommands
    from commands.training import TrainingApplication
    from domain.schedule import Schedule
    from infra.clock import SystemClock
    from infra.health import Health
    from infra.postgres import eventsourcing_env, pool as pg_pool
    from projections.schedules import SCHEDULES_DDL, SchedulesProjection, SchedulesView, ScheduleQueries
    from tests.support.replay import project_all

    with fresh_database(args.pg, "trainyard_bench_schedules") as url:
        app = TrainingApplication(env=eventsourcing_env(url))
        pool = pg_pool(url)
        try:
            with pool.connection() as conn:
                conn.execute(SCHEDULES_DDL)
            commands = ScheduleCommands(app, SystemClock())
            ids = [commands.create(CreateSchedule(project="default", name=f"tick-{n}", cron="* * * * * *",
                                                  timezone="UTC", kind="job", template=JOB, overlap="queue",
                                                  catch_up="none"), ctx=ANONYMOUS).aggregate.id
                   for n in range(args.schedules)]
            project_all(url, [(TrainingApplication, SchedulesProjection, SchedulesView)])
            scheduler = Scheduler(commands, ScheduleQueries(pool), SystemClock(), Health().stage("scheduler"))
            asyncio.run(run_for(scheduler, args.seconds))
            lags, times = [], Counter()
            for schedule_id in ids:
                for e in app.events.get(schedule_id):
                    if isinstance(e, Schedule.Fired):
                        lags.append((e.timestamp - e.scheduled_for).total_seconds() * 1000)
                        times[(schedule_id, e.scheduled_for)] += 1
                    elif isinstance(e, Schedule.Missed):
                        print(f"missed: {e.count} times of {schedule_id} ({e.reason})")
        finally:
            pool.close()
            app.close()
    twice = sum(1 for n in times.values() if n > 1)
    print(f"{args.schedules} schedules, {args.seconds:.0f} s: {len(lags)} fires, fired twice: {twice}")
    print(f"lag after the scheduled second: p50 {percentile(lags, 50):.1f} ms  p99 {percentile(lags, 99):.1f} ms  "
          f"max {max(lags, default=float('nan')):.1f} ms  (goal p99 ≤ 1000 ms)")
    print_ratio(percentile(lags, 99), 1, name="p99_lag_ms")


if __name__ == "__main__":
    main()
