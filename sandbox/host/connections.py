"""Connection hygiene: uvicorn's httptools protocol with the limits it lacks.

uvicorn bounds what it can (keep-alive timeout, `limit_concurrency`, the listen
backlog) and the server sets those; httptools has no bound on header size or count and
uvicorn no header, body or write timeout, so this subclass adds them through the
protocol's own hooks (the parser's callbacks and asyncio's protocol methods):

- the request line (414), each header and all of them (431), and the bytes a request's
  head may take while it is still arriving (431: httptools buffers an unfinished header
  whole);
- an idle connection (before its first request, or between requests: uvicorn's
  keep-alive timer, armed at connection time too), a head that takes longer than
  header_timeout_s, a body that pauses longer than body_timeout_s or arrives slower
  than min_body_rate on average (after body_timeout_s of grace), and a client that
  does not read a response for write_timeout_s are closed;
- at most `max_connections` connections (and never so many that fewer than fd_reserve
  descriptors stay free for sandboxes and files): beyond, a 503 and close;
- a request answered before its body was read to the end (refused from its head: a bad
  name, no credentials, a Content-Length over the limit...): the rest of the body is
  read and dropped, at most `discard_bytes` (the largest body limit) after the reply and
  for at most discard_timeout_s, and a close asked for meanwhile (`Connection: close`,
  the host's 413) becomes a lingering one: the reply, then the sending side shut down
  (the client reads the reply and an end of stream), then the close once the body has
  ended, the client has closed or a bound is reached. uvicorn, which drops the rest
  of an answered body on a kept-alive connection with no bound, closes at once
  otherwise: the kernel then answers the body still arriving with a reset, and a
  client that writes its whole body before reading (curl, http.client) loses the
  reply. A request that asked for `100-continue` and got its reply instead may never
  send its body: its connection closes (lingering) after the reply.

Each refusal is logged (at most once a second per reason, with a count) and counted in
sandbox_host_connections_refused_total{reason}.

It also sends a response's head and (first) body in one write (`_HeadHolder`): uvicorn
writes them separately, and uvloop sends each write at once, so every response would
cost two send syscalls and two TCP segments (~6-10 us a request here).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, NoReturn

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("sandbox.host")

_REASONS = {
    414: b"414 URI Too Long",
    431: b"431 Request Header Fields Too Large",
    503: b"503 Service Unavailable",
}


class ConnectionLimits:
    """The limits (from HostConfig) and the refusal counter, shared by connections."""

    def __init__(self, config: Any, count: Any) -> None:
        self.max_header_bytes: int = config.max_header_bytes
        self.max_headers: int = config.max_headers
        self.max_request_line: int = config.max_request_line
        self.header_timeout: float = config.header_timeout_s
        self.body_timeout: float = config.body_timeout_s
        self.min_body_rate: int = config.min_body_rate
        self.write_timeout: float = config.write_timeout_s
        self.discard_timeout: float = config.discard_timeout_s
        self.discard_bytes: int = max(config.max_upload_bytes, config.max_body_bytes)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        by_fds = soft - config.fd_reserve if soft != resource.RLIM_INFINITY else 1 << 30
        self.max_connections: int = max(1, min(config.max_connections, by_fds))
        self._count = count
        self._logged: dict[str, tuple[float, int]] = {}

    def refused(self, reason: str, client: Any) -> None:
        self._count(reason)
        now = time.monotonic()
        last, suppressed = self._logged.get(reason, (0.0, 0))
        if now - last >= 1.0:
            log.warning(
                "connection refused",
                extra={"reason": reason, "client": str(client), "suppressed": suppressed},
            )
            self._logged[reason] = (now, 0)
        else:
            self._logged[reason] = (last, suppressed + 1)


class _HeadHolder:
    """A connection's transport that holds back the first write after `arm()` (a
    response's status line and headers) and sends it with the next write (the body)
    or at `flush()` (the response ended without a body; the connection closes). An
    interim `100 Continue` is never held (`continued` says it was sent). `close()`
    asks `linger` first, which may keep the connection open for a while (and then
    closes it through `transport`). Everything else is the transport's."""

    __slots__ = ("transport", "linger", "continued", "_head", "_armed")

    def __init__(self, transport: asyncio.Transport, linger: Callable[[], bool]) -> None:
        self.transport = transport
        self.linger = linger
        self.continued = False
        self._head: bytes | None = None
        self._armed = False

    def arm(self) -> None:
        self._armed = True
        self.continued = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self.transport.write(head + bytes(data))
        elif self._armed:
            if bytes(data[:13]) == b"HTTP/1.1 100 ":
                self.continued = True
                self.transport.write(data)
            else:
                self._armed = False
                self._head = bytes(data)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        self._armed = False
        head, self._head = self._head, None
        if head is not None:
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        if not self.linger():
            self.transport.close()

    def abort(self) -> None:
        self._head = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _Halt(Exception):
    """Raised in a parser callback to stop parsing: the connection is closed."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ConnectionLimits  # set on a subclass made by `protocol_class`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes of the request head seen so far
        self._head_fields = 0
        self._in_head = False
        self._began_here = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0
        # The request body under way: when it began (None: not yet) and its bytes so far.
        self._body_began: float | None = None
        self._body_bytes = 0
        self._write_timer: asyncio.TimerHandle | None = None
        self._refusal: _Refused | None = None
        self._holder = _HeadHolder(None, self._linger)  # type: ignore[arg-type]  # set below
        # The request the parser is on (self.cycle's): is its body read to the end?
        self._body_done = True
        # Its reply is sent and the rest of its body is being dropped (`_discarded`
        # bytes so far, until `_discard_timer`); `_lingering`: then the connection closes.
        self._discarding = False
        self._lingering = False
        self._discarded = 0
        self._discard_timer: asyncio.TimerHandle | None = None
        self._no_linger = False  # shutting down or closed: a close is a close
        self._halted = False

    # -- connections ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.limits.refused("max_connections", transport.get_extra_info("peername"))
            transport.write(_response(503, "too many connections"))
            transport.close()
            return
        self._holder = _HeadHolder(transport, self._linger)
        super().connection_made(self._holder)  # type: ignore[arg-type]
        # uvicorn arms its keep-alive timer only after a response: a connection that
        # never sends a request would stay open for ever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._no_linger = True
        for timer in (self._head_timer, self._body_timer, self._write_timer, self._discard_timer):
            if timer is not None:
                timer.cancel()
        if self.transport is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the limits: a callback's refusal comes out of
        # the parser as an HttpParserError (the original chained), which uvicorn would
        # answer with a 400.
        self._unset_keepalive_if_required()
        self._began_here = False
        self._refusal = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._halted:
                return
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            if self._discarding:  # a malformed rest of a body already answered
                self._close_now()
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        try:
            if self._in_head:
                if not self._began_here:
                    self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_header_bytes:
                    raise _Refused(431, "header_bytes", "the request's head is too large")
                if self._head_timer is None and not self.transport.is_closing():
                    self._head_timer = self.loop.call_later(
                        self.limits.header_timeout, self._head_timeout
                    )
            elif self.cycle is not None and self.cycle.more_body and self._body_timer is None:
                self._body_at = self.loop.time()
                if self._body_began is None:
                    self._body_began = self._body_at
                self._body_timer = self.loop.call_later(
                    self.limits.body_timeout, self._body_timeout
                )
        except _Refused as refused:
            self._refuse(refused)

    def _refuse(self, refused: _Refused) -> None:
        self.limits.refused(refused.reason, self.client)
        if not self.transport.is_closing():
            self.transport.write(_response(refused.status, refused.message))
            self.transport.close()

    # -- the parser's callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._began_here = True, True
        self._head_bytes = self._head_fields = 0

    def _stop(self, refusal: _Refused) -> None:
        self._refusal = refusal
        raise refusal

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line:
            self._stop(_Refused(414, "request_line", "the request target is too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_fields += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._head_fields > self.limits.max_headers:
            self._stop(_Refused(431, "header_count", "too many header fields"))
        if self._head_bytes > self.limits.max_header_bytes:
            self._stop(_Refused(431, "header_bytes", "the request's head is too large"))

    def on_headers_complete(self) -> None:
        self._holder.arm()
        self._in_head = False
        self._body_done = False
        self._body_began, self._body_bytes = None, 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_at = self.loop.time() if self._body_timer is not None else 0.0
        self._body_bytes += len(body)
        if self._discarding:
            self._discarded += len(body)
            if self._discarded > self.limits.discard_bytes:
                self.limits.refused("discard_bytes", self.client)
                self._close_now()
                self._halt()
        super().on_body(body)

    def on_response_complete(self) -> None:
        self._holder.flush()
        cycle = self.cycle
        if (
            not self._body_done
            and not self._discarding
            and cycle is not None
            and cycle.response_complete
            and not self.transport.is_closing()
        ):
            if self.expect_100_continue and not self._holder.continued:
                self.transport.close()  # the body may never come: lingers (_linger)
            else:
                self._start_discard()  # kept alive: uvicorn reads on and drops the body
        super().on_response_complete()

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body_done = True
        if self._discarding:
            self._discarding = False
            self.cycle.more_body = False  # uvicorn leaves it set on an answered request
            if self._discard_timer is not None:
                self._discard_timer.cancel()
                self._discard_timer = None
            if self._lingering:  # all of it read: nothing left for a reset
                self._close_now()
                self._halt()
        super().on_message_complete()

    def _halt(self) -> NoReturn:
        self._halted = True
        raise _Halt

    # -- the unread rest of a body ------------------------------------------------------

    def _linger(self) -> bool:
        """Called for every close of the connection (`_HeadHolder.close`): True if the
        close waits because the reply is out but the rest of its request's body is
        still to come. Then the sending side is shut down at once (after the reply)
        and the rest is read and dropped until it ends or a bound is reached."""
        cycle = self.cycle
        if (
            self._no_linger
            or self._discarding
            or self._body_done
            or cycle is None
            or not cycle.response_complete
        ):
            return False
        transport = self._holder.transport
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            return False
        self._lingering = True
        self._start_discard()
        return True

    def _start_discard(self) -> None:
        self._discarding = True
        self._discarded = 0
        self._discard_timer = self.loop.call_later(
            self.limits.discard_timeout, self._discard_timeout
        )

    def _discard_timeout(self) -> None:
        self._discard_timer = None
        if self._discarding and not self._holder.transport.is_closing():
            self.limits.refused("discard_timeout", self.client)
            self._close_now()

    def _close_now(self) -> None:
        self._no_linger = True
        self._holder.flush()
        if not self._holder.transport.is_closing():
            self._holder.transport.close()

    def shutdown(self) -> None:
        self._no_linger = True
        if self._discarding:
            self._close_now()
        else:
            super().shutdown()

    # -- timers -------------------------------------------------------------------------

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.limits.refused("header_timeout", self.client)
            self.transport.close()

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.cycle is None or not self.cycle.more_body or self.transport.is_closing():
            return
        now = self.loop.time()
        idle = now - self._body_at
        wait = self.limits.body_timeout - idle
        reason = "body_timeout" if wait <= 0 else ""
        rate = self.limits.min_body_rate
        if rate and not reason and self._body_began is not None:
            # The time allowed so far: the grace, plus what the bytes received earn.
            allowed = self.limits.body_timeout + self._body_bytes / rate
            elapsed = now - self._body_began
            if elapsed > allowed:
                reason = "body_rate"
            wait = min(wait, allowed - elapsed)
        if not reason:
            self._body_timer = self.loop.call_later(max(wait, 0.01), self._body_timeout)
            return
        self.limits.refused(reason, self.client)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_stuck)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()

    def _write_stuck(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            self.limits.refused("write_timeout", self.client)
            self.transport.abort()


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` setting, with `limits`."""
    return type("HostHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def _response(status: int, message: str) -> bytes:
    body = b'{"error":{"type":"ConnectionRefused","message":"' + message.encode("ascii") + b'"}}'
    return (
        b"HTTP/1.1 " + _REASONS[status] + b"\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
