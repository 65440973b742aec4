-- Forget every entry and the counters.
-- KEYS[1..5] as in cache_common.lua   ARGV[1] entry prefix
--#include cache_common.lua
for _, index in ipairs({lru, exp}) do
  for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    redis.call('DEL', ARGV[1] .. member)
  end
end
redis.call('DEL', lru, exp, stats)
return 1
