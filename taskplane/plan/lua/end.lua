-- End a running run as ARGV[1]. KEYS: meta, done list. Returns the final state (false: no run).
local m = redis.call('HMGET', KEYS[1], 'state', 'ttl')
if not m[1] then return false end
if m[1] ~= 'running' then return m[1] end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'cancel', '1')
redis.call('RPUSH', KEYS[2], ARGV[1])
local left = redis.call('TTL', KEYS[1])
redis.call('EXPIRE', KEYS[2], left > 0 and left or tonumber(m[2]))
return ARGV[1]
