"""Live streams: a job's status and metric points, a study's trials, a deployment's revisions, pushed as they land.

    GET /api/v1/training/jobs/{id}/stream     SSE: status, metrics, end
    WS  /api/v1/training/jobs/{id}/ws         the same messages as JSON {"event", "id", "data"}
    GET /api/v1/studies/{id}/stream           SSE: trial, best, study, end
    GET /api/v1/deployments/{name}/stream     SSE: revision, evaluation (never ends)

A stream wakes on the fan-out (infra/fanout.py: the telemetry projectors' inserts, with the rows inserted; the read
models' commits) or every `RECHECK_S`, and reads its sources after its cursor (projections/live_streams.py): job
telemetry from the rows handed over once the stream has caught up with ClickHouse, so a live stream costs no
ClickHouse query per insert. Every message's id is the cursor
after it: `Last-Event-ID` (or `?from=`) resumes with no loss and no repeat. The stream of a finished job or study
replays from the cursor asked, sends `end` and closes. Authorization is checked again every `REAUTH_S` through the
identity cache the request path uses: a revoked token or a removed membership ends the stream. At most
`max_live_streams` streams per process; past it a 503 with Retry-After.

WebSocket authentication: `Authorization: Bearer …` on the upgrade request, or `?token=` (browsers cannot set
headers on a WebSocket; a query string may reach proxy logs, so prefer the header where the client can).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import HTTPConnection

from api.auth import Access, access_of, allow
from api.deps import Services
from api.problems import Problem
from api.schemas.common import problems
from api.schemas.deployments import DeploymentName
from commands.deployments import DeploymentNotFoundError
from commands.studies import StudyNotFoundError
from commands.training import JobNotFoundError
from domain.access import authorize
from projections.live_streams import (MAX_CURSOR_CHARS, CursorError, DeploymentChanges, Stream, StudyProgress,
                                      job_sources)

router = APIRouter(prefix="/api/v1", tags=["live streams"])
RECHECK_S = 2.0  # a stream reads its sources at least this often (a lost or coalesced wake-up costs no more)
MIN_READ_S = 0.25  # and at most this often
REAUTH_S = 2.0  # and checks its credentials again at least this often
PING_S = 15  # SSE comment lines, so proxies keep an idle stream open
RETRY_AFTER_S = 5

FromQuery = Annotated[str | None, Query(alias="from", max_length=MAX_CURSOR_CHARS,
                                        description="resume after this message id (as Last-Event-ID)")]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=MAX_CURSOR_CHARS,
                                           description="resume after this message id (EventSource sends it)")]


def _sse(events: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": f"a text/event-stream of JSON messages: {events}; each message's id resumes "
                                 "the stream (Last-Event-ID or ?from=)",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            **problems(400, 404, 422, 503)}


class Slot:
    """One open stream's place; `release` may be called more than once (every way a stream ends calls it)."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots: StreamSlots | None = slots

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.give_back()


class StreamSlots:
    """How many streams are open in this process, at most `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0
        self._lock = threading.Lock()

    def take(self) -> Slot:
        with self._lock:
            if self.open >= self.limit:
                raise Problem(503, "Service unavailable", f"{self.limit} live streams are open; retry later", None,
                              headers={"Retry-After": str(RETRY_AFTER_S)})
            self.open += 1
        return Slot(self)

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1


def slots(conn: HTTPConnection) -> StreamSlots:
    state = conn.app.state
    if getattr(state, "stream_slots", None) is None:
        state.stream_slots = StreamSlots(state.services.settings.max_live_streams)
    return state.stream_slots


def _services(conn: HTTPConnection) -> Services:
    return conn.app.state.services


def _start(stream: Stream, last_event_id: str | None, from_: str | None) -> None:
    given, field = (last_event_id, "Last-Event-ID") if last_event_id is not None else (from_, "from")
    try:
        stream.start(given)
    except CursorError as e:
        raise Problem(400, "Invalid request", f"{field}: {e}", field) from None


def _still_allowed(conn: HTTPConnection, access: Access, action: str) -> bool:
    """The stream's credentials are still good for its project and action (the identity cache: no store read)."""
    try:
        principal, _, _ = _services(conn).auth.authenticate(conn)
        authorize(principal, access.project, action)
    except Exception:
        return False
    return principal.name == access.principal.name


async def _messages(conn: HTTPConnection, stream: Stream, topics: dict[str, str], finished: Callable[[], bool],
                    access: Access, action: str, slot: Slot) -> AsyncGenerator[tuple[str, Any, str], None]:
    """(event, data, id) until the object has finished (then "end"), the credentials stop working or the caller
    stops iterating. `topics`: fan-out topic -> the key of the source it wakes; a wake-up reads only the sources
    woken, a quiet `RECHECK_S` reads them all. Reads start at most every `MIN_READ_S` (wake-ups in between are
    gathered into the next read), so streams cannot crowd out the inserts that feed them. Releases the stream's
    slot however it ends."""
    try:
        with _services(conn).fanout.subscribe(*topics) as wake:
            checked = time.monotonic()
            due: set[str] | None = None  # the sources to read next; None: all of them
            while True:
                started = time.monotonic()
                pushed = {key: wake.take_pushed(topic) for topic, key in topics.items() if due is None or key in due}
                out = await asyncio.to_thread(stream.read, due, pushed)
                for message in out:
                    yield message
                if out and (more := stream.more(due)):
                    due = more  # a full page may have more behind it; a caught-up source reads no store for it
                    continue
                if finished():
                    if due is None:  # nothing left in any source after the object ended
                        yield "end", {}, stream.cursor()
                        return
                    due = None
                    continue
                if (rest := MIN_READ_S - (time.monotonic() - started)) > 0:
                    await asyncio.sleep(rest)
                fired = wake.take() or await wake.wait(RECHECK_S)
                due = {topics[t] for t in fired if t in topics} or None
                if time.monotonic() - checked >= REAUTH_S:
                    if not _still_allowed(conn, access, action):
                        return
                    checked = time.monotonic()
    finally:
        slot.release()


class _EventStream(EventSourceResponse):
    """An SSE response that gives its slot back and closes its messages however the connection ends (a client
    gone before the first message never starts the generator, whose own `finally` would then never run)."""

    def __init__(self, messages: AsyncGenerator[tuple[str, Any, str], None], slot: Slot) -> None:
        async def events() -> AsyncIterator[ServerSentEvent]:
            async for event, data, cursor in messages:
                yield ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event=event, id=cursor)
        super().__init__(events(), ping=PING_S, headers={"Cache-Control": "no-store"})
        self.messages, self.slot = messages, slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
            with contextlib.suppress(Exception):
                await self.messages.aclose()


async def _open_job(conn: HTTPConnection, job_id: UUID, last_event_id: str | None,
                    from_: str | None) -> tuple[Stream, Callable[[], bool]]:
    s, access = _services(conn), conn.state.access
    if await asyncio.to_thread(s.jobs.get, job_id, project=access.project) is None:
        raise JobNotFoundError(str(job_id))
    sources = job_sources(s.jobs, s.metrics, s.logs, job_id, access.project)
    stream = Stream(sources)
    _start(stream, last_event_id, from_)
    status = sources[0]
    return stream, lambda: status.finished  # type: ignore[attr-defined]


def _job_topics(job_id: UUID) -> dict[str, str]:
    return {"read-model:jobs": "s", f"metrics:{job_id}": "m", f"logs:{job_id}": "l"}


@router.get("/training/jobs/{job_id}/stream", dependencies=[allow("job.read")], responses=_sse(
    "status (the job as GET shows it, on a change of status, attempt or progress), metrics ({points: [{name, "
    "attempt, step, value, ts (ms since the epoch)}]}, each series in step order), logs ({lines: [{attempt, seq, ts, "
    "level, stream, message}]}, in order), end (then the stream closes)"),
    response_class=EventSourceResponse)
async def job_stream(job_id: UUID, request: Request, last_event_id: LastEventId = None,
                     from_: FromQuery = None) -> EventSourceResponse:
    """The job's status changes and new metric points as they land, until it ends."""
    stream, finished = await _open_job(request, job_id, last_event_id, from_)
    slot = slots(request).take()
    return _EventStream(_messages(request, stream, _job_topics(job_id), finished, access_of(request), "job.read",
                                  slot), slot)


@router.websocket("/training/jobs/{job_id}/ws", dependencies=[allow("job.read")])
async def job_socket(websocket: WebSocket, job_id: UUID, from_: FromQuery = None) -> None:
    """The job stream's messages as JSON text frames {"event", "id", "data"}; closes (1000) after "end"."""
    stream, finished = await _open_job(websocket, job_id, None, from_)
    slot = slots(websocket).take()
    messages = _messages(websocket, stream, _job_topics(job_id), finished, websocket.state.access, "job.read", slot)
    pump: asyncio.Task | None = None
    try:
        await websocket.accept()

        async def send_all() -> None:
            async for event, data, cursor in messages:
                await websocket.send_text(json.dumps({"event": event, "id": cursor, "data": data},
                                                     separators=(",", ":")))
            await websocket.close(1000)
        pump = asyncio.create_task(send_all())
        closed = asyncio.create_task(_until_closed(websocket))
        await asyncio.wait({pump, closed}, return_when=asyncio.FIRST_COMPLETED)  # the end, or the client gone
        closed.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        slot.release()
        with contextlib.suppress(Exception):
            await messages.aclose()


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and drop) what the client sends, so a close from its side is noticed."""
    with contextlib.suppress(Exception):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


@router.get("/studies/{study_id}/stream", dependencies=[allow("study.read")], responses=_sse(
    "trial (a trial asked, or its latest state), best (the best trial improved), study (status and counts), end"),
    response_class=EventSourceResponse)
async def study_stream(study_id: UUID, request: Request, last_event_id: LastEventId = None,
                       from_: FromQuery = None) -> EventSourceResponse:
    """The study's trials and best trial as they change, until it ends."""
    s, access = _services(request), access_of(request)
    if await asyncio.to_thread(s.studies.get, study_id, project=access.project) is None:
        raise StudyNotFoundError(str(study_id))
    progress = StudyProgress(s.studies, study_id, access.project)
    stream = Stream([progress])
    _start(stream, last_event_id, from_)
    slot = slots(request).take()
    return _EventStream(_messages(request, stream, {"read-model:studies": "t"}, lambda: progress.finished, access,
                                  "study.read", slot), slot)


@router.get("/deployments/{name}/stream", dependencies=[allow("deployment.read")], responses=_sse(
    "revision (each new revision, as GET …/history shows it), evaluation (the policy's latest evaluation); it "
    "does not end"), response_class=EventSourceResponse)
async def deployment_stream(name: DeploymentName, request: Request, last_event_id: LastEventId = None,
                            from_: FromQuery = None) -> EventSourceResponse:
    """The deployment's revisions (traffic, variants, policy, promotions, rollbacks) and policy evaluations."""
    s, access = _services(request), access_of(request)
    if await asyncio.to_thread(s.deployments.get, name, project=access.project) is None:
        raise DeploymentNotFoundError(name)
    stream = Stream([DeploymentChanges(s.deployments, name, access.project)])
    _start(stream, last_event_id, from_)
    slot = slots(request).take()
    return _EventStream(_messages(request, stream, {"read-model:deployments": "d"}, lambda: False, access,
                                  "deployment.read", slot), slot)
