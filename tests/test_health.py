"""Stage health: what /readyz answers 503 on. A stage with work waiting that stops moving is stuck."""
from __future__ import annotations

import time

from infra.health import Health, Stage


def test_a_stage_with_lag_that_stops_moving_is_stuck_and_the_process_unhealthy() -> None:
    health = Health()
    relay = health.stage("relay", stuck_after_s=0.05)
    relay.observe(10, 10)
    assert relay.status() == "ok" and health.healthy()
    relay.observe(10, 25)  # new events, position unchanged
    time.sleep(0.1)
    assert relay.status() == "stuck" and not health.healthy()
    relay.observe(25, 25)
    assert relay.status() == "ok" and relay.snapshot()["lag"] == 0


def test_a_polling_stage_that_stops_ticking_is_stuck() -> None:
    s = Stage("reconciler", stuck_after_s=0.05, loops=True)
    s.progressed()
    assert s.status() == "ok"
    time.sleep(0.1)
    assert s.status() == "stuck"


def test_failures_without_success_are_an_error_and_set_aside_items_are_counted() -> None:
    s = Stage("reports", stuck_after_s=0.05)
    s.progressed()
    time.sleep(0.1)
    s.failed(RuntimeError("store away"))
    assert s.status() == "error" and "store away" in s.snapshot()["last_error"]
    s.poisoned_one("bad batch")
    assert s.snapshot()["poisoned"] == 1 and s.status() == "ok"


def test_too_far_behind_is_reported() -> None:
    s = Stage("projection:jobs", max_lag=100)
    s.observe(0, 0)
    s.observe(5, 500)
    assert s.status() == "behind" and s.snapshot()["lag"] == 495
