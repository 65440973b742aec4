-- Reserve the earliest instant free in every one of several sliding windows (an
-- agent's request and token windows, its quota's), booked in all of them at once.
-- Window i: KEYS[2i-1] a sorted set of reserved call times (ms), members unique per call;
--           KEYS[2i]   its call -> tokens hash (token windows; field 'avg' = recent mean,
--                      'total' = the tokens of every call in the sorted set).
-- ARGV[1] now (ms)   ARGV[2] horizon (ms): reserve nothing if the slot is further away
-- ARGV[3] member (a fresh name), ARGV[4] the name of a token booking for later (one
--   the rescheduled call knows)     window i: ARGV[4i+1] window (ms), ARGV[4i+2] limit,
--   ARGV[4i+3] cost: 0 = a request window (each call counts 1), > 0 = tokens to reserve,
--   -1 = the window's recent mean, else ARGV[4i+4] (the default estimate)
-- A full window never books before a call already booked there, so a backlog keeps its order.
-- Returns {reserved (1|0), ms from now until the slot, tokens reserved (last token window)}.
local now, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local at, reserved = now, 0
local costs = {}
for i = 1, #KEYS / 2 do
  local key, amounts = KEYS[2 * i - 1], KEYS[2 * i]
  local window, limit = tonumber(ARGV[4 * i + 1]), tonumber(ARGV[4 * i + 2])
  local cost = tonumber(ARGV[4 * i + 3])
  if cost ~= 0 then
    if redis.call('EXISTS', key) == 0 then
      -- the window emptied and expired: keep only the recent mean
      local avg = redis.call('HGET', amounts, 'avg')
      redis.call('DEL', amounts)
      if avg then redis.call('HSET', amounts, 'avg', avg) end
    end
    local gone = redis.call('ZRANGEBYSCORE', key, '-inf', tostring(now - window))
    for _, old in ipairs(gone) do
      local spent = redis.call('HGET', amounts, old)
      if spent then redis.call('HINCRBYFLOAT', amounts, 'total', -tonumber(spent)) end
      redis.call('HDEL', amounts, old)
    end
    if cost < 0 then
      cost = tonumber(redis.call('HGET', amounts, 'avg') or ARGV[4 * i + 4])
    end
    cost = math.max(math.min(cost, limit), 1)
    reserved = cost
  end
  costs[i] = cost
  redis.call('ZREMRANGEBYSCORE', key, '-inf', tostring(now - window))
  local n = redis.call('ZCARD', key)
  local full = false
  if cost == 0 then
    if n >= limit then
      -- a window after the limit-th latest reserved call
      local kth = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
      at = math.max(at, tonumber(kth[2]) + window)
      full = true
    end
  elseif n > 0 then
    local total = tonumber(redis.call('HGET', amounts, 'total') or '0')
    -- a window after the oldest calls whose leaving makes room for this one
    local excess = total + cost - limit
    full = excess > 0
    local from = 0
    while excess > 0 and from < n do
      local calls = redis.call('ZRANGE', key, from, from + 99, 'WITHSCORES')
      for j = 1, #calls, 2 do
        excess = excess - (tonumber(redis.call('HGET', amounts, calls[j])) or 0)
        if excess <= 0 then
          at = math.max(at, tonumber(calls[j + 1]) + window)
          break
        end
      end
      from = from + 100
    end
  end
  if full then
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    at = math.max(at, tonumber(last[2]))
  end
end
if at - now > horizon then return {0, tostring(at - now), tostring(reserved)} end
-- only a token booking for later needs the caller's name (its settling comes in another call)
local named = ARGV[3]
if at > now then named = ARGV[4] end
for i = 1, #KEYS / 2 do
  local key, window = KEYS[2 * i - 1], tonumber(ARGV[4 * i + 1])
  local member = ARGV[3]
  if costs[i] ~= 0 then member = named end
  redis.call('ZADD', key, at, member)
  redis.call('PEXPIRE', key, math.ceil(at - now + window))
  if costs[i] ~= 0 then
    local previous = redis.call('HGET', KEYS[2 * i], member)
    if previous then  -- the same name booked again (a redelivery): count it once
      redis.call('HINCRBYFLOAT', KEYS[2 * i], 'total', -tonumber(previous))
    end
    redis.call('HSET', KEYS[2 * i], member, costs[i])
    redis.call('HINCRBYFLOAT', KEYS[2 * i], 'total', costs[i])
    redis.call('PEXPIRE', KEYS[2 * i], 86400000)
  end
end
return {1, tostring(at - now), tostring(reserved)}
