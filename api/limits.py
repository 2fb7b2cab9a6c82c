"""The bounds on what a request may carry, enforced at the edge before anything reaches a command.

* `BodyLimit`: an ASGI middleware capping request bodies (Content-Length checked up front, bytes counted as
  they arrive, so a chunked body cannot slip by): `Settings.max_body_bytes` for every route but the dataset
  upload, which gets `Settings.max_upload_bytes` plus room for the multipart framing, and the code bundle upload
  (`Settings.max_code_bytes` plus the same). Over it: 413 problem+json,
  field "body".
* `SafeText`: text without control characters (Unicode category Cc, NUL included) or lone surrogates (Cs):
  PostgreSQL text/jsonb cannot hold a NUL and UTF-8 cannot hold a surrogate, so either would poison every read
  model that copies it. Used for every string field of a job and for text query filters.
* `check_params(params)`: the shape of a job's `params` (depth, size, key length, finite numbers, safe text),
  raising `ParamsError` whose field names the exact location (`params.hidden_sizes.1`). What each parameter
  may be is domain/frameworks.py's business, checked after this.
"""
from __future__ import annotations

import json
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_json
from domain.contract import Text, unsafe_char
from domain.frameworks import ParamsError

MAX_PARAMS_BYTES = 16 * 1024  # params serialized as JSON
MAX_PARAMS_DEPTH = 4  # params itself is depth 1
MAX_PARAM_KEY_CHARS = 64
MAX_PARAM_TEXT_CHARS = 256
# A code job's params are the script's own free-form JSON: bounded the same way, with more room.
MAX_CODE_PARAMS_BYTES, MAX_CODE_PARAMS_DEPTH, MAX_CODE_PARAM_TEXT_CHARS = 64 * 1024, 10, 4096
MULTIPART_SLACK_BYTES = 64 * 1024  # framing and form fields around an uploaded file
SafeText = Text  # domain/contract.py holds the one text rule


def check_params(params: dict[str, Any], where: str = "params", code: bool = False) -> None:
    """Raise ParamsError (field `where` or "<where>.<path>") unless `params` (or any free-form JSON object of a
    request: a study's search space, fixed params, sampler, pruner) is at most MAX_PARAMS_DEPTH deep, its keys
    are 1..MAX_PARAM_KEY_CHARS characters, its strings at most MAX_PARAM_TEXT_CHARS, all text free of control
    characters, every number finite (ints within 64 bits), and it serializes to MAX_PARAMS_BYTES. `code`: a code
    job's params, with the MAX_CODE_PARAMS_* bounds instead."""
    depth, text, most = ((MAX_CODE_PARAMS_DEPTH, MAX_CODE_PARAM_TEXT_CHARS, MAX_CODE_PARAMS_BYTES) if code
                         else (MAX_PARAMS_DEPTH, MAX_PARAM_TEXT_CHARS, MAX_PARAMS_BYTES))
    _check_value(params, where, 1, depth, text)
    size = len(json.dumps(params, separators=(",", ":")).encode())
    if size > most:
        raise ParamsError(where, f"{size:,} bytes as JSON; at most {most:,}")


def _check_value(value: Any, where: str, depth: int, max_depth: int = MAX_PARAMS_DEPTH,
                 max_text: int = MAX_PARAM_TEXT_CHARS) -> None:
    if isinstance(value, (dict, list)) and depth > max_depth:
        raise ParamsError(where, f"nested too deep: at most {max_depth} levels of objects and lists")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_PARAM_KEY_CHARS:
                raise ParamsError(where, f"keys must be 1 to {MAX_PARAM_KEY_CHARS} characters")
            if reason := unsafe_char(key):
                raise ParamsError(where, f"key: {reason}")
            _check_value(item, f"{where}.{key}", depth + 1, max_depth, max_text)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{where}.{i}", depth + 1, max_depth, max_text)
    elif isinstance(value, str):
        if len(value) > max_text:
            raise ParamsError(where, f"text of {len(value):,} characters; at most {max_text}")
        if reason := unsafe_char(value):
            raise ParamsError(where, reason)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(where, "must be a finite number (NaN and Infinity are not allowed)")
    elif isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise ParamsError(where, "integer out of the 64-bit range")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise ParamsError(where, f"unsupported value of type {type(value).__name__}")


class BodyTooLarge(HTTPException):
    """Raised by BodyLimit's receive once a body is over its limit. An HTTPException (413) so that frameworks
    reading the body pass it on rather than call it a parse error; BodyLimit answers the request either way."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit:,} bytes")


class BodyLimit:
    """ASGI middleware: at most `default` body bytes per request, `per_path[path]` for the paths listed.

    A declared Content-Length over the limit is answered at once, without reading anything. Otherwise the body's
    bytes are counted as the app receives them; past the limit, receive raises BodyTooLarge, whatever the app
    makes of that (an error, a 400 from a wrapped exception) is dropped, and the answer is a 413 problem."""

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int] | None = None) -> None:
        self.app, self.default, self.per_path = app, default, dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)

        async def too_large() -> None:
            await problem_json(413, "Payload too large", f"the request body is over the limit of {limit:,} bytes",
                               scope["path"], "body")(scope, receive, send)

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await problem_json(400, "Invalid request", "Content-Length is not a number", scope["path"], "body")(
                scope, receive, send)
            return
        if declared is not None and int(declared) > limit:
            await too_large()
            return
        received, exceeded, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a body it could not read: the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await too_large()
