"""Feature flags (the seed's section 7; docs/flags.md): a typed schema in ``[flags]``, the
seed's ``flag:{name}`` keys in its own encoding, per-color values over the global ones, a
history stream, and every change pushed to both children as ``flags`` in milliseconds.

* :mod:`~supervisor.flags.codec`: the seed's encoding, both ways, judged by the schema;
* :mod:`~supervisor.flags.keys`: where they live in Redis;
* :mod:`~supervisor.flags.book`: the last good values, their changes, the history;
* :mod:`~supervisor.flags.watch`: keyspace notifications as wake-up hints.
"""

from supervisor.flags.book import FlagBook
from supervisor.flags.codec import FlagValueError, decode, encode, parse_cli, seed_decode

__all__ = ["FlagBook", "FlagValueError", "decode", "encode", "parse_cli", "seed_decode"]
