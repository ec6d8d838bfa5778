"""What the handoff tests share: the agents, and waiting for what they print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import PY, DaemonProcess, agent

HANDOFF_AGENT = [PY, str(Path(__file__).resolve().parent.parent / "agents" / "handoff_agent.py")]


def blue(**env: str) -> dict[str, Any]:
    """Blue v1: schema book/1 (positions a list)."""
    return agent(HANDOFF_AGENT, "1.0.0", env={"HA_SCHEMA": "book/1", **env})


def green(**env: str) -> dict[str, Any]:
    """Green v2: schema book/2 (positions by id), migrating from book/1 and back."""
    return agent(HANDOFF_AGENT, "2.0.0", env={"HA_SCHEMA": "book/2", **env})


async def both_speak(d: DaemonProcess) -> dict[str, Any]:
    return await d.wait_status(
        lambda st: all(c["protocol"] and c["state"] == "RUNNING" for c in st["children"].values()),
        timeout=20,
    )


def said(d: DaemonProcess, color: str, prefix: str, since: int = 0) -> list[str]:
    """The lines ``color`` printed that start with ``prefix``."""
    return [
        r["line"]
        for r in d.find("child_output", since, color=color)
        if r.get("line", "").startswith(prefix)
    ]


async def wait_said(
    d: DaemonProcess, color: str, prefix: str, *, since: int = 0, timeout: float = 20.0
) -> str:
    record = await d.wait_log(
        "child_output",
        color=color,
        since=since,
        timeout=timeout,
        where=lambda r: r.get("line", "").startswith(prefix),
    )
    return str(record["line"])


async def opened(d: DaemonProcess, color: str, n: int, *, since: int = 0) -> None:
    """Wait until ``color`` has opened ``n`` positions (after log index ``since``)."""
    await d.wait_log(
        "child_output",
        color=color,
        since=since,
        timeout=20,
        where=lambda r: len(said(d, color, "opened ", since)) >= n,
    )


def fields(line: str) -> dict[str, str]:
    """``restored schema=book/2 positions=3 ...`` as a dict."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)
