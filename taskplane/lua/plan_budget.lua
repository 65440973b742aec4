-- A plan budget, kept in the fields of the run's meta hash KEYS[1]:
--   budgetTokens / budgetCalls   the limits (absent: not limited)
--   usedTokens / usedCalls       settled spending;  heldTokens / heldCalls  reservations in flight
--   budgetWarned / budgetOut     set once, when the warning / the exhaustion is announced
-- ARGV[1] 'reserve': ARGV[2] the call's token estimate. For each limited measure:
--   used >= limit -> 'exhausted';  reservations in flight and no room for this one -> 'wait';
--   else hold min(cost, limit - used - held). Nothing is held unless every measure says 'run'.
--   Returns {verdict, tokens held, calls held, measure that ran out, first exhaustion (1|0),
--            usedTokens, budgetTokens, usedCalls, budgetCalls}
-- ARGV[1] 'settle': ARGV[2] tokens held, ARGV[3] tokens used, ARGV[4] calls held, ARGV[5]
--   calls made. Returns {first warning (1|0), first exhaustion (1|0), measure, used/limits as above}
local key = KEYS[1]
local m = redis.call('HMGET', key, 'budgetTokens', 'usedTokens', 'heldTokens',
  'budgetCalls', 'usedCalls', 'heldCalls')
local limits = {tonumber(m[1]), tonumber(m[4])}
local used = {tonumber(m[2]) or 0, tonumber(m[5]) or 0}
local held = {tonumber(m[3]) or 0, tonumber(m[6]) or 0}
if not limits[1] and not limits[2] then  -- no budget here (or the run expired): nothing to keep
  if ARGV[1] == 'reserve' then return {'run', 0, 0, '', 0, '0', '', '0', ''} end
  return {0, 0, '', '0', '', '0', ''}
end
local names = {'tokens', 'calls'}
local usedf = {'usedTokens', 'usedCalls'}
local heldf = {'heldTokens', 'heldCalls'}
local function figures()
  return tostring(used[1]), tostring(limits[1] or ''), tostring(used[2]), tostring(limits[2] or '')
end
if ARGV[1] == 'reserve' then
  local costs = {tonumber(ARGV[2]), 1}
  local take = {0, 0}
  local verdict, measure = 'run', ''
  for i = 1, 2 do
    local limit = limits[i]
    if limit then
      if used[i] >= limit then
        verdict, measure = 'exhausted', names[i]
        break
      elseif held[i] > 0 and used[i] + held[i] + costs[i] > limit then
        verdict = 'wait'
      else
        take[i] = math.max(math.min(costs[i], limit - used[i] - held[i]), 1)
      end
    end
  end
  local first = 0
  if verdict == 'exhausted' then
    first = redis.call('HSETNX', key, 'budgetOut', measure)
  elseif verdict == 'run' then
    for i = 1, 2 do
      if take[i] > 0 then redis.call('HINCRBY', key, heldf[i], take[i]) end
    end
  else
    take = {0, 0}
  end
  local a, b, c, d = figures()
  return {verdict, take[1], take[2], measure, first, a, b, c, d}
end
local back = {tonumber(ARGV[2]), tonumber(ARGV[4])}
local spent = {tonumber(ARGV[3]), tonumber(ARGV[5])}
local warn, out, measure = 0, 0, ''
for i = 1, 2 do
  if back[i] > 0 then held[i] = tonumber(redis.call('HINCRBY', key, heldf[i], -back[i])) end
  if spent[i] > 0 then used[i] = tonumber(redis.call('HINCRBY', key, usedf[i], spent[i])) end
end
for i = 1, 2 do
  local limit = limits[i]
  if limit and used[i] >= limit and out == 0 then
    out = redis.call('HSETNX', key, 'budgetOut', names[i])
    if out == 1 then measure = names[i] end
  end
  if limit and used[i] * 5 >= limit * 4 and warn == 0 then
    warn = redis.call('HSETNX', key, 'budgetWarned', names[i])
    if warn == 1 and measure == '' then measure = names[i] end
  end
end
local a, b, c, d = figures()
return {warn, out, measure, a, b, c, d}
