-- Store a family member only if the family's generation is still the one the
-- caller read before loading, and the caller still holds the member's lease.
-- An invalidation bumps the generation, so a page computed from rows read before
-- a concurrent write committed is never stored under the new generation.
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member, ARGV[3] generation,
-- ARGV[4] token, ARGV[5] payload, ARGV[6] ttl ms (0: none), ARGV[7] generation ttl ms.
if redis.pcall('GET', KEYS[1]) ~= ARGV[3] then
  return 0
end
local lease = ARGV[1] .. ':l:' .. ARGV[3] .. ':' .. ARGV[2]
if redis.pcall('GET', lease) ~= ARGV[4] then
  return 0
end
local key = ARGV[1] .. ':v:' .. ARGV[3] .. ':' .. ARGV[2]
if tonumber(ARGV[6]) > 0 then
  redis.call('SET', key, ARGV[5], 'PX', ARGV[6])
else
  redis.call('SET', key, ARGV[5])
end
redis.call('DEL', lease)
local gen_ttl = tonumber(ARGV[7])
if gen_ttl > 0 then
  if redis.call('PTTL', KEYS[1]) < gen_ttl then
    redis.call('PEXPIRE', KEYS[1], gen_ttl)
  end
else
  redis.call('PERSIST', KEYS[1])
end
return 1
