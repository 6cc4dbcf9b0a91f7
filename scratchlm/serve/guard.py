"""Slow clients: uvicorn's h11 protocol with the two defences a public server needs.

- A request must arrive at a useful rate: after ``request_timeout`` seconds from its first byte
  (or from the connection, or from the end of the last response, for the next one) it must
  have brought at least ``min_rate`` bytes a second, checked again every ``request_timeout``
  seconds until it is whole. A client that trickles its bytes (slowloris) or says nothing is
  closed; a large body on a slow but honest link goes on.
- At most ``max_connections`` connections: a new one over the limit closes the waiting
  connection that has brought the fewest bytes a second (never one whose request is whole and
  being answered), so a crowd of slow clients cannot keep ``/health`` or a real client out.

uvicorn has neither: its keep-alive timer runs only between requests, and ``limit_concurrency``
answers 503 to everyone once slow connections fill it. A pipelined request read from the buffer
when a response ends (not by ``data_received``) is armed in ``on_response_complete``.
"""

from __future__ import annotations

import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_WAITING = (h11.IDLE, h11.SEND_BODY)  # their side: a request not yet whole


class GuardedH11Protocol(H11Protocol):
    request_timeout = 30.0
    min_rate = 1024.0  # bytes a second a request must average once request_timeout has passed
    max_connections = 1000
    _deadline = None  # the timer of the request being waited for
    _waiting_since: float | None = None
    _received = 0  # bytes of it so far

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            self._evict_slowest()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()
        self._received += len(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may read a pipelined request from the buffer
        self._follow()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """A deadline while the client's request is not whole (or the next one not begun);
        none while it is answered."""
        if self.conn.their_state in _WAITING and not self.transport.is_closing():
            self._arm()
        else:
            self._disarm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._waiting_since, self._received = time.monotonic(), 0
            self._deadline = self.loop.call_later(self.request_timeout, self._check)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._waiting_since = None

    def _rate(self) -> float:
        """Bytes a second of the request waited for (over at least a second: a connection just
        made is not judged by its first instant)."""
        return self._received / max(time.monotonic() - self._waiting_since, 1.0)

    def _check(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._rate() >= self.min_rate:  # slow but steady: another period
            self._deadline = self.loop.call_later(self.request_timeout, self._check)
            return
        self._close()

    def _close(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()

    def _evict_slowest(self) -> None:
        waiting = [c for c in self.connections
                   if isinstance(c, GuardedH11Protocol) and c is not self
                   and c._waiting_since is not None and not c.transport.is_closing()]
        if waiting:
            min(waiting, key=lambda c: c._rate())._close()


def guarded(request_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class to give ``uvicorn.run(http=...)``, with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"request_timeout": request_timeout, "max_connections": max_connections})
