"""A child acts only as itself (DESIGN.md, invariant 10).

A child runs as the daemon's uid, so the kernel alone would let it do what the daemon does.
Three doors are shut here:

- **Redis.** The daemon's own password never reaches a child. Each color gets its own ACL user
  (:class:`ChildAccess`), by default allowed to read the active key and the flags and nothing
  else: it cannot ``SET`` the active key, call a script, or reconfigure Redis. A color's identity
  is the channel it speaks on; the daemon asks Redis for permits on the channel's behalf.
- **The control socket.** Its peer's process ancestry is walked (:func:`lineage`): anything
  that descends from the daemon is a child, a grandchild, or an orphan of one reparented to the
  daemon (it is a child subreaper), and is refused, whatever its uid.
- **The daemon's memory.** :func:`keep_memory_private` makes the daemon non-dumpable, so that a
  same-uid child can read neither ``/proc/<daemon>/environ`` nor its memory, nor ptrace it.

What stays open while the children share the daemon's uid (the files it owns, the embedded
redis-server's memory where ptrace is not restricted): docs/redis.md, "Access".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import secrets
from enum import StrEnum
from typing import Final

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError, ResponseError

from supervisor.arbiter.scripts import Keys
from supervisor.config import Color, Config
from supervisor.errors import EmbeddedRedisError
from supervisor.logs import get as get_logger

log = get_logger("identity")

_PR_SET_DUMPABLE: Final = 4
_libc = ctypes.CDLL(None, use_errno=True)


def keep_memory_private() -> bool:
    """Make this process non-dumpable: ``/proc/<pid>/environ``, ``mem`` and ptrace are then
    closed to processes of the same uid (a child that execs is dumpable again, as it should
    be). Core dumps of the daemon are off from here on. False if the kernel refused."""
    if _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
        return True
    log.warning("memory_not_private", error=os.strerror(ctypes.get_errno()))
    return False


# --- who is on the other end of the control socket --------------------------------------------


class Lineage(StrEnum):
    """How a process is related to the daemon."""

    OWN = "own"  # the daemon itself (a client running inside the daemon's process)
    CHILD = "child"  # a descendant: a child, a grandchild, an orphan reparented to the daemon
    OUTSIDE = "outside"  # not a descendant (the operator's shell, a cron job, another user)
    UNKNOWN = "unknown"  # gone before its ancestry could be read


# Deeper than any real process tree; a longer chain means the walk is being fooled.
_MAX_DEPTH: Final = 4096


def parent_of(pid: int) -> int:
    """The parent pid, field 4 of /proc/PID/stat. Raises OSError when the process is gone."""
    return _stat(pid)[0]


def _stat(pid: int) -> tuple[int, int]:
    """The parent pid and the start time (fields 4 and 22 of /proc/PID/stat). Raises OSError
    when the process is gone."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    try:
        stat = os.read(fd, 4096)
    finally:
        os.close(fd)
    # The command name is in parentheses and may contain anything: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def lineage(pid: int, ancestor: int, ancestor_start: int | None = None) -> Lineage:
    """Whether process ``pid`` descends from ``ancestor``, by its ``ppid`` links.

    A pid of 0 (SO_PEERCRED's answer for a peer outside our pid namespace) is not a
    descendant: a process the daemon starts is always visible in the daemon's namespace. The
    walk stops at pid 1 or 0 (the top of a namespace), unless ``ancestor`` is itself pid 1,
    and at the first process that started before ``ancestor`` (``ancestor_start``, its start
    time as /proc gives it; read when not given): a descendant is born after its ancestor,
    and so are all the processes between them, so what is older is outside and so is
    everything above it. (An operator's shell is usually older than the daemon: its commands
    are told apart in two reads of /proc instead of one per process up to pid 1.)
    An ancestor exiting while we walk relinks the chain: the walk starts over, three times
    at most; a peer that is gone is UNKNOWN (its connection is then refused)."""
    if pid == ancestor:
        return Lineage.OWN
    if pid <= 0:
        return Lineage.OUTSIDE
    if ancestor_start is None:
        try:
            ancestor_start = _stat(ancestor)[1]
        except (OSError, ValueError, IndexError):
            ancestor_start = 0  # unknown: walk the whole chain
    for _attempt in range(3):
        current = pid
        try:
            for _ in range(_MAX_DEPTH):
                parent, started = _stat(current)
                if started < ancestor_start:
                    return Lineage.OUTSIDE
                current = parent
                if current == ancestor:
                    return Lineage.CHILD
                if current <= 1:
                    return Lineage.OUTSIDE
        except (OSError, ValueError, IndexError):
            if current == pid:
                return Lineage.UNKNOWN  # the peer itself is gone
            continue
        return Lineage.UNKNOWN
    return Lineage.UNKNOWN


# --- Redis: one ACL user per color --------------------------------------------------------------

# Pub/sub channels a child may subscribe to: keyspace notifications, so that an agent written
# in the seed's style can wait on the active key instead of polling it. PSUBSCRIBE is checked
# literally against this pattern; SUBSCRIBE to any one key's channel matches it.
KEYSPACE_CHANNELS: Final = "__keyspace@*__:*"

# Commands the permit script (supervisor.arbiter.scripts.PERMIT) writes with. A script runs with
# its caller's ACL, so a child that calls it directly (``child_access = "permit"``) needs them;
# tests/test_identity.py fails when the script starts using one that is not listed here.
PERMIT_SCRIPT_WRITES: Final = ("set", "incr", "hincrby", "hincrbyfloat", "xadd")

_GLOB_SPECIAL: Final = frozenset("*?[]\\")
# How often the colors' users are checked for (two ACL GETUSER): a Redis restarted empty has
# forgotten them, and the seed-style agents cannot read until they are back.
USERS_CHECK_S: Final = 5.0
# How soon a Redis the daemon saw go away is noticed by the users' keeper.
DOWN_POLL_S: Final = 0.1


def glob_literal(text: str) -> str:
    """``text`` as an ACL key pattern that matches only itself."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


def acl_username(namespace: str, color: Color, *, embedded: bool) -> str:
    """``agentsup-blue`` on the embedded Redis; ``agentsup-{ns}-blue`` on a shared one, so
    that two deployments on one Redis do not overwrite each other's users."""
    return f"agentsup-{color.value}" if embedded else f"agentsup-{namespace}-{color.value}"


def acl_rules(
    access: str, keys: Keys, color: Color, password_sha256: str, flags_prefix: str = "flag:"
) -> list[str]:
    """The ``ACL SETUSER`` rules for ``color``'s user (``access`` is read or permit).

    read: the active key, the flags (``flag:*``: ``redis.flags_prefix``) and ``{ns}:flags*``
    read-only; connection commands, PING,
    SELECT, and SUBSCRIBE/PSUBSCRIBE on keyspace channels. permit adds the permit script
    (EVAL, EVALSHA, SCRIPT LOAD), reads of every ``{ns}:*`` key, and writes with the script's
    commands to ``{ns}:permit:*`` and ``{ns}:permits:*``; never to the active key, even when
    it lies under the namespace (``agent:active_version`` with namespace ``agent``).

    Redis checks a script's KEYS as if the script wrote them all, so EVAL and EVALSHA need
    write rights on the active key. They get them in a selector of their own, which allows
    nothing else: each command the script runs is checked again, against the rules above,
    where the active key is read-only. A SET of it, direct or from a script, is refused."""
    ns = glob_literal(keys.namespace)
    allow = ["+@connection", "+select", "+@read"]
    allow += ["+subscribe", "+psubscribe", "+unsubscribe", "+punsubscribe"]
    flags = f"%R~{glob_literal(flags_prefix)}*"
    patterns = [f"%R~{glob_literal(keys.active)}", flags, f"%R~{ns}:flags*"]
    selectors = []
    if access == "permit":
        allow += ["+script|load", *(f"+{command}" for command in PERMIT_SCRIPT_WRITES)]
        patterns += [f"%R~{ns}:*", f"%RW~{ns}:permit:*", f"%RW~{ns}:permits:*"]
        patterns.append(f"%W~{glob_literal(keys.identity(color.value))}")
        selectors.append(f"(+eval +evalsha ~{glob_literal(keys.active)} ~{ns}:*)")
    # Last, so that nothing allowed above brings them back: @dangerous holds CLIENT KILL,
    # CONFIG, KEYS, SORT, FLUSHALL...; the keyless reads would list every key name.
    deny = ["-@dangerous", "-scan", "-randomkey", "-dbsize", "-lolwut"]
    return [
        "reset",  # off, no password, no keys, no channels, no commands
        "on",
        f"#{password_sha256}",
        "resetchannels",
        f"&{KEYSPACE_CHANNELS}",
        *allow,
        *deny,
        *patterns,
        *selectors,
    ]


class ChildAccess:
    """What each color's children get in Redis (``redis.child_access``), and the environment
    that hands it to them: ``AGENTSUP_REDIS_ACCESS`` always, ``AGENTSUP_REDIS_USERNAME`` and
    ``AGENTSUP_REDIS_PASSWORD`` when a user was made for them.

    - ``read`` (default) / ``permit``: an ACL user per color, made at each start with a fresh
      random password. On an external Redis where the daemon may not run ``ACL SETUSER``, the
      children get the URL alone (a warning says so).
    - ``none``: no credentials.
    - ``full``: the daemon's own password (unsafe: a child can then do anything the daemon can).

    Passwords go to Redis as SHA-256 (``#hash``), so they appear in no command line, log,
    ``ACL LIST``, or Redis's memory."""

    def __init__(
        self,
        config: Config,
        keys: Keys,
        *,
        embedded: bool,
        daemon_password: str | None,
    ) -> None:
        self.access = config.redis.child_access
        self.flags_prefix = config.redis.flags_prefix
        self.keys = keys
        self.embedded = embedded
        self.url = config.redis_url()
        # With Redis Sentinel the children get the sentinels and the service name (the SDK
        # follows the master with them), and as the URL the master found at start.
        self.sentinels = config.redis.sentinel_addresses
        self.service_name = config.redis.service_name
        self._master_url: str | None = None
        self._timeout = config.redis.socket_timeout_s
        self._daemon_password = daemon_password
        ns = config.supervisor.namespace
        self.usernames = {c: acl_username(ns, c, embedded=embedded) for c in Color}
        self._passwords = {c: secrets.token_hex(32) for c in Color}
        self.users_made = False

    def rules(self, color: Color) -> list[str]:
        digest = hashlib.sha256(self._passwords[color].encode()).hexdigest()
        return acl_rules(self.access, self.keys, color, digest, self.flags_prefix)

    async def grant(self, redis: Redis) -> None:
        """Make (or remove) the colors' users. Call it after the namespace lease is taken and
        before any child starts: it resets users that a predecessor's children may hold."""
        address = getattr(redis.connection_pool, "master_address", None)
        if self.sentinels and address:
            db = redis.connection_pool.connection_kwargs.get("db", 0) or 0
            self._master_url = f"redis://{_host(address[0])}:{address[1]}/{db}"
        if self.access in ("read", "permit"):
            try:
                for color in Color:
                    await redis.execute_command(  # type: ignore[no-untyped-call]
                        "ACL", "SETUSER", self.usernames[color], *self.rules(color)
                    )
                self.users_made = True
            except ResponseError as exc:
                if self.embedded:
                    raise EmbeddedRedisError(
                        f"could not create the children's users: {exc}"
                    ) from exc
                log.warning(
                    "child_acl_unavailable",
                    error=str(exc),
                    hint="the daemon may not run ACL SETUSER here: the children get the Redis "
                    "URL alone, and only what Redis allows a client without a password",
                )
        else:
            # Users a previous start made are of no use now; their passwords died with it.
            with contextlib.suppress(RedisError):
                await redis.acl_deluser(*self.usernames.values())
        if self.access == "full":
            log.warning(
                "children_unrestricted",
                reason="child_access_full",
                hint="redis.child_access = 'full' hands the daemon's own password to the "
                "children: either can move the active key and forge the other's permits",
            )
        elif not self.embedded and await self._open_without_password():
            log.warning(
                "children_unrestricted",
                reason="no_password",
                url=self.url,
                hint="this Redis answers a client without a password: any child can do what "
                "its default user may (move the active key, forge permits). Give the default "
                "user a password (requirepass) and the daemon an ACL user of its own",
            )

    async def keep(self, redis: Redis, redis_up: asyncio.Event) -> None:
        """Every :data:`USERS_CHECK_S`, put back the users a restarted Redis forgot (``ACL
        SETUSER`` is not saved with the data, nor replicated: a replica Sentinel promoted
        lacks them too, and a restart quicker than the health check goes unseen), with the
        same passwords: the children reconnect as before. At once when Redis comes back after
        the daemon saw it go. Runs until cancelled."""
        while self.users_made:
            await _until_down(redis, redis_up, USERS_CHECK_S)
            await redis_up.wait()
            await self.restore(redis)

    async def restore(self, redis: Redis) -> None:
        """Make the colors' users that Redis does not hold. A user that exists is left alone:
        after a takeover it may be another daemon's."""
        for color in Color:
            name = self.usernames[color]
            try:
                if await redis.acl_getuser(name) is None:
                    await redis.execute_command(  # type: ignore[no-untyped-call]
                        "ACL", "SETUSER", name, *self.rules(color)
                    )
                    log.info("child_acl_restored", user=name)
            except (RedisError, OSError) as exc:
                log.warning("child_acl_not_restored", user=name, error=str(exc))

    async def _open_without_password(self) -> bool:
        """Whether a client with the URL alone, as a child could make one, gets answers."""
        timeout = self._timeout
        sentinel = None
        if self.sentinels and self.service_name:
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                self.sentinels, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            probe = sentinel.master_for(self.service_name)
        else:
            probe = Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            await probe.ping()
        except (RedisError, OSError):
            return False
        finally:
            with contextlib.suppress(RedisError, OSError):
                await probe.aclose()
            if sentinel is not None:
                with contextlib.suppress(RedisError, OSError):
                    await sentinel.aclose()
        return True

    def env(self, color: Color) -> dict[str, str]:
        """The ``AGENTSUP_REDIS_*`` credentials ``color``'s children get (never another's)."""
        env: dict[str, str] = {"AGENTSUP_REDIS_ACCESS": self.access}
        if self.sentinels and self.service_name:
            env["AGENTSUP_REDIS_SENTINELS"] = ",".join(f"{_host(h)}:{p}" for h, p in self.sentinels)
            env["AGENTSUP_REDIS_SERVICE"] = self.service_name
            if self._master_url is not None:  # for agents that read the URL themselves
                env["AGENTSUP_REDIS_URL"] = self._master_url
        if self.users_made:
            env["AGENTSUP_REDIS_USERNAME"] = self.usernames[color]
            env["AGENTSUP_REDIS_PASSWORD"] = self._passwords[color]
        elif self.access == "full" and self._daemon_password:
            env["AGENTSUP_REDIS_PASSWORD"] = self._daemon_password
        return env


async def _until_down(redis: Redis, redis_up: asyncio.Event, period_s: float) -> None:
    """Return after ``period_s``, or within :data:`DOWN_POLL_S` of ``redis_up`` being cleared
    or of the client moving to another master (Sentinel): what comes back, a restarted Redis
    or a promoted replica, lacks the users. There is no event for either: the daemon's flag
    and the client's address are looked at, which costs nothing."""
    master = getattr(redis.connection_pool, "master_address", None)
    for _ in range(max(1, round(period_s / DOWN_POLL_S))):
        if not redis_up.is_set():
            return
        if getattr(redis.connection_pool, "master_address", None) != master:
            return
        await asyncio.sleep(DOWN_POLL_S)


def _host(host: object) -> str:
    """A host as it goes into an address: an IPv6 literal in brackets."""
    text = host.decode() if isinstance(host, bytes) else str(host)
    return f"[{text}]" if ":" in text else text
