-- Create a run unless one exists. KEYS: meta, tasks.
-- ARGV: ttl (s), number of meta fields, then field/value pairs, then each task's JSON in plan order.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
local nmeta = tonumber(ARGV[2])
local i = 3
for _ = 1, nmeta do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local idx = 0
while i <= #ARGV do
  redis.call('HSET', KEYS[2], tostring(idx), ARGV[i])
  idx = idx + 1
  i = i + 1
end
for k = 1, #KEYS do redis.call('EXPIRE', KEYS[k], ttl) end
return 1
