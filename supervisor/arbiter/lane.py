"""The fast lane: raw connections to Redis for what a flip waits on.

An operator's ``SET`` reaches the children through one keyspace notification, one script call
and one push. On an idle machine almost all of that is waking processes and running cold code,
and redis-py's asyncio client is a lot of cold code per call (its pool, retry, parser, timeout
and callback layers): a ``GET`` after 20 ms of idleness took 523 µs through it and 266 µs
through a bare protocol on the same socket (``bench/lane_rtt.py``). So the scripts of the fence
(flip, adopt, permit, lease) and the keyspace notifications that wake the reconciler go through
this module: an :class:`asyncio.Protocol` feeding hiredis's reader (already installed with
redis-py), one connection for calls, pipelined, and one per subscription.

It speaks to a plain Redis only (a Unix socket or TCP, with a password and a database): for
TLS and Sentinel :meth:`Lane.for_client` answers None and redis-py does the work, as it does for
everything that is not on the flip's clock. Errors are redis-py's own exception types, so the
callers' handling (retries on a lost connection, ``NOSCRIPT``) is the same either way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser  # its error table (redis-py >= 5)
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = Any


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _error(exc: ResponseError) -> RedisError:
    """The exception redis-py raises for this error reply: its own table, so that ``LOADING``
    (a Redis reading its dump) is a ConnectionError the callers retry, ``NOSCRIPT`` a
    NoScriptError, ``READONLY`` a ReadOnlyError, ``WRONGPASS`` an AuthenticationError..."""
    error: RedisError = BaseParser.parse_error(str(exc))  # type: ignore[no-untyped-call]
    return error


def _is_message(reply: Reply) -> bool:
    return isinstance(reply, list) and bool(reply) and reply[0] in (b"message", b"pmessage")


class _Protocol(asyncio.Protocol):
    """Replies in order to the calls waiting for them; on a subscription's connection, the
    messages to ``on_reply``."""

    def __init__(self, on_reply: Callable[[Reply], None] | None = None) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self.on_reply = on_reply
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                if self.on_reply is not None and _is_message(reply):
                    self.on_reply(reply)
                elif self.waiting:
                    waiter = self.waiting.popleft()
                    if not waiter.done():
                        waiter.set_result(reply)
        except hiredis.ProtocolError as exc:  # not Redis on the other end: give up on it
            self._fail(RedisConnectionError(f"protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, *commands: Sequence[str | bytes | int]) -> list[asyncio.Future[Reply]]:
        """Write the commands in one write; a future for each reply."""
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Reply]] = [loop.create_future() for _ in commands]
        if self.transport is None or self.transport.is_closing() or self.lost.done():
            for waiter in waiters:
                waiter.set_exception(RedisConnectionError("connection to Redis lost"))
            return waiters
        self.waiting.extend(waiters)
        self.transport.write(b"".join(_encode(args) for args in commands))
        return waiters


class Lane:
    """One raw connection for calls (connected on first use and again after a loss) and raw
    subscriptions, to the Redis a plain redis-py client points at."""

    def __init__(
        self,
        *,
        path: str | None,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        db: int,
        timeout_s: float,
    ) -> None:
        self.path = path
        self.host, self.port = host, port
        self.username, self.password, self.db = username, password, db
        self.timeout_s = timeout_s
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def for_client(cls, redis: Redis) -> Lane | None:
        """A lane to where ``redis`` connects, or None when redis-py must do it (TLS, Sentinel,
        a credential provider, anything but a plain connection pool)."""
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        if type(pool).__name__ != "ConnectionPool" or kw.get("credential_provider"):
            return None
        if pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        timeout = kw.get("socket_timeout") or 5.0
        return cls(
            path=kw.get("path") if pool.connection_class is UnixDomainSocketConnection else None,
            host=str(kw.get("host", "localhost")),
            port=int(kw.get("port", 6379)),
            username=kw.get("username"),
            password=kw.get("password"),
            db=int(kw.get("db", 0) or 0),
            timeout_s=float(timeout),
        )

    async def open(self, on_reply: Callable[[Reply], None] | None = None) -> _Protocol:
        """A new connection, authenticated and on its database. Raises redis-py's
        ConnectionError, TimeoutError or AuthenticationError."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.path is not None:
                    _, proto = await loop.create_unix_connection(
                        lambda: _Protocol(on_reply), self.path
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(on_reply), self.host, self.port
                    )
                try:
                    if self.password:
                        auth = [self.username, self.password] if self.username else [self.password]
                        await self._checked(proto.send(["AUTH", *auth])[0])
                    if self.db:
                        await self._checked(proto.send(["SELECT", self.db])[0])
                except BaseException:
                    if proto.transport is not None:
                        proto.transport.abort()
                    raise
        except TimeoutError:
            raise RedisTimeoutError(f"no connection to Redis within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return proto

    @staticmethod
    async def _checked(waiter: asyncio.Future[Reply]) -> Reply:
        reply = await waiter
        if isinstance(reply, ResponseError):
            raise _error(reply)
        return reply

    async def _connection(self) -> _Protocol:
        conn = self._conn
        if conn is not None and not conn.lost.done():
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None or self._conn.lost.done():
                self._conn = await self.open()
            return self._conn

    async def execute(self, *args: str | bytes | int) -> Reply:
        """One command and its reply; an error reply raises (redis-py's types). A reply that
        does not come within the timeout closes the connection (the next call opens one)."""
        return (await self.pipeline(args))[0]

    async def pipeline(self, *commands: Sequence[str | bytes | int]) -> list[Reply]:
        """Several commands in one write, their replies in order (not a transaction); the
        first error reply raises."""
        conn = self._conn
        if conn is None or conn.lost.done():
            conn = await self._connection()
        waiters = conn.send(*commands)
        try:
            async with asyncio.timeout(self.timeout_s):
                replies = [await waiter for waiter in waiters]
        except TimeoutError:
            conn._fail(RedisTimeoutError("no reply"))
            raise RedisTimeoutError(f"no reply from Redis within {self.timeout_s:g} s") from None
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise _error(reply)
        return replies

    async def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str]) -> Reply:
        """EVALSHA, and EVAL (which caches it) when Redis does not have the script (restarted,
        or ``SCRIPT FLUSH``), as redis-py's Script does."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            text = script.script
            body = text.encode() if isinstance(text, str) else bytes(text)
            return await self.execute("EVAL", body, len(keys), *keys, *args)

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.abort()
        self._conn = None


async def subscribe(
    lane: Lane, channels: Sequence[str], pattern: bool, on_message: Callable[[], None]
) -> _Protocol:
    """A connection subscribed to ``channels`` (glob patterns with ``pattern``) that calls
    ``on_message()`` for each message, from the event loop's read of the socket: no task in
    between. Returns once Redis confirmed every subscription; ``.lost`` resolves when the
    connection goes."""
    conn = await lane.open(lambda reply: on_message())
    try:
        async with asyncio.timeout(lane.timeout_s):
            verb = "PSUBSCRIBE" if pattern else "SUBSCRIBE"
            for waiter in conn.send(*([verb, channel] for channel in channels)):
                if isinstance(reply := await waiter, ResponseError):
                    raise _error(reply)
    except TimeoutError:
        conn._fail(RedisTimeoutError("no reply"))
        raise RedisTimeoutError("Redis did not confirm the subscription") from None
    except BaseException:
        conn._fail(RedisConnectionError("subscription abandoned"))
        raise
    return conn
