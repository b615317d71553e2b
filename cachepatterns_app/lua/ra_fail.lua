-- A refresh's loader raised: keep the old value (stale-if-error) and back off.
-- The failure count lives in the meta key (it expires with the value); the lease
-- becomes a backoff lease ('b:') that lives base * 2^(failures - 1) ms, at most
-- cap ms, so that no reader schedules another try before it expires.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] meta, KEYS[4] generation key (families only).
-- ARGV[1] refresh token, ARGV[2] backoff base ms, ARGV[3] backoff cap ms,
-- ARGV[4] generation ('' if none).
-- Returns the backoff in ms, or -1 if the lease was no longer the refresh's.
if KEYS[4] and redis.pcall('GET', KEYS[4]) ~= ARGV[4] then
  return -1
end
if redis.pcall('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
local delta, failures = 0, 0
local meta = redis.pcall('GET', KEYS[3])
if type(meta) == 'string' then
  delta = tonumber(string.match(meta, '^(%d+)')) or 0
  failures = tonumber(string.match(meta, ',(%d+)$')) or 0
end
failures = failures + 1
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('SET', KEYS[3], delta .. ',' .. failures, 'PX', pttl)
elseif pttl == -1 then
  redis.call('SET', KEYS[3], delta .. ',' .. failures)
end
local backoff = tonumber(ARGV[2]) * 2 ^ math.min(failures - 1, 30)
backoff = math.floor(math.min(backoff, tonumber(ARGV[3])))
redis.call('SET', KEYS[2], 'b:' .. failures, 'PX', backoff)
return backoff
