-- Record outcomes for tasks an ended run never finished (first outcome still wins).
-- KEYS[1]  results hash   KEYS[2] order stream   KEYS[3] event stream
-- ARGV[1]  ttl (s)   ARGV[2] event stream maxlen   ARGV[3] event channel
-- ARGV[4..] (index, result JSON, event JSON or '') triples.
-- Lists each recorded outcome in the order stream and appends its event.
-- Returns the indexes it recorded.
local ttl = tonumber(ARGV[1])
local recorded = {}
for i = 4, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    recorded[#recorded + 1] = ARGV[i]
    redis.call('XADD', KEYS[2], '*', 'i', ARGV[i])
    if ARGV[i + 2] ~= '' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i + 2])
      redis.call('PUBLISH', ARGV[3], ARGV[i + 2])
    end
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return recorded
