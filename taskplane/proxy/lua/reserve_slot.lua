-- Reserve the earliest slot in a sliding window of at most `limit` calls per `window` ms.
-- KEYS[1]  the window: a sorted set of reserved call times (ms), members unique per call
-- ARGV[1]  now (ms)   ARGV[2] window (ms)   ARGV[3] limit   ARGV[4] member
-- ARGV[5]  horizon (ms): reserve nothing if the slot is further away than this
-- Returns {reserved (1|0), ms from now until the slot}.
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tostring(now - window))
local n = redis.call('ZCARD', KEYS[1])
local at = now
if n >= limit then
  -- the new call must come a window after the limit-th latest reserved call
  local kth = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  at = math.max(now, tonumber(kth[2]) + window)
end
if at - now > tonumber(ARGV[5]) then return {0, tostring(at - now)} end
redis.call('ZADD', KEYS[1], at, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(at - now + window))
return {1, tostring(at - now)}
