"""Reading a text/event-stream (Server-Sent Events, as the HTML standard defines them) from the bytes of an
answer: lines, then messages `(event, id, data)`.

Lines end with CRLF, LF or CR; a blank line ends a message; `event:`, `id:` and `data:` fields are kept (several
`data:` lines are joined with newlines), `retry:` and unknown fields are ignored, a line starting with ":" is a
comment (the server's keep-alive ping). A message's id is the last id the stream gave (an id persists until
replaced), what a reconnect sends as `Last-Event-ID`. Both a line and a message are bounded: past the bound the
stream is refused (`StreamTooLarge`), never held in memory whole.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# A job's log page holds up to 1000 lines of up to 16 KiB each, JSON-escaped: a message may be tens of MiB. Past
# this a stream is not one of ours.
MAX_MESSAGE_BYTES = 128 * 2**20
_EOL = re.compile(rb"\r\n|\r|\n")


class StreamTooLarge(ValueError):
    """A line or a message of the stream is over its bound."""


def lines(chunks: Iterable[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[str]:
    """The stream's lines, decoded as UTF-8 (an invalid byte becomes U+FFFD); a last line without its end is
    dropped (the stream was cut in the middle of it)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        pos = 0
        while (m := _EOL.search(buf, pos)) is not None:
            if m.group() == b"\r" and m.end() == len(buf):
                break  # maybe the CR of a CRLF whose LF is in the next chunk
            yield buf[pos:m.start()].decode("utf-8", "replace")
            pos = m.end()
        del buf[:pos]
        if len(buf) > max_bytes:
            raise StreamTooLarge(f"a line of the stream is over {max_bytes} bytes")
    if buf.endswith(b"\r"):
        yield buf[:-1].decode("utf-8", "replace")


def messages(stream_lines: Iterable[str],
             max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[tuple[str, str | None, str]]:
    """(event, id, data) per message; event "message" when the message names none, id None before any."""
    event, data, size, last_id = "", [], 0, None
    for line in stream_lines:
        if not line:
            if data:
                yield event or "message", last_id, "\n".join(data)
            event, data, size = "", [], 0
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            size += len(value) + 1
            if size > max_bytes:
                raise StreamTooLarge(f"a message of the stream is over {max_bytes} bytes")
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value or None
