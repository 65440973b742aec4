-- Record a call's outcome on one agent's breaker; trip it, close it or change nothing.
-- KEYS[1]  the breaker hash   KEYS[2] the failure window (sorted set)
-- ARGV[1]  result (success, failure, abandon)   ARGV[2] now (s)   ARGV[3] monitoring period (s)
-- ARGV[4]  failure threshold   ARGV[5] trial token ('' for none)   ARGV[6] unique member
-- Returns {change 'open'|'close'|'', failures}.
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local result, token = ARGV[1], ARGV[5]
if state == 'half-open' then
  if token == '' or redis.call('HGET', KEYS[1], 'trial') ~= token then return {'', '0'} end
  if result == 'success' then redis.call('DEL', KEYS[1], KEYS[2]); return {'close', '0'} end
  if result == 'abandon' then
    redis.call('HDEL', KEYS[1], 'trial', 'trial_until'); return {'', '0'}
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2])
  redis.call('HDEL', KEYS[1], 'trial', 'trial_until')
  return {'open', '1'}
end
if state ~= 'closed' or result ~= 'failure' or token ~= '' then return {'', '0'} end
local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tostring(now - tonumber(ARGV[3])))
local n = redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2])
  return {'open', tostring(n)}
end
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[3]) * 1000))
return {'', tostring(n)}
