-- Counters and the number of live entries (expired ones are purged first).
-- KEYS[1..5] as in cache_common.lua   ARGV[1] entry prefix
-- Returns {entries, hits, misses, evictions}.
--#include cache_common.lua
purge(ARGV[1], now_ms())
local counters = redis.call('HMGET', stats, 'hits', 'misses', 'evictions')
return {redis.call('ZCARD', lru), counters[1] or 0, counters[2] or 0, counters[3] or 0}
