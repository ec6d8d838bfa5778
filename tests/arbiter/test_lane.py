"""The fast lane (supervisor/arbiter/lane.py) against a real redis-server: the replies in
order, errors as redis-py's types, a script Redis lost, Redis restarted, stopped, or asking
for a password, and the raw subscription that wakes the reconciler."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from supervisor.arbiter.lane import Lane, _error, subscribe
from tests.redis_server import RedisServer, short_tempdir

pytestmark = pytest.mark.timeout(60)


def lane_of(url: str, **kwargs: object) -> Lane:
    lane = Lane.for_client(Redis.from_url(url, **kwargs))  # type: ignore[arg-type]
    assert lane is not None
    return lane


def test_only_a_plain_client_gets_a_lane() -> None:
    assert Lane.for_client(Redis.from_url("unix:///tmp/x.sock")) is not None
    assert Lane.for_client(Redis.from_url("redis://127.0.0.1:1/3")) is not None
    assert Lane.for_client(Redis.from_url("rediss://127.0.0.1:1")) is None  # TLS: redis-py's
    sentinel = Sentinel([("127.0.0.1", 1)])  # type: ignore[no-untyped-call]
    assert Lane.for_client(sentinel.master_for("m")) is None


async def test_replies_in_order_and_errors_as_redis_py_raises_them(
    redis_server: RedisServer,
) -> None:
    lane = lane_of(redis_server.url)
    try:
        assert await lane.execute("SET", "k", "v") == b"OK"
        replies = await asyncio.gather(*(lane.execute("INCR", "n") for _ in range(50)))
        assert replies == list(range(1, 51))  # pipelined on one connection, in order
        assert await lane.pipeline(["GET", "k"], ["MGET", "k", "none"]) == [b"v", [b"v", None]]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await lane.execute("LPUSH", "k", "x")
        with pytest.raises(NoScriptError):
            await lane.execute("EVALSHA", "0" * 40, 0)
        assert await lane.execute("GET", "k") == b"v"  # an error reply spoils nothing
    finally:
        lane.close()


async def test_a_script_redis_lost_is_sent_again_whole(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    script = client.register_script("return ARGV[1] .. redis.call('GET', KEYS[1])")
    lane = lane_of(redis_server.url)
    try:
        await lane.execute("SET", "k", "v")
        assert await lane.script(script, ["k"], ["x-"]) == b"x-v"  # EVAL: never loaded
        assert await lane.execute("SCRIPT", "EXISTS", script.sha) == [1]
        await lane.execute("SCRIPT", "FLUSH")
        assert await lane.script(script, ["k"], ["y-"]) == b"y-v"
    finally:
        lane.close()
        await client.aclose()


def test_error_replies_are_redis_pys_exceptions() -> None:
    """``LOADING`` is what a Redis restarted from a dump answers while it reads it: a
    ConnectionError that the callers retry, as redis-py raises it (the chaos run found a
    lease renewal that died of it as a plain ResponseError)."""
    loading = _error(ResponseError("LOADING Redis is loading the dataset in memory"))
    assert isinstance(loading, BusyLoadingError)
    assert isinstance(loading, RedisConnectionError)
    assert isinstance(_error(ResponseError("NOSCRIPT No matching script.")), NoScriptError)
    assert isinstance(_error(ResponseError("READONLY You can't write")), ReadOnlyError)
    assert isinstance(_error(ResponseError("WRONGPASS invalid")), AuthenticationError)
    plain = _error(ResponseError("WRONGTYPE Operation against a key"))
    assert type(plain) is ResponseError


async def test_a_restarted_redis_is_reconnected_to(redis_server: RedisServer) -> None:
    lane = lane_of(redis_server.url)
    try:
        await lane.execute("SET", "k", "1")
        redis_server.stop(signal.SIGKILL)
        with pytest.raises(RedisConnectionError):
            await lane.execute("GET", "k")
        redis_server.start()
        assert await lane.execute("GET", "k") is None  # a new connection, an empty Redis
    finally:
        lane.close()


async def test_a_stopped_redis_times_out_and_the_lane_recovers(redis_server: RedisServer) -> None:
    lane = lane_of(redis_server.url, socket_timeout=0.5)
    assert redis_server.proc is not None
    try:
        await lane.execute("SET", "k", "1")
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError):
                await lane.execute("GET", "k")
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        # The late reply to the GET must not be taken for the next command's.
        assert await lane.execute("INCR", "n") == 1
    finally:
        lane.close()


@pytest.fixture
def password_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary is not None
    directory = short_tempdir()
    sock = directory / "r.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(directory),
         "--requirepass", "s3cret", "--logfile", ""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"ready to accept connections" in line.lower():
                break
        yield f"unix://{sock}"
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_password_and_database_are_the_clients(password_redis: str) -> None:
    wrong = lane_of(password_redis, password="nope")
    with pytest.raises(AuthenticationError):
        await wrong.execute("PING")
    lane = lane_of(password_redis + "?db=3", password="s3cret")
    try:
        await lane.execute("SET", "k", "in-3")
        plain = Redis.from_url(password_redis + "?db=3", password="s3cret")
        assert await plain.get("k") == b"in-3"
        await plain.aclose()
    finally:
        lane.close()


async def test_the_subscription_calls_back_and_says_when_it_is_lost(
    redis_server: RedisServer,
) -> None:
    redis_server.cli("CONFIG", "SET", "notify-keyspace-events", "K$g")
    lane = lane_of(redis_server.url)
    seen = asyncio.Event()
    count = 0

    def on_message() -> None:
        nonlocal count
        count += 1
        seen.set()

    conn = await subscribe(
        lane, ["__keyspace@0__:watched", "__keyspace@0__:other"], False, on_message
    )
    redis_server.cli("SET", "unwatched", "x")
    redis_server.cli("SET", "watched", "x")
    async with asyncio.timeout(5):
        await seen.wait()
    assert count == 1
    pattern = await subscribe(lane, ["__keyspace@0__:w*"], True, on_message)
    seen.clear()
    redis_server.cli("DEL", "watched")
    async with asyncio.timeout(5):
        while count < 3:  # once on each connection
            seen.clear()
            await seen.wait()
    redis_server.stop(signal.SIGKILL)
    async with asyncio.timeout(5):
        await conn.lost
        await pattern.lost
    redis_server.start()
