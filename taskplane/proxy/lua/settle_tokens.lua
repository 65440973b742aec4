-- Settle a call's reserved tokens to what it used, in each of its token windows.
-- Window i: KEYS[2i-1] the sorted set of reserved calls, KEYS[2i] its call -> tokens
--           hash (with 'total' and the recent mean 'avg')
-- ARGV[1] member   ARGV[2] tokens used   ARGV[3] weight of the newest call in the mean
for i = 1, #KEYS / 2 do
  local key, amounts = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('ZSCORE', key, ARGV[1]) then
    local reserved = tonumber(redis.call('HGET', amounts, ARGV[1]) or '0')
    redis.call('HSET', amounts, ARGV[1], ARGV[2])
    redis.call('HINCRBYFLOAT', amounts, 'total', tonumber(ARGV[2]) - reserved)
  end
  local used, weight = tonumber(ARGV[2]), tonumber(ARGV[3])
  local avg = tonumber(redis.call('HGET', amounts, 'avg') or ARGV[2])
  redis.call('HSET', amounts, 'avg', tostring(avg * (1 - weight) + used * weight))
  redis.call('PEXPIRE', amounts, 86400000)
end
return 1
