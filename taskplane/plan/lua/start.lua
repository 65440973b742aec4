-- A delivered task asks to run: replay, refuse or go ahead, leased to its owner.
-- KEYS[1]  meta   KEYS[2] results   KEYS[3] the task's lease
-- ARGV[1]  index   ARGV[2] previous index ('' for none)   ARGV[3] lease (s)
-- ARGV[4]  redelivered (1/0)   ARGV[5] owner (the Celery task id)
-- Returns {action, the previous task's result JSON or false}.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'recorded', false} end
local m = redis.call('HMGET', KEYS[1], 'state', 'cancel')
if not m[1] then return {'missing', false} end
if m[2] == '1' then return {'cancelled', false} end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[3], ARGV[5], 'EX', tonumber(ARGV[3]))
elseif not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', tonumber(ARGV[3])) then
  -- held: by another copy of the task (drop this one), or by this very message's
  -- earlier delivery (a Celery retry keeps its task id), which carries on
  if redis.call('GET', KEYS[3]) ~= ARGV[5] then return {'busy', false} end
  redis.call('SET', KEYS[3], ARGV[5], 'EX', tonumber(ARGV[3]))
end
if redis.call('HSETNX', KEYS[1], 'started:' .. ARGV[1], '1') == 1 then
  redis.call('HINCRBY', KEYS[1], 'running', 1)  -- a takeover reuses the dead run's count
end
local prev = false
if ARGV[2] ~= '' then prev = redis.call('HGET', KEYS[2], ARGV[2]) end
return {'run', prev}
