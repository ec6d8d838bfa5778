"""The Lua scripts that decide who may act. Each is one atomic call, idempotent when retried.

Every key a script touches arrives through KEYS (none is built inside a script), so a
deployment whose keys share a hash tag runs unchanged on Redis Cluster.

The race they prevent
---------------------
Blue is active at epoch 7. The operator switches to green: the flip script sets the active key
to ``green`` and the epoch to 8 in one step. Blue has not heard yet and asks for a permit with
``(blue, 7)``: the permit script reads the active key and refuses (``not_active``). A blue
process left over from before a restart asks with ``(green, 7)`` copied from somewhere: refused
(``stale_epoch``). Green asks with ``(green, 8)`` for key ``order-7`` that blue already used:
refused (``duplicate``). Because the check and the ``SET NX`` happen inside one script, there is
no instant at which two colors can both be told yes.
"""

from __future__ import annotations

from typing import Final

# KEYS[1] active key, KEYS[2] epoch, KEYS[3] permit key, KEYS[4] permit statistics hash
# ARGV[1] color, ARGV[2] epoch, ARGV[3] ttl in ms, ARGV[4] token (the same on a retry)
PERMIT: Final = """
local active = redis.call('GET', KEYS[1])
if active ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[4], 'not_active', 1)
  return 'not_active'
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[4], 'stale_epoch', 1)
  return 'stale_epoch'
end
local mine = ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[4]
if redis.call('SET', KEYS[3], mine, 'NX', 'PX', ARGV[3]) then
  redis.call('HINCRBY', KEYS[4], 'ok', 1)
  return 'ok'
end
if redis.call('GET', KEYS[3]) == mine then
  return 'ok'
end
redis.call('HINCRBY', KEYS[4], 'duplicate', 1)
return 'duplicate'
"""

# KEYS[1] active key, KEYS[2] epoch, KEYS[3] flips stream, KEYS[4] last flip hash,
# KEYS[5] rollout hash
# ARGV[1] to ('' keeps the current color: an epoch bump), ARGV[2] epoch floor (the high-water
# mark kept on disk), ARGV[3] flip id (the same on a retry), ARGV[4] reason, ARGV[5] by,
# ARGV[6] at (unix seconds), ARGV[7] expected current color ('' for any; else 'conflict' when
# it differs), ARGV[8] stream max length, ARGV[9] recorded "from" ('' = the current value),
# ARGV[10] rollout fields as a JSON object (a '' value deletes the field)
# Returns {status, epoch, from, to}; status is ok, dup (this flip id already ran), conflict.
FLIP: Final = """
if redis.call('HGET', KEYS[4], 'id') == ARGV[3] then
  local last = redis.call('HMGET', KEYS[4], 'epoch', 'from', 'to')
  return {'dup', last[1], last[2], last[3]}
end
local current = redis.call('GET', KEYS[1]) or ''
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if ARGV[7] ~= '' and current ~= ARGV[7] then
  return {'conflict', string.format('%d', epoch), current, ''}
end
local floor = tonumber(ARGV[2]) or 0
if floor > epoch then epoch = floor end
epoch = string.format('%d', epoch + 1)
local to = ARGV[1]
if to == '' then to = current end
redis.call('SET', KEYS[2], epoch)
if to ~= '' and to ~= current then redis.call('SET', KEYS[1], to) end
local from = current
if ARGV[9] ~= '' then from = ARGV[9] end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'from', from, 'to', to,
           'epoch', epoch, 'reason', ARGV[4], 'by', ARGV[5], 'at', ARGV[6])
redis.call('HSET', KEYS[4], 'id', ARGV[3], 'epoch', epoch, 'from', from, 'to', to)
if ARGV[10] ~= '' then
  for field, value in pairs(cjson.decode(ARGV[10])) do
    if value == '' then redis.call('HDEL', KEYS[5], field)
    else redis.call('HSET', KEYS[5], field, value) end
  end
end
return {'ok', epoch, from, to}
"""

PERMIT_REASONS: Final = ("ok", "not_active", "stale_epoch", "duplicate", "unavailable")


class Keys:
    """The Redis keys of one deployment (contract: see docs/redis.md)."""

    def __init__(self, namespace: str, active_key: str) -> None:
        self.namespace = namespace
        self.active = active_key
        self.epoch = f"{namespace}:epoch"
        self.flips = f"{namespace}:flips"
        self.last_flip = f"{namespace}:flip:last"
        self.rollout = f"{namespace}:rollout"
        self.permit_stats = f"{namespace}:permits:stats"

    def permit(self, key: str) -> str:
        return f"{self.namespace}:permit:{key}"
