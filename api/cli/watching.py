"""The one polling loop behind the live views that have no stream to follow (`export --watch`; `ab --watch`,
whose report is re-read when the deployment's stream says something changed; `watch`, `study watch` and `logs -f`
against an API without live streams)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from api.client import Patience, TrainyardError

T = TypeVar("T")
WATCH_PATIENCE_S = 60.0  # how long a watch rides out an unreachable or failing (5xx) API before giving up


def retryable(error: TrainyardError) -> bool:
    """No connection, a timeout or a 5xx: an API restart, worth waiting for."""
    return error.retryable


def poll(look: Callable[[], T], interval: float, *, patience: float | None = WATCH_PATIENCE_S,
         wait_first: bool = False, max_delay: float | None = None,
         tolerate: Callable[[TrainyardError], bool] = retryable,
         on_error: Callable[[TrainyardError, float | None], None] | None = None,
         sleep: Callable[[float], object] = time.sleep) -> Iterator[T]:
    """Yield `look()` every `interval` seconds until the caller stops iterating (`wait_first`: wait before the
    first look too). `sleep(seconds)` waits between looks; one that returns early (a live stream's nudge) makes
    the next look come sooner.

    A TrainyardError that `tolerate` accepts is handed to `on_error(error, seconds_left)` and the look retried:
    after `interval` seconds, doubling up to `max_delay` while the failures go on (when given). Once the failures
    have lasted `patience` seconds (None: never), or for an error `tolerate` refuses, the error is raised. The
    first success resets both the delay and the patience."""
    delay, pause, keeper = interval, (interval if wait_first else 0.0), Patience(patience, tolerate, on_error)
    while True:
        if pause > 0:
            sleep(pause)
        try:
            value = look()
        except TrainyardError as e:
            left = keeper.failed(e)
            pause = delay if left is None else min(delay, left)
            delay = delay if max_delay is None else min(delay * 2, max_delay)
            continue
        delay, pause = interval, interval
        keeper.ok()
        yield value
