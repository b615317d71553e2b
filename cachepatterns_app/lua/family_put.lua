-- Store a writer's value as a family member of the current generation, and void
-- that member's in-flight fills. With no generation yet, nothing of the family is
-- cached: there is nothing to replace, and the next read fills it.
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member, ARGV[3] payload,
-- ARGV[4] ttl ms.
local gen = redis.pcall('GET', KEYS[1])
if type(gen) ~= 'string' then
  return 0
end
redis.call('SET', ARGV[1] .. ':v:' .. gen .. ':' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', ARGV[1] .. ':l:' .. gen .. ':' .. ARGV[2])
return 1
