-- Store an entry with its TTL, then evict the least recently used past the bound.
-- KEYS[1..5] as in cache_common.lua
-- ARGV[1] member   ARGV[2] value   ARGV[3] ttl (ms)   ARGV[4] max entries   ARGV[5] entry prefix
-- Returns how many entries were evicted.
--#include cache_common.lua
local now = now_ms()
purge(ARGV[5], now)
local expires = now + tonumber(ARGV[3])
redis.call('SET', entry, ARGV[2], 'PXAT', expires)
redis.call('ZADD', lru, redis.call('INCR', seq), ARGV[1])
redis.call('ZADD', exp, expires, ARGV[1])
local evicted = 0
local excess = redis.call('ZCARD', lru) - tonumber(ARGV[4])
while excess > 0 do
  local popped = redis.call('ZPOPMIN', lru)
  evicted = evicted + forget(popped[1], ARGV[5])
  excess = excess - 1
end
if evicted > 0 then redis.call('HINCRBY', stats, 'evictions', evicted) end
return evicted
