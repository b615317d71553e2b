-- A worker starts a refresh: only if its lease still holds (no write, put,
-- invalidation or reader took it since the read that scheduled it), and — for a
-- family member — the family is still at the generation of that read. The lease
-- is extended to cover the computation (LOCK_TIMEOUT plus twice the last one).
-- KEYS[1] value, KEYS[2] lease, KEYS[3] meta, KEYS[4] generation key (families only).
-- ARGV[1] refresh token, ARGV[2] lease lifetime ms, ARGV[3] generation ('' if none).
-- Returns 1 (go ahead) or 0 (skip: the result would not be stored).
if KEYS[4] and redis.pcall('GET', KEYS[4]) ~= ARGV[3] then
  return 0
end
if redis.pcall('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local delta = 0
local meta = redis.pcall('GET', KEYS[3])
if type(meta) == 'string' then
  delta = tonumber(string.match(meta, '^(%d+)')) or 0
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + 2 * delta)
return 1
