"""The Lua scripts that decide who may act. Each is one atomic call, idempotent when retried.

Every key a script touches arrives through KEYS (none is built inside a script), so a
deployment whose keys share a hash tag runs unchanged on Redis Cluster.

The races they prevent
----------------------
Blue is active at epoch 7. The operator switches to green: the flip script sets the active key
to ``green``, the epoch to 8 and the epoch's owner to ``green`` in one step. Blue has not heard
yet and asks for a permit with ``(blue, 7)``: the permit script reads the active key and
refuses (``not_active``). A blue process left over from before a restart asks with
``(green, 7)`` copied from somewhere: refused (``stale_epoch``). Green asks with ``(green, 8)``
for key ``order-7`` that blue already used: refused (``duplicate``). Because the check and the
``SET NX`` happen inside one script, there is no instant at which two colors can both be told
yes.

An operator's ``redis-cli SET agent:active_version green`` does not go through the flip script:
the active key then names green while the epoch still belongs to blue. The permit script wants
both to agree, so from that instant *nobody* may act (blue is not active, green does not own
the epoch) until the daemon adopts the change with :data:`ADOPT`, which bumps the epoch and
hands it to green in the same call. Fail closed, for about a millisecond.

Redis going back in time (restored from an old dump, a failover to a lagging replica, a
flush) would forget executed keys. Every grant increments ``{ns}:permits:seq`` and the
supervisor passes the highest sequence number it has seen with each permit it asks for: a
Redis whose counter is behind it answers ``regressed`` (the supervisor refuses the permit,
puts its own journal of executed keys back, then its own truth at a higher epoch).
"""

from __future__ import annotations

from typing import Final

# KEYS[1] active key, KEYS[2] epoch, KEYS[3] epoch owner, KEYS[4] permit key,
# KEYS[5] permit statistics hash, KEYS[6] grant sequence, KEYS[7] grant log (stream),
# KEYS[8] the identity key of ARGV[1] ({ns}:identity:{color}: only that color's ACL user, and
# the daemon, may write it; nothing is ever stored there), KEYS[9] (optional) the canary's
# allocation hash {ns}:alloc
# ARGV[1] color, ARGV[2] epoch, ARGV[3] ttl in ms, ARGV[4] token (the same on a retry),
# ARGV[5] the lowest grant sequence the caller accepts ('0': any), ARGV[6] the idempotency key
# (for the log), ARGV[7] the grant log's max length, ARGV[8] (optional) the amount at stake
# Returns {reason, seq}: reason is ok, not_active, stale_epoch, duplicate, regressed,
# amount_required or over_allocation; seq the grant's sequence number (for ok) or the counter
# as it stands.
#
# The canary (docs/canary.md). The allocation hash is in force only while its ``mode`` is
# ``canary`` and its ``epoch`` is the current epoch: the flip that starts a canary, changes its
# step, aborts or promotes it writes the hash and bumps the epoch in one call, and any other
# change of who acts (an operator's SET adopted, a flip by an older daemon) bumps the epoch
# without it, which ends the canary in the fence at once (fail closed: the candidate is no
# longer let act). In force, both colors must say the amount they stake (else
# ``amount_required``); the stable color, the one the active key names, is never refused for
# its share; the candidate is granted only while its stake in the step, this one included,
# stays within ``allocation + allowance`` (fractions) of both colors' stakes in the step, plus
# ``start`` (money: what lets it start before stable has staked), else ``over_allocation``.
# An A/B test (``mode`` ``ab``, docs/ab.md) is the same fence for both arms: the color the
# active key names (arm A) is held to ``1 - allocation`` as the candidate (arm B) is held to
# ``allocation``; an arm at or under its share before this stake is granted it all the same
# (else two arms whose stakes are large against the test's total would refuse each other
# for ever: the one behind always moves, and overshoots by one stake at most). Both checks
# come after the retry check, so a retried grant answers ok and is not counted twice, and
# before the key is written, so a refused permit burns no key.
PERMIT: Final = """
local seq = tonumber(redis.call('GET', KEYS[6]) or '0') or 0
if seq < (tonumber(ARGV[5]) or 0) then
  redis.call('HINCRBY', KEYS[5], 'regressed', 1)
  return {'regressed', seq}
end
-- Who is asking: a child calling this itself (direct permits) may only ask as its own color.
local ns = string.sub(KEYS[2], 1, string.len(KEYS[2]) - 6)
if KEYS[8] ~= ns .. ':identity:' .. ARGV[1] or not redis.acl_check_cmd('SET', KEYS[8], '1') then
  redis.call('HINCRBY', KEYS[5], 'not_active', 1)
  return {'not_active', seq}
end
local active, owner = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[3])
local alloc = nil
if KEYS[9] == ns .. ':alloc' then
  alloc = redis.call('HMGET', KEYS[9], 'mode', 'epoch', 'candidate', 'allocation', 'allowance',
                     'start')
  if (alloc[1] ~= 'canary' and alloc[1] ~= 'ab') or alloc[2] ~= redis.call('GET', KEYS[2])
     or alloc[3] == active then
    alloc = nil
  end
end
local candidate = alloc ~= nil and alloc[3] == ARGV[1] and active == owner
if not candidate and (active ~= ARGV[1] or owner ~= ARGV[1]) then
  redis.call('HINCRBY', KEYS[5], 'not_active', 1)
  return {'not_active', seq}
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[5], 'stale_epoch', 1)
  return {'stale_epoch', seq}
end
local mine = ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[4]
local amount = nil
if alloc ~= nil then
  local held = redis.call('GET', KEYS[4])
  if held == mine then return {'ok', seq} end
  if held then
    redis.call('HINCRBY', KEYS[5], 'duplicate', 1)
    return {'duplicate', seq}
  end
  amount = tonumber(ARGV[8] or '')
  if amount == nil or amount ~= amount or amount <= 0 or amount >= 1e15 then
    redis.call('HINCRBY', KEYS[5], 'amount_required', 1)
    return {'amount_required', seq}
  end
  if candidate or alloc[1] == 'ab' then
    local other = 'blue'
    if ARGV[1] == 'blue' then other = 'green' end
    local stakes = redis.call('HMGET', KEYS[9], 'stake_' .. ARGV[1], 'stake_' .. other)
    local before = tonumber(stakes[1] or '0') or 0
    local theirs = tonumber(stakes[2] or '0') or 0
    local taken = before + amount
    local total = taken + theirs
    local nominal = tonumber(alloc[4] or '0') or 0
    if not candidate then nominal = 1 - nominal end
    local share = nominal + (tonumber(alloc[5] or '0') or 0)
    local behind = alloc[1] == 'ab' and before <= nominal * (before + theirs)
    if not behind and taken > share * total + (tonumber(alloc[6] or '0') or 0) + 1e-9 * total then
      redis.call('HINCRBY', KEYS[5], 'over_allocation', 1)
      return {'over_allocation', seq}
    end
  end
end
if redis.call('SET', KEYS[4], mine, 'NX', 'PX', ARGV[3]) then
  seq = redis.call('INCR', KEYS[6])
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[7], '*', 'seq', seq, 'key', ARGV[6],
             'color', ARGV[1], 'epoch', ARGV[2], 'ttl', ARGV[3])
  redis.call('HINCRBY', KEYS[5], 'ok', 1)
  if amount ~= nil then
    redis.call('HINCRBYFLOAT', KEYS[9], 'stake_' .. ARGV[1], ARGV[8])
    redis.call('HINCRBY', KEYS[9], 'n_' .. ARGV[1], 1)
  end
  return {'ok', seq}
end
if redis.call('GET', KEYS[4]) == mine then
  return {'ok', seq}
end
redis.call('HINCRBY', KEYS[5], 'duplicate', 1)
return {'duplicate', seq}
"""

# KEYS[1] active key, KEYS[2] epoch, KEYS[3] epoch owner, KEYS[4] flips stream,
# KEYS[5] last flip hash, KEYS[6] rollout hash, KEYS[7] lease, KEYS[8] (optional) the canary's
# allocation hash
# ARGV[1] to ('' keeps the current color: an epoch bump), ARGV[2] epoch floor, ARGV[3] flip id
# (the same on a retry), ARGV[4] reason, ARGV[5] by, ARGV[6] at (unix seconds), ARGV[7]
# expected current color ('' for any; else 'conflict' when it differs), ARGV[8] stream max
# length, ARGV[9] recorded "from" ('' = the current value), ARGV[10] rollout fields as a JSON
# object (a '' value deletes the field), ARGV[11] the caller's lease id ('' skips the check),
# ARGV[12] the highest epoch the caller has reserved on disk ('' for no limit), ARGV[13]
# (optional) the allocation hash's fields as a JSON object ('' or absent: left alone; a ''
# value deletes the field), written with ``epoch`` set to the new epoch: a canary's start, step,
# abort and promotion are each this one call (see PERMIT)
# Returns {status, epoch, from, to}; status is ok, dup (this flip id already ran), conflict,
# not_holder (the lease is someone else's: `to` holds the holder) or reserve (the new epoch
# would pass the caller's reservation: `epoch` is the one it needs; nothing was written).
FLIP: Final = """
if redis.call('HGET', KEYS[5], 'id') == ARGV[3] then
  local last = redis.call('HMGET', KEYS[5], 'epoch', 'from', 'to')
  return {'dup', last[1], last[2], last[3]}
end
if ARGV[11] ~= '' then
  local holder = redis.call('GET', KEYS[7]) or ''
  if holder ~= ARGV[11] then return {'not_holder', '0', '', holder} end
end
local current = redis.call('GET', KEYS[1]) or ''
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if ARGV[7] ~= '' and current ~= ARGV[7] then
  return {'conflict', string.format('%d', epoch), current, ''}
end
local floor = tonumber(ARGV[2]) or 0
if floor > epoch then epoch = floor end
epoch = epoch + 1
if ARGV[12] ~= '' and epoch > (tonumber(ARGV[12]) or 0) then
  return {'reserve', string.format('%d', epoch), current, ''}
end
epoch = string.format('%d', epoch)
local to = ARGV[1]
if to == '' then to = current end
redis.call('SET', KEYS[2], epoch)
if to ~= '' and to ~= current then redis.call('SET', KEYS[1], to) end
if to == 'blue' or to == 'green' then redis.call('SET', KEYS[3], to)
else redis.call('DEL', KEYS[3]) end
local from = current
if ARGV[9] ~= '' then from = ARGV[9] end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'from', from, 'to', to,
           'epoch', epoch, 'reason', ARGV[4], 'by', ARGV[5], 'at', ARGV[6])
redis.call('HSET', KEYS[5], 'id', ARGV[3], 'epoch', epoch, 'from', from, 'to', to)
if ARGV[10] ~= '' then
  for field, value in pairs(cjson.decode(ARGV[10])) do
    if value == '' then redis.call('HDEL', KEYS[6], field)
    else redis.call('HSET', KEYS[6], field, value) end
  end
end
if ARGV[13] ~= nil and ARGV[13] ~= '' then
  for field, value in pairs(cjson.decode(ARGV[13])) do
    if value == '' then redis.call('HDEL', KEYS[8], field)
    else redis.call('HSET', KEYS[8], field, value) end
  end
  redis.call('HSET', KEYS[8], 'epoch', epoch)
end
return {'ok', epoch, from, to}
"""

# The reconciler's one call: read the truth and, when it is an operator's SET of the active
# key to a color, adopt it at once (bump the epoch, hand it to that color, record the flip and
# the rollout change), all in one round trip.
# KEYS[1] active key, KEYS[2] epoch, KEYS[3] epoch owner, KEYS[4] flips stream,
# KEYS[5] last flip hash, KEYS[6] rollout hash, KEYS[7] lease, KEYS[8] grant sequence
# ARGV[1] the epoch the caller knows, ARGV[2] the lowest grant sequence it accepts, ARGV[3] its
# lease id ('' skips the check), ARGV[4] flip id, ARGV[5] at (unix seconds), ARGV[6] stream max
# length, ARGV[7] the stable color, ARGV[8] the highest epoch reserved on disk ('' no limit)
# Returns {status, epoch, active, owner, seq}. status:
#   same       nothing changed
#   adopted    an operator's SET was adopted: epoch is the new one, owner the previous one
#   regressed  Redis is behind what the caller knows (epoch or grant sequence): nothing written
#   not_holder the lease is someone else's (owner holds the holder)
#   reserve    adopting needs an epoch past the caller's reservation: nothing written
#   changed    anything else (a deleted key, a value that is not a color, a higher epoch)
ADOPT: Final = """
local active = redis.call('GET', KEYS[1]) or ''
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local owner = redis.call('GET', KEYS[3]) or ''
local seq = tonumber(redis.call('GET', KEYS[8]) or '0') or 0
local function answer(status, e, o)
  return {status, string.format('%d', e), active, o, string.format('%d', seq)}
end
if ARGV[3] ~= '' then
  local holder = redis.call('GET', KEYS[7]) or ''
  if holder ~= ARGV[3] then return answer('not_holder', epoch, holder) end
end
if epoch < (tonumber(ARGV[1]) or 0) or seq < (tonumber(ARGV[2]) or 0) then
  return answer('regressed', epoch, owner)
end
if active == owner and epoch == (tonumber(ARGV[1]) or 0) then
  return answer('same', epoch, owner)
end
if (active == 'blue' or active == 'green') and active ~= owner then
  local new = epoch + 1
  if ARGV[8] ~= '' and new > (tonumber(ARGV[8]) or 0) then
    return answer('reserve', new, owner)
  end
  local e = string.format('%d', new)
  redis.call('SET', KEYS[2], e)
  redis.call('SET', KEYS[3], active)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'from', owner, 'to', active,
             'epoch', e, 'reason', 'external', 'by', 'redis', 'at', ARGV[5])
  redis.call('HSET', KEYS[5], 'id', ARGV[4], 'epoch', e, 'from', owner, 'to', active)
  if active == ARGV[7] then
    redis.call('HDEL', KEYS[6], 'candidate', 'probation_since')
  else
    redis.call('HSET', KEYS[6], 'candidate', active, 'probation_since', ARGV[5])
    redis.call('HDEL', KEYS[6], 'rejected_' .. active)
  end
  return answer('adopted', new, owner)
end
return answer('changed', epoch, owner)
"""

# The namespace lease: one daemon supervises a namespace.
# A lease found *missing* at a start is not taken at once: Redis may have just lost it
# (restarted empty, flushed) while its holder lives and is about to renew it. The starting
# daemon writes a claim (`claim:<ms>:<its value>`) and takes the lease only once the claim is a
# TTL old: a live holder renews every third of the TTL, overwrites the claim and keeps the
# namespace (and one that cannot reach Redis has fenced its children by then). A clean release
# leaves `released:<value>` for a TTL, so a restart right after a stop waits for nothing.
# KEYS[1] lease; ARGV[1] my value, ARGV[2] ttl in ms, ARGV[3] a value to replace ('' for none: a
# dead holder's), ARGV[4] mode: renew (we hold it: take it back if missing or claimed), claim (a
# start: a missing lease is claimed first), now (a start on a Redis nobody else can reach).
# Returns {status, holder}: mine (taken or renewed), claiming (holder: ms left) or held.
LEASE: Final = """
local holder = redis.call('GET', KEYS[1])
local mine, ttl, mode = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local function take()
  redis.call('SET', KEYS[1], mine, 'PX', ttl)
  return {'mine', mine}
end
if holder == mine or (ARGV[3] ~= '' and holder == ARGV[3]) then return take() end
if holder ~= false and string.sub(holder, 1, 9) == 'released:' then return take() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if holder == false then
  if mode ~= 'claim' then return take() end
  redis.call('SET', KEYS[1], 'claim:' .. now .. ':' .. mine, 'PX', 2 * ttl)
  return {'claiming', tostring(ttl)}
end
if string.sub(holder, 1, 6) == 'claim:' then
  local sep = string.find(holder, ':', 7, true)
  local since = tonumber(string.sub(holder, 7, (sep or 7) - 1)) or 0
  local claimant = sep and string.sub(holder, sep + 1) or ''
  if mode == 'renew' then return take() end
  if claimant == mine then
    if now - since >= ttl then return take() end
    return {'claiming', tostring(ttl - (now - since))}
  end
end
return {'held', holder}
"""

# KEYS[1] lease; ARGV[1] my value, ARGV[2] how long the release marker lives (ms). Replaces the
# lease by `released:<value>` only if it is mine. Returns 1 or 0.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'released:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# The end of putting executed keys back into a Redis that forgot them: raise the grant counter
# only if this is still the Redis the keys were put into (the marker written at the start is
# there). A Redis restarted from a dump mid-way lacks the marker: the counter stays behind, so
# the regression is found again and the keys put back again, never half.
# KEYS[1] the restore marker, KEYS[2] grant sequence; ARGV[1] the marker's token, ARGV[2] the
# counter to raise to. Returns 1 when done, 0 when the marker is gone.
FINISH_RESTORE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) < (tonumber(ARGV[2]) or 0) then
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('DEL', KEYS[1])
return 1
"""

PERMIT_REASONS: Final = (
    "ok",
    "not_active",
    "stale_epoch",
    "duplicate",
    "unavailable",
    "over_allocation",
    "amount_required",
)
GRANT_LOG_MAXLEN: Final = 100_000


class Keys:
    """The Redis keys of one deployment (contract: see docs/redis.md)."""

    def __init__(self, namespace: str, active_key: str) -> None:
        self.namespace = namespace
        self.active = active_key
        self.epoch = f"{namespace}:epoch"
        self.owner = f"{namespace}:epoch:owner"
        self.flips = f"{namespace}:flips"
        self.last_flip = f"{namespace}:flip:last"
        self.rollout = f"{namespace}:rollout"
        self.permit_stats = f"{namespace}:permits:stats"
        self.grant_seq = f"{namespace}:permits:seq"
        self.grant_log = f"{namespace}:permits:log"
        self.lease = f"{namespace}:lease"
        self.restoring = f"{namespace}:restoring"
        self.alloc = f"{namespace}:alloc"

    def permit(self, key: str) -> str:
        return f"{self.namespace}:permit:{key}"

    def identity(self, color: str) -> str:
        """A key only ``color``'s ACL user (and the daemon) may write; nothing is stored there.
        The permit script asks Redis whether its caller may write it: that is how a child
        calling the script itself is held to its own color."""
        return f"{self.namespace}:identity:{color}"

    def permit_keys(self, key: str, color: str) -> list[str]:
        """KEYS of the permit script for idempotency key ``key`` asked as ``color``."""
        return [
            self.active,
            self.epoch,
            self.owner,
            self.permit(key),
            self.permit_stats,
            self.grant_seq,
            self.grant_log,
            self.identity(color),
            self.alloc,
        ]

    def flip_keys(self) -> list[str]:
        return [*self._flip_common(), self.alloc]

    def adopt_keys(self) -> list[str]:
        return [*self._flip_common(), self.grant_seq]

    def _flip_common(self) -> list[str]:
        return [
            self.active,
            self.epoch,
            self.owner,
            self.flips,
            self.last_flip,
            self.rollout,
            self.lease,
        ]
