-- Record a task's outcome (first outcome wins) and advance the run.
-- KEYS[1]  meta   KEYS[2] results   KEYS[3] tasks   KEYS[4] done list   KEYS[5] order stream
-- KEYS[6]  event stream (on a cluster: a key of the run's own, untouched)   KEYS[7] replies
-- ARGV[1]  index   ARGV[2] result JSON   ARGV[3] status   ARGV[4] confidence ('' for none)
-- ARGV[5]  ran (1/0)   ARGV[6] event JSON ('' for none)   ARGV[7] event stream maxlen
-- ARGV[8]  event channel   ARGV[9..] events of this process not yet sent (its
--          task:started...), written first so the stream keeps their order.
-- Returns {recorded (1/0), ending or false, next index or false, next task JSON or false,
-- 1 when the run ended with every task done, no reply owed and no parent to resume}.
for i = 9, #ARGV do
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'event', ARGV[i])
  redis.call('PUBLISH', ARGV[8], ARGV[i])
end
local left = redis.call('TTL', KEYS[1])
if left == -2 then return {0, false, false, false} end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return {0, false, false, false} end
if left > 0 then redis.call('EXPIRE', KEYS[2], left) end
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'event', ARGV[6])
  redis.call('PUBLISH', ARGV[8], ARGV[6])
end
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[1], 'running', -1) end
local m = redis.call('HMGET', KEYS[1], 'state', 'rule', 'n', 'cont', 'mode', 'target', 'ttl')
local state, rule, n = m[1], m[2], tonumber(m[3])
redis.call('XADD', KEYS[5], '*', 'i', ARGV[1])
redis.call('EXPIRE', KEYS[5], left > 0 and left or tonumber(m[7]))
local ndone = redis.call('HINCRBY', KEYS[1], 'done', 1)
local ok = ARGV[3] == 'success'
-- Each rule's decision, as taskplane.plan.rules spells it (Rule.ends); the run
-- store behaviour suite checks that both agree.
local ending = false
if state == 'running' then
  if rule == 'all' then
    if not ok then ending = 'failed' elseif ndone >= n then ending = 'completed' end
  elseif rule == 'race' then
    if ok then
      ending = 'completed'
      redis.call('HSET', KEYS[1], 'winner', ARGV[1])
    elseif ndone >= n then ending = 'failed' end
  elseif rule == 'weighted' then
    if ok then redis.call('HSET', KEYS[1], 'succeeded', '1') end
    local c = tonumber(ARGV[4])
    if ok and c and c >= tonumber(m[6]) then ending = 'completed'
    elseif ndone >= n then
      if redis.call('HGET', KEYS[1], 'succeeded') == '1' then ending = 'completed'
      else ending = 'failed' end
    end
  elseif rule == 'sequential' then
    if (not ok) and m[4] ~= '1' then ending = 'failed'
    elseif ndone >= n then ending = 'completed' end
  elseif ndone >= n then ending = 'completed' end
end
if ending then
  redis.call('HSET', KEYS[1], 'state', ending, 'cancel', '1')
  redis.call('RPUSH', KEYS[4], ending)
  redis.call('EXPIRE', KEYS[4], left > 0 and left or tonumber(m[7]))
  local quiet = ndone >= n and redis.call('EXISTS', KEYS[7]) == 0
    and redis.call('HEXISTS', KEYS[1], 'parent') == 0
  return {1, ending, false, false, quiet and 1 or 0}
end
if state == 'running' and m[5] == 'window' then
  local nxt = redis.call('HINCRBY', KEYS[1], 'next', 1) - 1
  if nxt < n then
    redis.call('HSET', KEYS[1], 'after:' .. ARGV[1], tostring(nxt))
    return {1, false, tostring(nxt), redis.call('HGET', KEYS[3], tostring(nxt))}
  end
end
return {1, false, false, false}
