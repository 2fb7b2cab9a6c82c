"""Who and why: the metadata every stored event carries (design decision 12).

The API builds a `CommandContext` from the request (the authenticated principal, `X-Request-Id`, `traceparent`);
system commands (runner reports, the reconciler) name what caused them. The application attaches it to each
event it saves (`metadata`), the relay lifts it into the public envelope, audit and replay read it back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from uuid import uuid4

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_SAFE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


@dataclass(frozen=True)
class CommandContext:
    actor: str = "anonymous"
    correlation_id: str | None = None
    causation_id: str | None = None
    trace_id: str | None = None

    def as_metadata(self) -> dict[str, str | None]:
        return dict(vars(self))  # its fields (dataclasses.asdict would deep-copy them on every save)

    def caused_by(self, causation_id: str | None) -> CommandContext:
        return replace(self, causation_id=causation_id)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header, or None if absent or malformed (never an error)."""
    m = _TRACEPARENT.match((traceparent or "").strip().lower())
    return m.group(1) if m and m.group(1) != "0" * 32 else None


def safe_token(value: str | None) -> str | None:
    """`value` if it is a short token of safe characters (ids and names from headers), else None."""
    return value if value and _SAFE.match(value) else None


def new_correlation_id() -> str:
    return str(uuid4())


SYSTEM = CommandContext(actor="system")
