"""The HTTP server both processes run (uvicorn over httptools), with the bounds uvicorn does not set itself.

uvicorn's httptools protocol keeps accumulating a request's head for as long as bytes come, and waits for them
forever: its only timer is the keep-alive one, which stops at a request's first byte. h11's
`h11_max_incomplete_event_size` bounds only the h11 protocol, and neither has a header or body timeout. Request
heads are parsed before any ASGI middleware runs, so the bounds live in the protocol (`GuardedHttpTools`):

* head size: request line and headers of one request at most `Settings.http_max_header_bytes` (default 64 KiB);
  past it the server answers 431 problem+json and closes. Counted as bytes arrive, so what is buffered is at most
  the limit plus one socket read (256 KiB).
* head time: a new connection's first request, and any request from its first byte, must complete its head within
  `Settings.http_header_timeout_s` (default 10 s), or the server answers 408 and closes (slow headers, idle
  connections that never send a request).
* body time: a request body must arrive within `Settings.http_body_timeout_s` of the head (default 300 s, room
  for the largest upload on a slow link); past it the connection is closed and the app sees a disconnect.
* connections: at most `Settings.http_max_connections` open; a request over it gets uvicorn's 503.
Idle keep-alive connections close after uvicorn's `timeout_keep_alive` (5 s).
"""
from __future__ import annotations

import json
from asyncio import TimerHandle
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from infra.settings import Settings


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit and head/body deadlines (class attributes, set per server
    by `protocol_for`)."""

    max_head_bytes = 64 * 1024
    header_timeout_s = 10.0
    body_timeout_s = 300.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._deadline: TimerHandle | None = None
        self._in_head, self._head_bytes = False, 0
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)  # the chunk that began the head may hold the end of another request
            if self._head_bytes > self.max_head_bytes:
                self._in_head = False
                self._answer_and_close(431, "Request header fields too large",
                                       f"the request line and headers are over {self.max_head_bytes:,} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self._deadline is None:
            self._arm(self.header_timeout_s, "head")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.parser.should_upgrade():  # the connection becomes another protocol's
            self._disarm()
        else:  # disarmed at once by on_message_complete when there is no body
            self._arm(self.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if what == "head" and (self.cycle is None or self.cycle.response_complete):
            self._answer_and_close(408, "Request timeout",
                                   f"the request's headers did not arrive within {self.header_timeout_s:g} s")
        else:  # a body too slow, or a pipelined head behind an answer still being written: just hang up
            self.transport.close()

    def _answer_and_close(self, status: int, title: str, detail: str) -> None:
        body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail},
                          separators=(",", ":")).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, title.encode(), len(body), body))
        self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedHttpTools]:
    return type("GuardedHttpTools", (GuardedHttpTools,), {
        "max_head_bytes": settings.http_max_header_bytes, "header_timeout_s": settings.http_header_timeout_s,
        "body_timeout_s": settings.http_body_timeout_s})


def server_config(app: Any, settings: Settings, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of a Trainyard HTTP server on `settings.api_host`:`port` (`options`: more of
    uvicorn's own)."""
    return uvicorn.Config(app, host=settings.api_host, port=port, http=protocol_for(settings),
                          limit_concurrency=settings.http_max_connections,
                          h11_max_incomplete_event_size=settings.http_max_header_bytes, lifespan="off", **options)
