"""A Redis that comes back without the flags (restarted empty) must not turn a kill switch
back on: the daemon puts every flag key back as it last read it, from memory while it runs and
from state_dir/flags.json across its own restart; the children never see the defaults. A key
deleted on the same server (``redis-cli DEL``, ``flags unset``) stays deleted."""

from __future__ import annotations

import signal

import redis

from tests.flags.test_flags_daemon import FLAGS, SDK_PAIR, _pushed
from tests.harness import DaemonProcess, running_daemon
from tests.redis_server import RedisServer


def _flag(server: RedisServer, key: str) -> str | None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        value: str | None = client.get(key)
        return value
    finally:
        client.close()


async def test_flags_are_put_back_when_redis_comes_back_empty(redis_server: RedisServer) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **SDK_PAIR,
        sections={"flags": FLAGS},
    ) as d:
        await _pushed(d, "blue", accept_escrows=True)
        for name, value in (
            ("accept_escrows", "false"),
            ("game", "dice"),
            ("max_session_bets", "9"),
        ):
            assert (await d.cli("flags", "set", name, value, "--reason", "incident")).rc == 0
        assert (await d.cli("flags", "unset", "max_session_bets")).rc == 0
        await _pushed(d, "green", accept_escrows=False, game="dice", max_session_bets=50)
        since = len(d.logs)
        redis_server.stop(signal.SIGKILL)
        redis_server.start()  # empty: no persistence
        await d.wait_log("flag_put_back", since=since, key="flag:accept_escrows", now="False")
        await d.wait_log("flag_put_back", since=since, key="flag:game", now="dice")
        assert _flag(redis_server, "flag:accept_escrows") == "False"
        assert _flag(redis_server, "flag:max_session_bets") is None  # it was unset: stays so
        history = (await d.cli("flags", "history", "accept_escrows", "--json")).json()["entries"]
        assert history[0]["who"] == "supervisor"
        # The children never heard the defaults: every push since holds the kill switch off.
        pushes = [
            r["line"]
            for r in d.logs[since:]
            if r.get("event") == "child_output" and r.get("line", "").startswith("flags ")
        ]
        assert all('"accept_escrows": false' in line for line in pushes), pushes
        # A delete on the same server is the operator's: it stays deleted.
        since = len(d.logs)
        redis_server.cli("DEL", "flag:game")
        await _pushed(d, "blue", since=since, game="coinflip")
        assert not d.find("flag_put_back", since=since)


async def test_flags_are_put_back_from_state_dir_when_the_daemon_restarted_too(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **SDK_PAIR,
        sections={"flags": FLAGS},
    ) as d:
        assert (await d.cli("flags", "set", "accept_escrows", "false")).rc == 0
        await _pushed(d, "blue", accept_escrows=False)
        await d.stop()
        redis_server.stop(signal.SIGKILL)
        redis_server.start()  # empty, while no daemon watched
        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        put = await again.wait_log("flag_put_back", key="flag:accept_escrows")
        assert (put["was"], put["now"]) == (None, "False")
        # The first push the children get already holds the kill switch off.
        first = await _pushed(again, "blue")
        assert '"accept_escrows": false' in first["line"]
        assert _flag(redis_server, "flag:accept_escrows") == "False"
        await again.stop()
