-- Forget one entry.
-- KEYS[1..5] as in cache_common.lua   ARGV[1] member   ARGV[2] entry prefix
--#include cache_common.lua
forget(ARGV[1], ARGV[2])
return 1
