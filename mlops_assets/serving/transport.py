"""uvicorn's HTTP protocol with a response's status line and headers sent in one write with its body.

uvicorn writes an answer in two ``transport.write`` calls, one per ASGI message (the headers, then the body): two
TCP segments, and a client reading the answer is woken twice (it parses the headers, then waits for the body). On a
small machine shared with its clients that second wake-up and the context switches around it cost about as much as
scoring a flight. :class:`JoinedWrites` holds a write until the next one and sends both together; a held write that
nothing follows (e.g. ``100 Continue``, or a streamed response's next chunk still being read) goes out after the
current event-loop step, and before a close.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class JoinedWrites:
    """A transport that forwards everything to ``transport`` but sends each write together with the next one (or
    after the current event-loop step, or before a close, whichever comes first). Writes keep their order."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            joined, self._held = self._held + bytes(data), b""
            self._send(joined)
        elif data:
            self._held = bytes(data)
            self._loop.call_soon(self.release)

    def release(self) -> None:
        """Send the held write, if any."""
        if self._held:
            held, self._held = self._held, b""
            self._send(held)

    def _send(self, data: bytes) -> None:
        if not self._transport.is_closing():  # as a closed transport drops it (an aborted connection)
            self._transport.write(data)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's
        return getattr(self._transport, name)


class JoinedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools when installed, else h11), writing through :class:`JoinedWrites`."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(JoinedWrites(transport, asyncio.get_running_loop()))
