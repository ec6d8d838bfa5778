"""The supervisor's end of a child's channel: JSON lines over an inherited socketpair.

This is the hot path. Bytes arrive in chunks (``data_received``); they are split on newlines
with ``bytes.split`` (C speed), each line parsed with orjson and checked by
:func:`supervisor.protocol.check`, and good messages handed to ``on_message`` synchronously.
Anything wrong with a line (not JSON, not UTF-8, too long, a bad field, an absurd number) is
counted, logged once per burst, answered with an ``error`` line, and the channel goes on: one
bad line never costs an agent its connection.

The same holds for a good line that the supervisor fails to handle: an exception out of
``on_message`` (a pipeline handler, an evaluator, a metric) is caught here, per line, and
counted as kind ``handler``. Left to escape, it would leave ``data_received`` and asyncio would
close the transport: that color's later events would be lost without a word while its status
still said RUNNING. Catching costs nothing while nothing is raised (zero-cost ``try``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

from supervisor import protocol
from supervisor.logs import BurstLog

_DUMPS_OPTS = orjson.OPT_APPEND_NEWLINE
# A child that stops reading its socket must not make the supervisor buffer without bound.
MAX_WRITE_BUFFER = 8 << 20


class ChannelProtocol(asyncio.Protocol):
    """One child's channel. ``on_message(msg)`` gets every valid message; ``on_error(kind,
    detail)`` every bad line (after counting); ``on_closed()`` once when the socket closes."""

    def __init__(
        self,
        on_message: Callable[[dict[str, Any]], None],
        on_error: Callable[[str, str], None],
        on_closed: Callable[[], None],
        *,
        max_line: int = protocol.MAX_LINE,
    ) -> None:
        self._on_message = on_message
        self._on_error = on_error
        self._on_closed = on_closed
        self._max_line = max_line
        self._buf = b""
        self._discarding = False  # inside an oversized line: drop bytes up to the next newline
        self._transport: asyncio.Transport | None = None
        self._burst = BurstLog()
        self._writable = asyncio.Event()  # asyncio's flow control: set while below high water
        self._writable.set()
        self.lines = 0
        self.errors = 0

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        parts = data.split(b"\n")
        rest = parts.pop()
        handle = self._handle_line
        for line in parts:
            if self._discarding:
                self._discarding = False  # the tail of an oversized line ends here
                continue
            if len(line) > self._max_line:
                self._error(protocol.E_OVERSIZE, f"{len(line)} bytes")
                continue
            handle(line)
        if self._discarding:
            self._buf = b""
        elif len(rest) > self._max_line:
            self._error(protocol.E_OVERSIZE, f"over {len(rest)} bytes without a newline")
            self._discarding = True
            self._buf = b""
        else:
            self._buf = rest

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._writable.set()  # nothing to wait for any more: the next send says False
        self._on_closed()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        """Wait until what was sent has mostly reached the child (the transport's buffer is
        below its low-water mark again). A long run of sends (a state restored in chunks)
        calls it between sends, so that it never reaches :data:`MAX_WRITE_BUFFER`."""
        await self._writable.wait()

    # lines ------------------------------------------------------------------------------
    def _handle_line(self, line: bytes) -> None:
        self.lines += 1
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if not line.strip():
                return  # a blank line is not worth an error
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                self._error(protocol.E_UTF8, repr(line[:80]))
            else:
                # orjson refuses a number too large for a double (1e999) rather than make it inf.
                infinite = "infinity" in exc.msg
                self._error(protocol.E_RANGE if infinite else protocol.E_JSON, repr(line[:80]))
            return
        kind = protocol.check(msg)
        if kind is not None:
            self._error(kind, repr(line[:120]))
            return
        try:
            self._on_message(msg)
        except Exception as exc:  # one event's failure must not end the channel
            self._error(protocol.E_HANDLER, _describe_failure(msg, exc))

    def _error(self, kind: str, detail: str) -> None:
        self.errors += 1
        self._on_error(kind, detail)
        # Answer the child, but no more often than we log: garbage must not echo at line rate.
        if self._burst.should_log(time.monotonic()) is not None:
            self.send({"type": "error", "message": protocol.describe(kind), "kind": kind})

    # writing ----------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> bool:
        """Write one message; False if the channel is closed (the child is told nothing)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            # The child stopped reading: cut it off rather than grow without bound. Its SDK
            # takes a closed channel as the loss of its right to act, which is the safe side.
            transport.abort()
            return False
        transport.write(orjson.dumps(msg, option=_DUMPS_OPTS))
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _describe_failure(msg: dict[str, Any], exc: Exception) -> str:
    """``outcome: OverflowError: intermediate overflow in fsum (pnl.py:115 in _recompute)``: what
    failed and where, for a log line (the traceback itself would be one per event)."""
    tb = exc.__traceback__
    where = ""
    if tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        where = f" ({os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name})"
    return f"{msg.get('type')}: {type(exc).__name__}: {str(exc)[:200]}{where}"
