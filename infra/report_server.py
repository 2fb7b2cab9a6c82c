"""The runner reports' transport: NATS request/reply on `trainyard.rpc.runner.report` (queue `command-handlers`).

Nothing is decoded on the event loop: each report goes to the single-thread executor of its job's shard, so reports
for different jobs are handled concurrently and those of one job in order. The handler (commands/reports.py) answers
as soon as it has decided; a report it calls `invalid` is dead-lettered with the reason.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg

from domain.contract import REPORT_SUBJECT, ReportReply, dlq_subject
from infra.health import Stage

log = logging.getLogger("trainyard.reports")
REPORT_QUEUE = "command-handlers"


class ReportHandling(Protocol):
    stage: Stage

    def handle(self, data: bytes, answer: Callable[[ReportReply], None] | None = None) -> ReportReply:
        """Decide on one report's bytes; call `answer` as soon as the reply is known."""


class ReportServer:
    """Serves reports from NATS: decodes nothing on the event loop, dispatches each report to its job's shard."""

    def __init__(self, handler: ReportHandling, shards: int = 4) -> None:
        self.handler = handler
        self.shards = [ThreadPoolExecutor(1, thread_name_prefix=f"reports-{i}") for i in range(shards)]

    def _shard(self, data: bytes) -> ThreadPoolExecutor:
        # The job id is in the first bytes of any well-formed report; anything else lands on a fixed shard.
        start = data.find(b'"job_id"')
        key = data[start:start + 50] if start >= 0 else b""
        return self.shards[zlib.crc32(key) % len(self.shards)]

    async def start(self, nc: Client) -> Any:
        loop = asyncio.get_running_loop()

        async def respond(msg: Msg, reply: ReportReply) -> None:
            if reply.code == "invalid":
                log.warning("malformed runner report dead-lettered: %s", reply.error)
                self.handler.stage.poisoned_one(reply.error or "invalid report")
                await nc.publish(dlq_subject(REPORT_SUBJECT), msg.data,
                                 headers={"Trainyard-Error": (reply.error or "")[:500]})
            if msg.reply:
                await msg.respond(reply.model_dump_json().encode())

        def answer(msg: Msg, reply: ReportReply) -> None:  # on the shard's thread, before the bookkeeping
            with contextlib.suppress(RuntimeError):  # the loop has closed: the runner asks again elsewhere
                asyncio.run_coroutine_threadsafe(respond(msg, reply), loop)

        async def on_report(msg: Msg) -> None:
            loop.run_in_executor(self._shard(msg.data), self.handler.handle, msg.data, functools.partial(answer, msg))

        return await nc.subscribe(REPORT_SUBJECT, queue=REPORT_QUEUE, cb=on_report)

    def close(self) -> None:
        for pool in self.shards:
            pool.shutdown(wait=False, cancel_futures=True)

