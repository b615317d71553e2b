-- Store a value with its compute time, only if the caller's lease still holds
-- and — for a family member — the family is still at the caller's generation
-- (fill.lua's and family_fill.lua's rule: no stale set). Used by the reader that
-- missed and by the worker that refreshed.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] meta, KEYS[4] generation key (families only).
-- ARGV[1] token, ARGV[2] payload, ARGV[3] ttl ms (0: none), ARGV[4] compute ms,
-- ARGV[5] generation ('' if none), ARGV[6] generation ttl ms (0: none).
if KEYS[4] and redis.pcall('GET', KEYS[4]) ~= ARGV[5] then
  return 0
end
if redis.pcall('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[3], ARGV[4])
end
redis.call('DEL', KEYS[2])
if KEYS[4] then
  local gen_ttl = tonumber(ARGV[6])
  if gen_ttl > 0 then
    if redis.call('PTTL', KEYS[4]) < gen_ttl then
      redis.call('PEXPIRE', KEYS[4], gen_ttl)
    end
  else
    redis.call('PERSIST', KEYS[4])
  end
end
return 1
