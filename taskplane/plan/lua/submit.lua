-- Create a run unless one exists.
-- KEYS[1]  meta   KEYS[2] tasks
-- ARGV[1]  ttl (s)   ARGV[2] number of record fields, then field/value pairs,
-- then each task's JSON in plan order.
-- Returns 1 when created, 0 when the run existed.
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
