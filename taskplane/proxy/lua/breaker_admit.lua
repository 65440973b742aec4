-- Admit a call through one agent's breaker (one half-open trial cluster-wide).
-- KEYS[1]  the breaker hash
-- ARGV[1]  now (s)   ARGV[2] reset timeout (s)   ARGV[3] trial lease (s)   ARGV[4] trial token
-- Returns {state, allowed '1'|'0', retry_in_s, '1' when this call moved open -> half-open}.
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'trial_until')
local state = s[1]
if not state or state == 'closed' then return {'closed', '1', '0', '0'} end
local now = tonumber(ARGV[1])
if state == 'open' then
  local reopen_at = tonumber(s[2]) + tonumber(ARGV[2])
  if now < reopen_at then return {'open', '0', tostring(reopen_at - now), '0'} end
else
  local trial_until = tonumber(s[3] or '0') or 0
  if now < trial_until then return {'half-open', '0', tostring(trial_until - now), '0'} end
end
redis.call('HSET', KEYS[1], 'state', 'half-open', 'trial', ARGV[4],
           'trial_until', tostring(now + tonumber(ARGV[3])))
return {'half-open', '1', '0', state == 'open' and '1' or '0'}
