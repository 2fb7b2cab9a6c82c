"""Who and why, from the request: the authenticated principal (api/auth.py; `anonymous` on public routes),
`X-Request-Id` (or a generated one; echoed on every response) and W3C `traceparent`. Routes that issue commands
take `CommandContextDep`, so every event they record says who asked, within which request and trace."""
from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute

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


_TOKEN = "1-128 characters of letters, digits and ._:@/+=-"
_TOKEN_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,128}$"
# The headers every command route reads, as documented in the OpenAPI description. They are read from the request
# in `command_context` rather than declared as FastAPI `Header` parameters: FastAPI resolves declared parameters on
# every request with machinery that is a large part of a submit's CPU in the API (bench/RESULTS.md).
COMMAND_HEADERS = [
    {"name": REQUEST_ID, "in": "header", "required": False,
     "description": f"correlation id (else a new one); echoed back on every response: {_TOKEN}",
     "schema": {"type": "string", "maxLength": 128, "pattern": _TOKEN_PATTERN}},
    {"name": "traceparent", "in": "header", "required": False,
     "description": "W3C trace context; its trace id is recorded with the events (a malformed one is ignored)",
     "schema": {"type": "string", "maxLength": 256}},
]
IDEMPOTENCY_KEY = "Idempotency-Key"
_IDEMPOTENCY = re.compile(r"^[\x20-\x7e]{1,255}$")
# For routes that take an Idempotency-Key: `openapi_extra=IDEMPOTENT` documents it, `idempotency_key` reads it.
IDEMPOTENT = {"parameters": [
    {"name": IDEMPOTENCY_KEY, "in": "header", "required": False,
     "description": "printable ASCII, 1 to 255 characters: a repeat of the same request answers 200 with the same "
                    "object; a different request under a used key is a 409",
     "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[\x20-\x7e]+$"}}]}


def repeated(model: type) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for an IDEMPOTENT route's repeat: 200 with what the first request created."""
    return {200: {"model": model, "description": f"a repeat under a used {IDEMPOTENCY_KEY}: the same object"}}


def install(app: FastAPI) -> None:
    app.add_middleware(RequestId)


def document_commands(router: APIRouter) -> None:
    """Add COMMAND_HEADERS to the OpenAPI description of every route of `router` that takes `CommandContextDep`.
    Call before the router is included; calling it again changes nothing."""
    for route in router.routes:
        if isinstance(route, APIRoute) and _depends_on(route.dependant, command_context):
            extra = dict(route.openapi_extra or {})
            given = list(extra.get("parameters", []))
            extra["parameters"] = given + [h for h in COMMAND_HEADERS if h not in given]
            route.openapi_extra = extra


def _depends_on(dependant: Any, call: Any) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


async def command_context(request: Request) -> CommandContext:
    """Who and why, from the request's headers (COMMAND_HEADERS). async: no I/O, so FastAPI calls it on the loop
    (no hop to the threadpool)."""
    headers = request.headers
    request_id = headers.get("x-request-id")
    access = getattr(request.state, "access", None)  # set by the route's allow(...) dependency, which runs first
    actor = access.principal.name if access is not None else None
    if request_id is not None and not safe_token(request_id):
        raise Problem(422, "Invalid request", f"{REQUEST_ID}: {_TOKEN}", REQUEST_ID)
    correlation = getattr(request.state, "request_id", None) or request_id or new_correlation_id()
    return CommandContext(actor=actor or "anonymous", correlation_id=correlation,
                          trace_id=trace_id_of(headers.get("traceparent", "")[:256]))


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key (see IDEMPOTENT), None if absent; Problem(422) if it is not 1 to 255
    printable ASCII characters."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not _IDEMPOTENCY.match(key):
        raise Problem(422, "Invalid request", f"{IDEMPOTENCY_KEY}: printable ASCII, 1 to 255 characters",
                      IDEMPOTENCY_KEY)
    return key


CommandContextDep = Annotated[CommandContext, Depends(command_context)]
