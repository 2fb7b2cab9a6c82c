"""The client's SSE reader (api/sse.py, TrainyardClient.follow_stream): the wire format however the bytes are cut,
bounded lines, and a reconnect after a dropped connection or a 503 that resumes from the last id seen."""
from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from api import sse
from api.client import StreamBroken, StreamNotServed, TrainyardClient, TrainyardError

WIRE = (b": ping\r\n\r\nevent: status\r\nid: s=1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
        b"event: metrics\rid: s=1;m=2\rdata:{\"b\":2}\r\r"
        b"retry: 10\nunknown: x\ndata: [3]\n\n"
        b"event: end\nid: s=2\ndata: {}\n\n"
        b"event: cut\ndata: {\"never\"")  # a last message without its blank line: dropped


@pytest.mark.parametrize("size", [1, 2, 7, len(WIRE)])
def test_messages_are_the_same_however_the_bytes_are_cut(size: int) -> None:
    chunks = [WIRE[i:i + size] for i in range(0, len(WIRE), size)]
    assert list(sse.messages(sse.lines(chunks))) == [
        ("status", "s=1", '{"a":\n1}'), ("metrics", "s=1;m=2", '{"b":2}'), ("message", "s=1;m=2", "[3]"),
        ("end", "s=2", "{}")]


def test_a_line_or_a_message_over_its_bound_is_refused() -> None:
    with pytest.raises(sse.StreamTooLarge):
        list(sse.lines([b"data: " + b"x" * 100], max_bytes=64))
    with pytest.raises(sse.StreamTooLarge):
        list(sse.messages([f"data: {'x' * 40}"] * 3, max_bytes=64))


def _sse(*messages: tuple[str, str, object]) -> bytes:
    return b"".join(f"event: {e}\nid: {i}\ndata: {json.dumps(d)}\n\n".encode() for e, i, d in messages)


def _dropping(body: bytes) -> Iterator[bytes]:
    yield body
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def test_a_dropped_stream_and_a_503_are_resumed_from_the_last_id_with_no_loss_or_repeat() -> None:
    seen: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        sse_type = {"content-type": "text/event-stream"}
        if len(seen) == 1:  # two messages, then the connection drops
            return httpx.Response(200, headers=sse_type,
                                  content=_dropping(_sse(("status", "s=1", {"n": 1}), ("logs", "s=1;l=1.4", {"n": 2}))))
        if len(seen) == 2:  # the API restarting
            return httpx.Response(503, json={"title": "Service unavailable", "status": 503, "detail": "starting"})
        return httpx.Response(200, headers=sse_type, content=_sse(("logs", "s=1;l=1.9", {"n": 3}), ("end", "s=2", {})))

    errors: list[TrainyardError] = []
    ty = TrainyardClient("http://api.test", transport=httpx.MockTransport(server), token="t")
    got = list(ty.stream_job("3f2a6c1e-0000-4000-8000-000000000001", patience=10,
                             on_error=lambda e, left: errors.append(e)))
    assert [(e, i, d) for e, i, d in got] == [("status", "s=1", {"n": 1}), ("logs", "s=1;l=1.4", {"n": 2}),
                                              ("logs", "s=1;l=1.9", {"n": 3}), ("end", "s=2", {})]
    assert seen == [None, "s=1;l=1.4", "s=1;l=1.4"]
    assert [e.status for e in errors] == [None, 503]


def test_no_stream_route_a_missing_job_and_a_broken_message_are_raised_at_once() -> None:
    answers = iter([httpx.Response(404, json={"detail": "Not Found"}),
                    httpx.Response(404, json={"title": "Not found", "detail": "no training job x", "field": "job_id"}),
                    httpx.Response(200, headers={"content-type": "text/event-stream"},
                                   content=b"event: status\nid: s=1\ndata: {not json\n\n")])
    ty = TrainyardClient("http://api.test", transport=httpx.MockTransport(lambda r: next(answers)), token="t")
    job = "3f2a6c1e-0000-4000-8000-000000000001"
    with pytest.raises(StreamNotServed):
        list(ty.stream_job(job))
    with pytest.raises(TrainyardError) as missing:
        list(ty.stream_job(job))
    assert missing.value.status == 404 and missing.value.field == "job_id"
    with pytest.raises(StreamBroken, match="not JSON"):
        list(ty.stream_job(job))
