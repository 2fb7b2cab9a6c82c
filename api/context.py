"""Who and why, from the request: `X-Trainyard-Actor` (until authentication exists; else `anonymous`),
`X-Request-Id` (or a generated one; echoed on every response) and W3C `traceparent`. Routes that issue commands
take `CommandContextDep`, so every event they record says who asked, within which request and trace."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request

from api.problems import Problem
from commands.context import CommandContext, new_correlation_id, safe_token, trace_id_of

REQUEST_ID = "X-Request-Id"


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_id(request: Request, call_next):  # noqa: ANN001, ANN202
        given = request.headers.get(REQUEST_ID)
        request.state.request_id = safe_token(given) or new_correlation_id()
        response = await call_next(request)
        response.headers[REQUEST_ID] = request.state.request_id
        return response


def command_context(
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
