"""The seed's encoding, both ways, and the schema's judgement of stored text: what we write
reads back unchanged through the seed's own ``Flags.get``, and nothing the seed would misread
is taken in."""

from __future__ import annotations

import pytest

from supervisor.config import FlagSpec
from supervisor.flags import FlagValueError, decode, encode, parse_cli, seed_decode

GAME = FlagSpec(type="choice", choices=["coinflip", "dice", "crash"], default="coinflip")
CRASH = FlagSpec(type="float", default=2.0, min=1.01)
ESCROWS = FlagSpec(type="bool", default=True)
BETS = FlagSpec(type="int", default=50, min=1)
NOTE = FlagSpec(type="string", default="hello")


@pytest.mark.parametrize(
    ("spec", "value", "raw"),
    [
        (GAME, "dice", "dice"),
        (CRASH, 2.0, "2.0"),
        (CRASH, 3, "3.0"),
        (ESCROWS, True, "True"),
        (ESCROWS, False, "False"),
        (BETS, 50, "50"),
        (NOTE, "hi there", "hi there"),
    ],
)
def test_encode_is_the_seeds_str_and_reads_back(spec: FlagSpec, value: object, raw: str) -> None:
    assert encode(spec, value) == raw  # type: ignore[arg-type]
    assert decode(spec, raw) == value
    # The seed's Flags.get: bools as bools, numbers as floats, the rest as text.
    seed = seed_decode(raw)
    assert seed == value
    assert type(seed) is (float if spec.type in ("int", "float") else type(value))


@pytest.mark.parametrize(
    ("spec", "raw", "why"),
    [
        (ESCROWS, "false", "not True or False"),
        (ESCROWS, "1", "not True or False"),
        (CRASH, "fast", "not a number"),
        (CRASH, "nan", "not a finite number"),
        (CRASH, "1.0", "at least 1.01"),
        (BETS, "2.5", "not an integer"),
        (BETS, "0", "at least 1"),
        (GAME, "roulette", "one of coinflip, dice, crash"),
        (NOTE, "True", "would read"),
        (NOTE, "3.5", "would read"),
    ],
)
def test_text_that_does_not_fit_is_refused_with_why(spec: FlagSpec, raw: str, why: str) -> None:
    with pytest.raises(FlagValueError, match=why):
        decode(spec, raw)


def test_a_whole_float_is_an_int_as_the_seed_writes_it_back() -> None:
    # Flags.set(k, Flags.get(k)) stores "50.0" for an int flag: still 50.
    assert decode(BETS, "50.0") == 50
    assert type(decode(BETS, "50.0")) is int


def test_the_command_line_takes_the_usual_bool_words() -> None:
    assert parse_cli(ESCROWS, "false") is False
    assert parse_cli(ESCROWS, "YES") is True
    with pytest.raises(FlagValueError):
        parse_cli(ESCROWS, "maybe")
    assert parse_cli(CRASH, "3") == 3.0


def test_config_refuses_a_default_that_does_not_fit_naming_the_field() -> None:
    from supervisor.config import parse
    from supervisor.errors import ConfigError

    agents = {
        "blue": {"command": ["x"], "version": "1"},
        "green": {"command": ["x"], "version": "2"},
    }
    bad = {"max_session_bets": {"type": "int", "default": 0, "min": 1}}
    with pytest.raises(ConfigError, match=r"flags\.max_session_bets: default 0 does not fit"):
        parse({"agents": agents, "flags": bad})
    switch = {"k": {"type": "int", "default": 1, "kill_switch": True}}
    with pytest.raises(ConfigError, match=r"flags\.k: .*kill_switch must be a bool"):
        parse({"agents": agents, "flags": switch})
    with pytest.raises(ConfigError, match=r"redis\.flags_prefix"):
        parse({"agents": agents, "redis": {"flags_prefix": "flag*"}})


def test_check_config_exits_78_naming_the_flag() -> None:
    import shutil
    import subprocess
    import sys

    from tests.harness import agent, write_config
    from tests.redis_server import short_tempdir

    directory = short_tempdir("as-f-")
    try:
        flags = {"crash_target": {"type": "float", "default": 0.5, "min": 1.01}}
        path = write_config(
            directory,
            redis_url="unix:///nonexistent.sock",
            blue=agent(version="1"),
            green=agent(version="2"),
            sections={"flags": flags},
        )
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "check-config", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 78
        assert "flags.crash_target: default 0.5 does not fit: must be at least 1.01" in (
            done.stderr + done.stdout
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
