-- Create a run unless one exists.
-- KEYS[1]  meta   KEYS[2] tasks
-- ARGV[1]  ttl (s)   ARGV[2] number of record fields, then field/value pairs,
-- then each task's JSON in plan order.
-- Returns 1 when created, 0 when the run existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
local nmeta = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + 2 * nmeta))
-- the tasks in slices: unpack takes a few thousand values at most
local first, slice = 3 + 2 * nmeta, 500
while first <= #ARGV do
  local last = math.min(first + slice - 1, #ARGV)
  local pairs = {}
  for i = first, last do
    pairs[#pairs + 1] = tostring(i - 3 - 2 * nmeta)
    pairs[#pairs + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[2], unpack(pairs))
  first = last + 1
end
for k = 1, #KEYS do redis.call('EXPIRE', KEYS[k], ttl) end
return 1
