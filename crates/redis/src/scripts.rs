//! The Lua scripts, each loaded once and called by SHA (`EVALSHA`; the `redis`
//! crate's [`Script`](redis::Script) falls back to `EVAL`, which loads it, after
//! `NOSCRIPT`, as after a restart or `SCRIPT FLUSH`).
//!
//! Every script reads Redis's own clock (`TIME`), so replicas whose clocks
//! disagree still agree on the limit. Redis 5+ replicates the effects of a
//! script, not the script, so reading `TIME` before a write is allowed.
//!
//! Lua numbers are doubles, exact for integers below 2^53. Times since the epoch
//! in nanoseconds are not (about 1.8e18), so the GCRA keeps its theoretical
//! arrival time as `"<seconds>:<nanoseconds>"` and computes in nanoseconds
//! *relative to now*, which stay below the tolerance (checked below 2^53 ns, about
//! 104 days, when the limiter is built).

use std::sync::LazyLock;

use redis::Script;

/// GCRA: admits `n` units, or with `max_batch > 0` leases between `n` and
/// `max_batch` units (`floor(available / share)`, so a replica takes less as the
/// bucket empties).
///
/// KEYS[1] the key; ARGV: interval T (ns), tolerance burst·T (ns), n,
/// max_batch (0: exactly n), share (≥ 1).
///
/// Returns `{admitted (0/1), granted, retry_after_ns, remaining}`: `granted`
/// the units taken (n, or the lease), `retry_after_ns` the wait until `n` units
/// conform (refusals), `remaining` the units that would conform one after
/// another after this decision.
pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ns = tonumber(t[2]) * 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])

local ahead = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  -- A value this script did not write counts as an empty bucket.
  local sep = string.find(stored, ':', 1, true)
  local s = sep and tonumber(string.sub(stored, 1, sep - 1))
  local ns = sep and tonumber(string.sub(stored, sep + 1))
  if s and ns then
    ahead = (s - now_s) * 1000000000 + (ns - now_ns)
    if ahead < 0 then ahead = 0 end
  end
end

local available = math.floor((tolerance - ahead) / interval)
if available < n then
  if available < 0 then available = 0 end
  return {0, 0, ahead + n * interval - tolerance, available}
end

local take = n
local max_batch = tonumber(ARGV[4])
if max_batch > 0 then
  take = math.floor(available / tonumber(ARGV[5]))
  if take > max_batch then take = max_batch end
  if take < n then take = n end
end
local new_ahead = ahead + take * interval
local total = now_ns + new_ahead
local carry = math.floor(total / 1000000000)
-- Integers below 1e14 print exactly (Lua's %.14g).
redis.call('SET', KEYS[1], (now_s + carry) .. ':' .. (total - carry * 1000000000),
  'PX', math.max(1, math.ceil(new_ahead / 1000000)))
return {1, take, 0, math.floor((tolerance - new_ahead) / interval)}
",
    )
});

/// Concurrency lease: drops expired holders, then adds `member` if fewer than
/// `limit` hold the key.
///
/// KEYS[1] the sorted set (member: holder id, score: expiry in Redis ms);
/// ARGV: limit, lease (ms), member.
///
/// Returns `{acquired (0/1), holders, retry_after_ms}`: `retry_after_ms` the
/// time until the earliest lease expires (refusals).
pub(crate) static LEASE_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local holders = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  holders = holders - 1
end
if holders >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local retry = 1
  if first[2] then retry = math.max(1, tonumber(first[2]) - now) end
  return {0, holders, retry}
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return {1, holders + 1, 0}
",
    )
});

/// Concurrency lease refresh: extends each member still held, reports those
/// that expired meanwhile.
///
/// KEYS[1] the sorted set; ARGV: lease (ms), members...
///
/// Returns the 1-based indices (into the members) of those no longer held.
pub(crate) static LEASE_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i]) == 0
     and not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    table.insert(lost, i - 1)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return lost
",
    )
});
