"""One JetStream durable pull consumer, with the poison policy every stage shares (design decision 10).

A `Consumer` fetches batches from a durable pull consumer, decodes each message into a pydantic model, hands it to
its owner's handler and settles it:
- handled: ack, and the stage progressed;
- the message cannot be decoded (too big, not the model), or the handler raises `Poison` (or one of the owner's
  `poison` exception types: errors no retry can cure): dead-lettered at once on
  `trainyard.v1.dlq.<subject>` with the reason (infra/messaging.py `dead_letter`), then acked (or terminated);
- the handler raises anything else: nak'd with `retry_delay(deliveries)` until `max_deliveries`, then
  dead-lettered with the last error (`max_deliveries=None`: retried for as long as it takes);
- a dead letter that cannot be published is nak'd, so the message comes back rather than vanishes.
While a handler runs, the message is kept ours with in-progress heartbeats every `in_progress_s`.

Owners with their own batching (the telemetry projectors) or their own order (the runner's priorities) use the
parts: `fetch`, `decode`, `dead_letter`, `retry`, `nak`; `watch` reports the consumer's position and lag to the stage
for /readyz. The handler contract: idempotent (a message may come again after a crash between handling and ack).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from pydantic import BaseModel, TypeAdapter, ValidationError

from domain.contract import printable
from infra.health import Stage
from infra.messaging import dead_letter

log = logging.getLogger("trainyard.consumer")
MORE_S = 0.01  # a fetch's wait for the messages that are there once its first has come
M = TypeVar("M")


class Poison(Exception):
    """Raised by a handler: this message can never be handled; dead-letter it now, with this reason."""


class Consumer(Generic[M]):
    """A durable pull consumer `durable` on `stream`, decoding into `model` (a pydantic model or a TypeAdapter).

    `stage`: where its health shows (a private one if None); `max_bytes`: bigger messages are poison;
    `max_deliveries`/`retry_delay`: the retry budget; `in_progress_s`: heartbeat period while handling;
    `terminate_poison`: term a dead-lettered message instead of acking it; `poison`: handler errors that are
    dead-lettered at once."""

    def __init__(self, js: JetStreamContext, stream: str, durable: str, model: type[BaseModel] | TypeAdapter[Any],
                 stage: Stage | None = None, *, name: str | None = None, max_bytes: int = 1024 * 1024,
                 max_deliveries: int | None = 5, retry_delay: Callable[[int], float] = lambda deliveries: 1.0,
                 in_progress_s: float | None = None, terminate_poison: bool = False,
                 poison: tuple[type[Exception], ...] = ()) -> None:
        self.js, self.stream, self.durable = js, stream, durable
        self._validate = model.validate_json if isinstance(model, TypeAdapter) else model.model_validate_json
        self.name = name or durable
        self.stage = stage or Stage(self.name)
        self.max_bytes, self.max_deliveries, self.retry_delay = max_bytes, max_deliveries, retry_delay
        self.in_progress_s, self.terminate_poison = in_progress_s, terminate_poison
        self.poison: tuple[type[Exception], ...] = (Poison, *poison)
        self._sub: JetStreamContext.PullSubscription | None = None

    # ---- the loop for owners that take one message at a time ------------------------------------------
    async def run(self, handle: Callable[[M], Awaitable[None]], stop: asyncio.Event, batch: int = 1,
                  timeout: float = 0.5, between: Callable[[], Awaitable[None]] | None = None) -> None:
        """Until `stop`: fetch up to `batch` (a lingering pull of n waits for all n or `timeout`: consumers that
        need each message at once fetch 1), handle and settle each in order. `between` runs before every fetch."""
        log.info("%s consuming %s/%s", self.name, self.stream, self.durable)
        while not stop.is_set():
            self.stage.tick()
            if between is not None:
                await between()
            for msg in await self.fetch(batch, timeout):
                try:
                    await self.settle(msg, handle)
                except Exception as e:  # NATS away while acking: the message comes back, the handler is idempotent
                    log.warning("%s: settling a message on %s failed: %s", self.name, msg.subject, printable(e, 200))
                    self.stage.failed(e)

    async def settle(self, msg: Msg, handle: Callable[[M], Awaitable[None]]) -> None:
        try:
            item = self.decode(msg)
            async with self.in_progress(msg):
                await handle(item)
        except self.poison as e:
            await self.dead_letter(msg, str(e) if isinstance(e, Poison) else f"{type(e).__name__}: {e}")
            return
        except Exception as e:
            await self.retry(msg, e)
            return
        await msg.ack()
        self.stage.progressed()

    # ---- the parts -------------------------------------------------------------------------------------
    async def bind(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self.js.pull_subscribe_bind(self.durable, stream=self.stream)
        return self._sub

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages, as soon as there is one: the first (waiting up to `timeout` for it) and what else
        is there by then; none when the server is quiet, or unreachable (after a pause of a second). (nats-py's own
        fetch of n, once it has waited for a first message, waits on for all n until its timeout: at a trickle, every
        message would wait out the timeout.)"""
        sub = await self.bind()
        try:
            msgs = await sub.fetch(1, timeout=timeout)
        except (NatsTimeout, TimeoutError):
            return []
        except Exception as e:
            return await self._fetch_failed(e)
        if batch > 1:
            try:  # what is there now: nats-py asks with no_wait first, and the server says when there is no more
                msgs += await sub.fetch(batch - 1, timeout=MORE_S)
            except (NatsTimeout, TimeoutError):
                pass
            except Exception as e:
                log.debug("%s: fetching more failed: %s", self.name, printable(e, 200))
        return msgs

    async def _fetch_failed(self, e: Exception) -> list[Msg]:
        log.warning("%s fetch failed; retrying: %s", self.name, printable(e, 200))
        self.stage.failed(e)
        await asyncio.sleep(1.0)
        return []

    def decode(self, msg: Msg) -> M:
        """The message as the model; `Poison` when it is too big or does not validate (anyone can publish)."""
        if len(msg.data) > self.max_bytes:
            raise Poison(f"a message of {len(msg.data):,} bytes (at most {self.max_bytes:,})")
        try:
            return self._validate(msg.data)  # type: ignore[return-value]
        except ValidationError as e:
            raise Poison(f"invalid message: {printable(e, 300)}") from e

    async def retry(self, msg: Msg, error: BaseException) -> None:
        """Nak `msg` for another try after a failure, or dead-letter it once its deliveries are spent."""
        deliveries = msg.metadata.num_delivered if msg.metadata else 1
        self.stage.failed(error)
        if self.max_deliveries is None or deliveries < self.max_deliveries:
            log.warning("%s: message on %s failed (%d/%s): %s", self.name, msg.subject, deliveries,
                        self.max_deliveries or "∞", printable(error, 200))
            await self.nak(msg, self.retry_delay(deliveries))
            return
        await self.dead_letter(msg, f"failed {deliveries} times: {type(error).__name__}: {error}")

    async def nak(self, msg: Msg, delay: float = 1.0) -> None:
        with contextlib.suppress(Exception):  # unreachable: ack_wait brings it back all the same
            await msg.nak(delay=delay)

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Keep `msg` on the dead-letter subject with `reason`, then let it go; if that publish fails, nak it."""
        reason = printable(reason, 300)
        try:
            await dead_letter(self.js, msg.subject, msg.data[:self.max_bytes], reason)
        except Exception as e:
            log.warning("%s: could not dead-letter a message on %s: %s", self.name, msg.subject, printable(e, 200))
            self.stage.failed(e)
            await self.nak(msg)
            return
        log.warning("%s: message on %s dead-lettered: %s", self.name, msg.subject, reason)
        self.stage.poisoned_one(reason)
        await (msg.term() if self.terminate_poison else msg.ack())

    @contextlib.asynccontextmanager
    async def in_progress(self, msg: Msg) -> AsyncIterator[None]:
        """Heartbeats (`in_progress`) every `in_progress_s` while the body runs, so a long handling is not
        redelivered to another consumer at ack_wait."""
        if not self.in_progress_s:
            yield
            return

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.in_progress_s)  # type: ignore[arg-type]
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        beating = asyncio.create_task(beat())
        try:
            yield
        finally:
            beating.cancel()

    async def watch(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """The consumer's position (ack floor) and head (position + pending + unacked) into the stage, for /readyz."""
        while not stop.is_set():
            try:
                info = await self.js.consumer_info(self.stream, self.durable)
                position = info.ack_floor.stream_seq if info.ack_floor else 0
                self.stage.observe(position, position + (info.num_pending or 0) + (info.num_ack_pending or 0))
            except Exception as e:
                self.stage.failed(e)
            await asyncio.sleep(every_s)
