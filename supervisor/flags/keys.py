"""Where the flags live in Redis (docs/redis.md, docs/flags.md).

* ``{flags_prefix}{name}`` (``flag:game`` by default): the global value, the seed's key, in
  the seed's encoding. An agent written the seed's way reads only these.
* ``{ns}:flags:color:{color}:{name}``: a value for one color only, over the global one (a
  candidate's new behaviour, an A/B arm). Under ``{ns}:flags*``, which the colors' read-only
  Redis users may already read.
* ``{ns}:flags:log``: a stream, one entry per change (name, old, new, color, who, reason, at).
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.config import Color


@dataclass(frozen=True, slots=True)
class FlagKeys:
    namespace: str
    prefix: str

    def global_(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def color(self, name: str, color: Color) -> str:
        return f"{self.namespace}:flags:color:{color.value}:{name}"

    @property
    def log(self) -> str:
        return f"{self.namespace}:flags:log"

    def patterns(self) -> tuple[str, str]:
        """Glob patterns of every flag key, for PSUBSCRIBE to their keyspace channels (the
        config refuses glob characters in the namespace and the prefix)."""
        return f"{self.prefix}*", f"{self.namespace}:flags:color:*"
