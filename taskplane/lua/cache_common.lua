-- Shared by the result cache's scripts (pulled in with --#include): Redis's own clock (ms)
-- and removal of entries whose TTL has passed. Entry values live in their own keys
-- ({prefix}:{cache}:entry:<key>, with PXAT); "lru" scores each live key by a global
-- access counter, "exp" by its expiry.
-- KEYS[1] lru   KEYS[2] exp   KEYS[3] stats   KEYS[4] seq   KEYS[5] the entry's key
-- ARGV[...] as each script that includes it says.
local lru, exp, stats, seq, entry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(member, entry_prefix)
  redis.call('ZREM', lru, member)
  redis.call('ZREM', exp, member)
  return redis.call('DEL', entry_prefix .. member)
end
local function purge(entry_prefix, now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  for _, member in ipairs(gone) do forget(member, entry_prefix) end
end
