"""The CLI's side of the control socket: one request, one response, blocking (a CLI is a
short-lived process; asyncio would buy nothing here)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson

from supervisor.errors import ControlUnreachable, Refused


def request(path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """Send one command; return its result, or raise Refused / ControlUnreachable."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnreachable(
                f"no daemon answers on {path} ({exc.strerror}); is `agentsup run` running?"
            ) from None
        except PermissionError:
            raise ControlUnreachable(
                f"permission denied on {path}: the socket is for root and the daemon's user"
            ) from None
        sock.sendall(orjson.dumps({"cmd": cmd, "args": args or {}}) + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise ControlUnreachable(f"the daemon on {path} did not answer in {timeout:g} s") from None
    except OSError as exc:
        raise ControlUnreachable(f"{path}: {exc}") from None
    finally:
        sock.close()
    if not data:
        raise ControlUnreachable(f"the daemon on {path} closed the connection without answering")
    response = orjson.loads(data)
    if response.get("ok"):
        return response.get("result")
    err = response.get("error") or {}
    raise Refused(str(err.get("code", "error")), str(err.get("message", "refused")))
