"""The handoff's conversation with a child: quiesce, snapshot, restore, resume.

Each request is :meth:`Child.request` with the ``[handoff] timeout_s``; a child that does
not answer in time, goes away, or answers with an ``error`` field makes the step fail with a
:class:`~supervisor.handoff.errors.HandoffFailed` saying which and why. A state larger than
one line (:data:`supervisor.protocol.MAX_LINE`) travels in chunks: the child's
``snapshot_chunk`` frames are put together by the :class:`Inbox` (only for a request the
supervisor made, and never past ``max_bytes``), a restore is sent as ``restore_chunk``
frames, waiting for the channel to drain between them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from supervisor import protocol
from supervisor.children.process import Child, ChildUnavailable
from supervisor.config import Color
from supervisor.handoff.errors import HandoffFailed
from supervisor.handoff.snapshot import Snapshot
from supervisor.logs import get as get_logger

log = get_logger("handoff")

# What the line of a ``restore`` costs besides its state and schema (type, request_id...).
_RESTORE_OVERHEAD = 256


class Inbox:
    """Chunked snapshots on their way in, for the requests the supervisor made.

    A chunk of a request nobody made (a child sending chunks on its own) is dropped and
    logged; one that breaks the rules (out of order, over the cap, not base64) ends its
    transfer: the request is answered as failed (a ``snapshot`` with an ``error``), and
    what was gathered is let go. So a child can make the daemon hold at most ``max_bytes``
    per request it was asked, and only while it was asked."""

    def __init__(self) -> None:
        self._open: dict[tuple[Color, str], protocol.Reassembly] = {}

    def expect(self, color: Color, request_id: str, max_bytes: int) -> None:
        # The JSON around the state (schema, taken_at) comes in the chunks too.
        self._open[(color, request_id)] = protocol.Reassembly(max_bytes + 64 * 1024)

    def forget(self, color: Color, request_id: str) -> None:
        self._open.pop((color, request_id), None)

    def offer(self, child: Child, msg: dict[str, Any]) -> bool:
        """Take ``msg`` if it is a chunk (True); anything else is not the inbox's."""
        if msg["type"] != "snapshot_chunk":
            return False
        key = (child.color, msg["request_id"])
        assembly = self._open.get(key)
        if assembly is None:
            child.log.debug("unsolicited_chunk", request_id=msg["request_id"])
            return True
        try:
            payload = assembly.add(msg)
        except ValueError as exc:
            self.forget(*key)
            child.resolve(_failed(msg["request_id"], f"chunked snapshot refused: {exc}"))
            return True
        if payload is None:
            return True
        self.forget(*key)
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = None
        if type(body) is not dict or "state" not in body:
            child.resolve(_failed(msg["request_id"], "chunked snapshot is not a JSON object"))
            return True
        reply = {**body, "type": "snapshot", "request_id": msg["request_id"]}
        child.resolve(reply)
        return True


def _failed(request_id: str, why: str) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "request_id": request_id,
        "schema": None,
        "state": None,
        "error": why,
    }


def reads(child: Child) -> list[str] | None:
    """The schemas ``child`` says it can restore from (hello's ``reads``, else its
    ``schema``); None when it said nothing (then any is tried)."""
    hello = child.hello or {}
    announced = hello.get("reads")
    if type(announced) is list and announced and all(type(s) is str for s in announced):
        return list(announced)
    schema = hello.get("schema")
    return [schema] if type(schema) is str else None


async def ask(child: Child, step: str, msg: dict[str, Any], within_s: float) -> dict[str, Any]:
    """One request of a step; its failures as :class:`HandoffFailed`."""
    try:
        reply = await child.request(msg, within_s)
    except TimeoutError:
        raise HandoffFailed(
            step, "timeout", f"{child.color} did not answer {msg['type']} within {within_s:g} s"
        ) from None
    except ChildUnavailable as exc:
        raise HandoffFailed(step, "unavailable", f"{child.color}: {exc}") from None
    if reply.get("error"):
        raise HandoffFailed(
            step, "refused", f"{child.color} refused {msg['type']}: {str(reply['error'])[:500]}"
        )
    return reply


async def quiesce(child: Child, within_s: float) -> None:
    """Ask ``child`` to finish what it has in flight and take no new action; it answers
    ``quiesced`` once it has."""
    await ask(child, "quiesce", {"type": "quiesce"}, within_s)


def resume(child: Child) -> bool:
    """Let ``child`` take actions again (if its role allows); False if it could not be told."""
    return child.send({"type": "resume", "request_id": uuid.uuid4().hex})


async def snapshot(
    child: Child, inbox: Inbox, *, accept: Sequence[str] | None, within_s: float, max_bytes: int
) -> dict[str, Any]:
    """Ask ``child`` for its state (in one of the ``accept`` schemas when given: the
    target's, so that a newer agent migrates down for an older one); the whole reply, put
    together from chunks if it came so."""
    request_id = uuid.uuid4().hex
    msg: dict[str, Any] = {"type": "snapshot_request", "request_id": request_id}
    if accept:
        msg["accept"] = list(accept)
    inbox.expect(child.color, request_id, max_bytes)
    try:
        return await ask(child, "snapshot", msg, within_s)
    finally:
        inbox.forget(child.color, request_id)


async def restore(
    child: Child,
    snap: Snapshot,
    *,
    within_s: float,
    events: list[dict[str, Any]] | None = None,
) -> str:
    """Send ``snap`` to ``child`` (in chunks when it does not fit one line); the digest it
    reports for the state it received. ``events``: what happened since the snapshot (the
    supervisor's journal, when the state comes back after a rollback without its owner)."""
    request_id = uuid.uuid4().hex
    schema = orjson.dumps(snap.schema)
    head: dict[str, Any] = {"type": "restore", "request_id": request_id}
    body: dict[str, Any] = {"schema": orjson.Fragment(schema), "state": orjson.Fragment(snap.data)}
    if events:
        body["events"] = events
    payload = orjson.dumps(body)  # the state is copied, not encoded again (Fragment)
    try:
        async with asyncio.timeout(within_s):
            if len(payload) + _RESTORE_OVERHEAD <= protocol.MAX_LINE:
                reply = await ask(child, "restore", {**head, **body}, within_s)
            else:
                reply = await _restore_in_chunks(child, request_id, payload, within_s)
    except TimeoutError:
        raise HandoffFailed(
            "restore", "timeout", f"{child.color} did not answer restore within {within_s:g} s"
        ) from None
    reported = reply.get("digest")
    return str(reported)


async def _restore_in_chunks(
    child: Child, request_id: str, payload: bytes, within_s: float
) -> dict[str, Any]:
    frames = list(protocol.chunk_frames("restore_chunk", request_id, payload))
    channel = child.channel
    for frame in frames[:-1]:
        if channel is None or not child.send(frame):
            raise HandoffFailed("restore", "unavailable", f"{child.color}'s channel closed")
        await channel.drain()
    # The last frame is the request: its reply (``restored``) carries the same request_id.
    return await ask(child, "restore", frames[-1], within_s)
