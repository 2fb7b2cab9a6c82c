"""Who and why, from the request: `X-Trainyard-Actor` (until authentication exists; else `anonymous`),
`X-Request-Id` (or a generated one; echoed on every response) and W3C `traceparent`. Routes that issue commands
take `CommandContextDep`, so every event they record says who asked, within which request and trace."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request

from api.problems import Problem
from commands.context import CommandContext, new_correlation_id, safe_token, trace_id_of

REQUEST_ID = "X-Request-Id"


class RequestId:
    """Plain ASGI middleware (no per-request task or stream wrapping, unlike `@app.middleware("http")`): a safe
    `X-Request-Id` is kept, anything else replaced by a new id; it is put in `request.state.request_id` and echoed
    on the response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = safe_token(given.decode("latin-1")) or new_correlation_id()
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def install(app: FastAPI) -> None:
    app.add_middleware(RequestId)


async def command_context(  # async: no I/O, so FastAPI calls it on the loop (no hop to the threadpool)
    request: Request,
    x_trainyard_actor: Annotated[str | None, Header(max_length=128, description="who acts (until authentication)")] = None,
    x_request_id: Annotated[str | None, Header(max_length=128, description="correlation id; echoed back")] = None,
    traceparent: Annotated[str | None, Header(max_length=256, description="W3C trace context")] = None,
) -> CommandContext:
    if x_trainyard_actor is not None and not safe_token(x_trainyard_actor):
        raise Problem(422, "Invalid request", "X-Trainyard-Actor: 1-128 characters of letters, digits and ._:@/+=-",
                      "X-Trainyard-Actor")
    if x_request_id is not None and not safe_token(x_request_id):
        raise Problem(422, "Invalid request", "X-Request-Id: 1-128 characters of letters, digits and ._:@/+=-",
                      "X-Request-Id")
    correlation = getattr(request.state, "request_id", None) or x_request_id or new_correlation_id()
    return CommandContext(actor=x_trainyard_actor or "anonymous", correlation_id=correlation,
                          trace_id=trace_id_of(traceparent))


CommandContextDep = Annotated[CommandContext, Depends(command_context)]
