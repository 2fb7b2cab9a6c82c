"""The runners the service has heard from, and what each has (table `runners_seen`).

Every runner says what it has (`RunnerCapabilities`: CPUs, memory, GPU count and model, whether it runs code)
on `trainyard.rpc.runner.hello` every `runner_hello_s` (runners/runner.py). The serve process subscribes in a queue
group and upserts one row per runner id; the API reads the rows seen within a window to decide whether a job's
`resources` can ever be met (api/resources.py). Not a lifecycle, so not an aggregate: a row only says when a runner
last spoke, like job_leases says how alive a lease is. Input is bounded like any bus input: a hello that does not
parse, or is over 4 KB, is dropped and counted; rows not heard from for a day are pruned, so runner ids that come
and go (one per process) do not pile up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from domain.contract import RUNNER_HELLO, RunnerCapabilities

log = logging.getLogger("trainyard.runners")
HELLO_QUEUE = "runner-hellos"
MAX_HELLO_BYTES = 4096
PRUNE_AFTER_S = 86400.0
PRUNE_EVERY = 200  # hellos between prunes
HELLO_WAIT_S = 2.0

RUNNERS_DDL = """
CREATE TABLE IF NOT EXISTS runners_seen (
    runner_id text PRIMARY KEY,
    cpus int NOT NULL,
    memory_mb bigint NOT NULL,
    gpus int NOT NULL,
    gpu_model text,
    accepts_code boolean NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
);
"""
_COLUMNS = ("runner_id", "cpus", "memory_mb", "gpus", "gpu_model", "accepts_code")


class RunnerRegistry:
    def __init__(self, pool: ConnectionPool, clock: Any = time.monotonic) -> None:
        self.pool, self.clock = pool, clock
        self.listening_since: float | None = None  # when this process began to hear hellos (None: it does not)
        self.heard = self.dropped = 0

    def saw(self, caps: RunnerCapabilities) -> None:
        row = caps.model_dump()
        # A short wait: with PostgreSQL away each hello would hold a worker thread for the pool's whole timeout
        # (the runner says it again in a few seconds anyway).
        with self.pool.connection(timeout=HELLO_WAIT_S) as conn:
            conn.execute(
                f"INSERT INTO runners_seen ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
                "ON CONFLICT (runner_id) DO UPDATE SET cpus = excluded.cpus, memory_mb = excluded.memory_mb, "
                "gpus = excluded.gpus, gpu_model = excluded.gpu_model, accepts_code = excluded.accepts_code, "
                "seen_at = now()", tuple(row[c] for c in _COLUMNS))
            self.heard += 1
            if self.heard % PRUNE_EVERY == 0:
                conn.execute("DELETE FROM runners_seen WHERE seen_at < now() - make_interval(secs => %s)",
                             (PRUNE_AFTER_S,))

    def seen(self, within_s: float) -> list[dict[str, Any]]:
        """The runners heard from in the last `within_s` seconds, with their capabilities and `seen_at`."""
        with self.pool.connection() as conn:
            cur = conn.execute(f"SELECT {', '.join(_COLUMNS)}, seen_at FROM runners_seen "
                               "WHERE seen_at > now() - make_interval(secs => %s) ORDER BY runner_id", (within_s,))
            return [dict(zip((*_COLUMNS, "seen_at"), row)) for row in cur.fetchall()]

    def listened_for(self) -> float:
        """Seconds this process has been hearing hellos (0 when it does not listen)."""
        return 0.0 if self.listening_since is None else self.clock() - self.listening_since

    def hear(self, data: bytes) -> RunnerCapabilities | None:
        """A hello's capabilities, or None (counted as dropped) when it is too big or does not parse."""
        if len(data) > MAX_HELLO_BYTES:
            self.dropped += 1
            return None
        try:
            caps = RunnerCapabilities.model_validate_json(data)
        except ValidationError:
            self.dropped += 1
            return None
        if not caps.runner_id:
            self.dropped += 1
            return None
        return caps

    async def listen(self, nc: Client) -> Any:
        """Subscribe to the runners' hellos (one serve process of a queue group hears each); the subscription."""

        async def on_hello(msg: Msg) -> None:
            caps = self.hear(msg.data)
            if caps is None:
                return
            try:
                await asyncio.to_thread(self.saw, caps)
            except Exception as e:  # PostgreSQL away: the runner says it again in a few seconds
                log.warning("runner hello from %s not recorded: %s", caps.runner_id, type(e).__name__)

        sub = await nc.subscribe(RUNNER_HELLO, queue=HELLO_QUEUE, cb=on_hello)
        self.listening_since = self.clock()
        return sub
