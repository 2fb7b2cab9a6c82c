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
_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> Any:
    """A duration string -> its seconds; anything else is left to the int validation (and its bounds)."""
    if not isinstance(value, str):
        return value
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError("a duration: seconds, or a whole number of s, m, h or d (30s, 5m, 1h, 1d)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _digits(lo: str, hi: str) -> list[str]:
    """Regular expressions for the numbers lo..hi written with as many digits (no leading zeros past lo's)."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [lo[0] + p for p in _digits(lo[1:], hi[1:])]
    rest = len(lo) - 1
    middle = [f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}][0-9]{{{rest}}}"] if int(hi[0]) - int(lo[0]) > 1 else []
    return ([lo[0] + p for p in _digits(lo[1:], "9" * rest)] + middle
            + [hi[0] + p for p in _digits("0" * rest, hi[1:])])


def _numbers(lo: int, hi: int) -> str:
    """A regular expression for the numbers lo..hi (lo >= 1), without leading zeros."""
    parts = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a, b = max(lo, 10 ** (n - 1)), min(hi, 10 ** n - 1)
        parts += _digits(str(a), str(b))
    return "|".join(parts)


def duration_pattern(ge: int, le: int, multiple_of: int | None = None) -> str:
    """The strings with a unit whose seconds lie in ge..le (units whose size is a multiple of `multiple_of`
    only): what a duration parameter's OpenAPI schema admits besides the integer (the API takes more spellings, e.g.
    `120s` for a bucket, and leading zeros)."""
    forms = []
    for unit in "smhd":
        size = _UNIT_S[unit]
        lo, hi = max(1, -(-ge // size)), le // size
        if lo <= hi and (multiple_of is None or size % multiple_of == 0):
            forms.append(f"(?:{_numbers(lo, hi)}){unit}")
    return f"^(?:{'|'.join(forms)})$"


def duration(words: str, ge: int, le: int, multiple_of: int | None = None) -> Any:
    """A query parameter holding a duration in seconds between `ge` and `le` (and a multiple of `multiple_of`),
    written as seconds or as 30s, 5m, 1h, 1d. A bad one is a 422 naming the parameter. Its OpenAPI schema says
    both forms: an integer with the bounds, or a string of duration_pattern."""
    bounds = {"minimum": ge, "maximum": le, **({"multipleOf": multiple_of} if multiple_of else {})}
    return Annotated[int, BeforeValidator(_seconds),
                     WithJsonSchema({"anyOf": [{"type": "integer", **bounds},
                                               {"type": "string", "pattern": duration_pattern(ge, le, multiple_of)}]}),
                     Query(ge=ge, le=le, multiple_of=multiple_of,
                           description=f"{words}: seconds, or 30s, 5m, 1h, 1d; {ge} to {le} seconds")]


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
