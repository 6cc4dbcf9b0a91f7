"""Slow clients: uvicorn's h11 protocol with the two defences a public server needs.

- A request must arrive whole (headers and body) within ``request_timeout`` seconds of its
  first byte, or of the connection for its first request: a client that trickles its bytes
  (slowloris) or opens a connection and says nothing is closed. Between requests uvicorn's own
  keep-alive timeout closes an idle connection.
- At most ``max_connections`` connections: a new one over the limit closes the connection that
  has waited longest for its request's bytes (never one whose request is whole and being
  answered), so a crowd of slow clients cannot keep ``/health`` or a real client out.

uvicorn has neither: its keep-alive timer only runs between requests, and ``limit_concurrency``
answers 503 to everyone once slow connections fill it.
"""

from __future__ import annotations

import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    request_timeout = 30.0
    max_connections = 1000

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._waiting_since: float | None = None
        self._deadline = None
        self._arm()
        if len(self.connections) > self.max_connections:
            self._evict_slowest()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm()  # a request under way (or the next one): it has its deadline
        else:
            self._disarm()  # whole (or the connection is ending)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._waiting_since = time.monotonic()
            self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._waiting_since = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _evict_slowest(self) -> None:
        waiting = [c for c in self.connections
                   if isinstance(c, GuardedH11Protocol) and c._waiting_since is not None
                   and not c.transport.is_closing()]
        if waiting:
            min(waiting, key=lambda c: c._waiting_since)._too_slow()


def guarded(request_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class to give ``uvicorn.run(http=...)``, with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"request_timeout": request_timeout, "max_connections": max_connections})
