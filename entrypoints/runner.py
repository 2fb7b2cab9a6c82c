"""`trainyard runner`: one runner process (runners/runner.py) until SIGINT/SIGTERM, then it hands its job back."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from entrypoints.bootstrap import build_runner
from infra.messaging import WORK_STREAM, connect, credentials, ensure_streams, wait_for, work_consumers
from infra.settings import Settings

log = logging.getLogger("trainyard.runner")


def _dump_tasks() -> None:
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(file=out)
        log.warning("task %s:\n%s", task.get_name(), out.getvalue())


async def run_runner(settings: Settings) -> None:
    _, nats_url = settings.require_urls()
    creds = credentials(settings)
    nc, js = await connect(nats_url, f"trainyard-runner-{os.getpid()}", creds)
    if creds is None:  # an open bus: whoever starts first creates the streams
        await ensure_streams(js, settings)
    else:  # a runner's NATS user may not administer streams: the service makes them
        await wait_for(js, WORK_STREAM, tuple(d for _, d in work_consumers(settings.runner_accepts == "all",
                                                                            gpu=True)))
    runner = build_runner(settings, nc, js)
    stop = asyncio.Event()
    main = asyncio.create_task(runner.run(stop))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (stop.set(), main.cancel()))
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # `kill -USR1 <pid>`: where each task is waiting
    with contextlib.suppress(asyncio.CancelledError):
        await main
    with contextlib.suppress(Exception):
        await nc.close()
    log.info("runner %s stopped", runner.runner_id)
