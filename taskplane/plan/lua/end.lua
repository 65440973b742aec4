-- End a running run; a run that has ended keeps its state.
-- KEYS[1]  the run's record (meta hash)   KEYS[2] its done list
-- ARGV[1]  the state to end it in (timeout, cancelled)
-- Returns the run's final state, or false when there is no such run.
local m = redis.call('HMGET', KEYS[1], 'state', 'ttl')
if not m[1] then return false end
if m[1] ~= 'running' then return m[1] end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'cancel', '1')
redis.call('RPUSH', KEYS[2], ARGV[1])
local left = redis.call('TTL', KEYS[1])
redis.call('EXPIRE', KEYS[2], left > 0 and left or tonumber(m[2]))
return ARGV[1]
