"""The HTTP edge both servers share (the API and the inference server): an ASGI middleware that refuses, before any
route runs, what no route should ever see.

* A `Host` that is not one of the server's names (Settings.allowed_hosts): 400, field "Host". A page on another
  site that a victim's browser resolves to 127.0.0.1 (DNS rebinding) carries its own host name, so it is refused.
* A header that must appear once and appears twice (`Host`, `Authorization`, `X-API-Key`, `Content-Type`,
  `Origin`): 400 naming it. Two credentials in one request are ambiguous; the server must not pick one.
* Cross-site request forgery on state-changing methods (POST, PUT, PATCH, DELETE):
  - a body of a "simple request" content type (form, multipart, text/plain), which a browser sends cross-origin
    without asking first: 415, field "Content-Type", except on the routes in `simple_body_routes` (a file upload
    form, an OAuth2 password form);
  - an `Origin` that is not the request's own host, `Origin: null`, or `Sec-Fetch-Site: cross-site|same-site`
    (another port on localhost is the same *site*, not the same origin): 403, field "Origin". This also covers
    the exempt routes and a body-less POST, which no content-type rule can catch. Clients that are not browsers
    send neither header and are not affected.
CORS stays off: nothing here (or anywhere) answers with Access-Control-* headers, so a browser lets no other origin
read an answer or send a non-simple request.

Problems are RFC 9457 problem+json with the same members as api/problems.py's.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from domain.contract import printable

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
SINGLE_HEADERS = {b"host": "Host", b"authorization": "Authorization", b"x-api-key": "X-API-Key",
                  b"content-type": "Content-Type", b"origin": "Origin"}
_TITLES = {400: "Bad request", 403: "Forbidden", 415: "Unsupported media type"}


class EdgeGuard:
    """ASGI middleware; see the module docstring. `allowed_hosts`: lower-case names ("*" any, "*.example.com" its
    subdomains); `simple_body_routes`: (method, path) pairs that may take a form or text body."""

    def __init__(self, app: Any, allowed_hosts: Iterable[str],
                 simple_body_routes: Iterable[tuple[str, str]] = ()) -> None:
        self.app = app
        hosts = {h.lower() for h in allowed_hosts}
        self.any_host = "*" in hosts
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))
        self.hosts = frozenset(h for h in hosts if not h.startswith("*"))
        self.simple_body_routes = frozenset(simple_body_routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, detail, field = refusal
        body = json.dumps({"type": "about:blank", "title": _TITLES[status], "status": status,
                           "detail": printable(detail, 1000), "instance": printable(scope["path"], 300),
                           "field": field}, separators=(",", ":"), ensure_ascii=True).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: dict) -> tuple[int, str, str] | None:
        """(status, detail, field) of why this request is refused, None when it may go on."""
        seen: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in SINGLE_HEADERS:
                if name in seen:
                    return 400, f"the {SINGLE_HEADERS[name]} header appears more than once", SINGLE_HEADERS[name]
                seen[name] = value
        host = seen.get(b"host", b"").decode("latin-1").strip().lower()
        if not self.host_allowed(host):
            return (400, f"this server does not answer to the host {printable(host, 100)!r}; the names it answers "
                    "to are set by TRAINYARD_ALLOWED_HOSTS", "Host")
        if scope["method"] not in STATE_CHANGING:
            return None
        origin = seen.get(b"origin")
        site = dict(scope["headers"]).get(b"sec-fetch-site", b"").lower()
        if site in (b"cross-site", b"same-site") or (origin is not None and not _same_origin(origin, host)):
            return 403, "a state-changing request from another origin is refused", "Origin"
        content_type = seen.get(b"content-type", b"").decode("latin-1").partition(";")[0].strip().lower()
        if content_type in SIMPLE_CONTENT_TYPES and (scope["method"], scope["path"]) not in self.simple_body_routes:
            return (415, f"{content_type} is not accepted here (a browser form could send it from any site); "
                    "send application/json", "Content-Type")
        return None

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        name = host[:host.index("]") + 1] if host.startswith("[") and "]" in host else host.rpartition(":")[0] \
            if host.count(":") == 1 else host
        return bool(name) and (name in self.hosts or any(name.endswith(s) for s in self.suffixes))


def _same_origin(origin: bytes, host: str) -> bool:
    """Whether an Origin header names this request's own host (and port) as the client addressed it."""
    try:
        parts = urlsplit(origin.decode("latin-1").strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host
