-- Reserve the earliest instant free in every one of several sliding windows
-- (an agent's own window and the quota it shares), booked in all of them at once.
-- KEYS[i]  a window: a sorted set of reserved call times (ms), members unique per call
-- ARGV[1]  now (ms)   ARGV[2] horizon (ms): reserve nothing if the slot is further away
-- ARGV[3]  member     ARGV[2+2i] window i (ms)   ARGV[3+2i] limit i
-- Returns {reserved (1|0), ms from now until the slot}.
local now, horizon, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local at = now
for i, key in ipairs(KEYS) do
  local window, limit = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', tostring(now - window))
  local n = redis.call('ZCARD', key)
  if n > 0 then
    -- never before a call already booked here: the new call is each window's latest
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    at = math.max(at, tonumber(last[2]))
  end
  if n >= limit then
    -- a window after the limit-th latest reserved call
    local kth = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    at = math.max(at, tonumber(kth[2]) + window)
  end
end
if at - now > horizon then return {0, tostring(at - now)} end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, at, member)
  redis.call('PEXPIRE', key, math.ceil(at - now + tonumber(ARGV[2 + 2 * i])))
end
return {1, tostring(at - now)}
