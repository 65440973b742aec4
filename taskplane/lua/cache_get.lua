-- Look an entry up (a hit refreshes its recency); counts a hit or a miss.
-- KEYS[1..5] as in cache_common.lua   ARGV[1] member
-- Returns the stored value, or false.
--#include cache_common.lua
local value = redis.call('GET', entry)
if value then
  redis.call('ZADD', lru, redis.call('INCR', seq), ARGV[1])
  redis.call('HINCRBY', stats, 'hits', 1)
  return value
end
redis.call('ZREM', lru, ARGV[1])
redis.call('ZREM', exp, ARGV[1])
redis.call('HINCRBY', stats, 'misses', 1)
return false
