"""The one way tests wait for something that happens elsewhere (another thread, process or service)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NeverHappened(AssertionError):
    """What `eventually` raises when its check never held within the timeout."""


def eventually(check: Callable[[], T], *, timeout: float, interval: float = 0.1, message: str | Callable[[], str],
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call `check` every `interval` seconds until it returns something truthy, and return that.

    After `timeout` seconds, fail with `message` (a callable is called then, to describe the state at the end) and
    the last exception `check` raised of those in `ignoring`: these count as "not yet" (a service restarting), any
    other exception (an assertion inside `check`) fails at once. `check` always runs at least once.

    In a coroutine, run it in a thread (`await asyncio.to_thread(eventually, ...)`) with a check that reads what
    the coroutine's callbacks collect, or that runs a coroutine on the loop (`asyncio.run_coroutine_threadsafe`).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if result := check():
                return result
        except ignoring as e:
            last_error = e
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            suffix = f" (last error: {last_error!r})" if last_error is not None else ""
            raise NeverHappened(f"{text} within {timeout:g} s{suffix}")
        time.sleep(interval)
