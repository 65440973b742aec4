-- Take one of at most `limit` leases on calls in flight to one agent, cluster-wide.
-- KEYS[1]  the leases: a sorted set of lease tokens scored by when they expire (ms)
-- ARGV[1]  now (ms)   ARGV[2] limit   ARGV[3] token   ARGV[4] lease length (ms)
-- A lease whose holder died (never released) expires and frees its place.
-- Returns {taken (1|0), ms until the earliest lease expires (when not taken)}.
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tostring(now))
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tostring(tonumber(first[2]) - now)}
end
local expires = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], expires, ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now))
return {1, '0'}
