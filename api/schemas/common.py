"""What every resource's bodies share: tags, the no-control-characters text rule in words, and the problem+json
error body with the OpenAPI `responses` helper."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from api.limits import MAX_PARAM_KEY_CHARS, MAX_PARAMS_BYTES, MAX_PARAMS_DEPTH, SafeText

NO_CONTROL = "no control characters (NUL included)"


Tag = Annotated[SafeText, Field(min_length=1, max_length=64, description=f"1 to 64 characters, {NO_CONTROL}")]


MAX_TAGS = 20


IdPrefix = Annotated[str | None, Query(
    min_length=8, max_length=32, pattern=r"^[0-9a-f]{8,32}$",
    description="only those whose id starts with these 8 to 32 lowercase hex digits (the id without its hyphens): "
                "how the CLI finds the one a short id names")]


MAX_TIMEOUT_S = 7 * 24 * 3600


# A duration as people write it: seconds ("90", or 90), or a whole number of s, m, h or d ("30s", "5m", "1h", "1d").
DURATION_PATTERN = r"^[0-9]{1,9}[smhd]?$"
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> Any:
    """A duration string -> its seconds; anything else is left to the int validation (and its bounds)."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(DURATION_PATTERN[1:-1], value)
    if match is None:
        raise ValueError("a duration: seconds, or a whole number of s, m, h or d (30s, 5m, 1h, 1d)")
    number = match.group(0).rstrip("smhd")
    return int(number) * _UNIT_S[match.group(0)[len(number):]]


def duration(default_unit_words: str, ge: int, le: int, multiple_of: int | None = None) -> Any:
    """A query parameter holding a duration in seconds between `ge` and `le` (and a multiple of `multiple_of`),
    written as seconds or as 30s, 5m, 1h, 1d. A bad one is a 422 naming the parameter. Its OpenAPI schema says
    both forms: an integer with the bounds, or a string of the pattern (whose value must meet the same bounds)."""
    bounds = {"minimum": ge, "maximum": le, **({"multipleOf": multiple_of} if multiple_of else {})}
    words = f"{default_unit_words}: seconds, or 30s, 5m, 1h, 1d; {ge} to {le} seconds"
    return Annotated[int, BeforeValidator(_seconds),
                     WithJsonSchema({"anyOf": [{"type": "integer", **bounds},
                                               {"type": "string", "pattern": DURATION_PATTERN}]}),
                     Query(ge=ge, le=le, multiple_of=multiple_of, description=words)]


FREE_JSON = (f"at most {MAX_PARAMS_BYTES // 1024} KiB as JSON, {MAX_PARAMS_DEPTH} levels deep, keys 1 to "
             f"{MAX_PARAM_KEY_CHARS} characters, {NO_CONTROL}, finite numbers")


class FieldError(BaseModel):
    field: str
    reason: str


class ProblemPublic(BaseModel):
    """RFC 9457 problem details, served as application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str
    field: str | None = Field(default=None, description="the request field at fault, e.g. dataset.target")
    errors: list[FieldError] | None = None


def keys_match(pattern: str) -> Callable[[dict[str, Any]], None]:
    """`json_schema_extra` for an object whose keys must match `pattern` (the key type's own pattern would land in
    `patternProperties`, which admits other keys instead of refusing them)."""
    def add(schema: dict[str, Any]) -> None:
        schema.setdefault("propertyNames", {})["pattern"] = pattern
    return add


def problems(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for these error statuses, each a problem+json body."""
    return {s: {"model": ProblemPublic, "content": {"application/problem+json": {}}} for s in statuses}


def document_unparsable_bodies(router: APIRouter) -> None:
    """Add the 400 problem+json that a body which does not parse gets (api/problems.py) to every route of `router`
    that takes a body. Call before the router is included; calling it again changes nothing."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.body_field is not None and 400 not in route.responses:
            route.responses[400] = {**problems(400)[400], "description": "the body does not parse"}
