-- Store a writer's value as a family member, unless the family moved on since the
-- writer read its generation (another writer committed in between: its page and
-- this one may each miss the other's change, so neither may stay).
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member, ARGV[3] payload,
-- ARGV[4] ttl ms, ARGV[5] the generation expected ('' = none), ARGV[6] '1' when
-- the writer's own transaction did not bump the family: the put then bumps it, so
-- that a later put computed from the old generation is refused in turn.
-- Returns 1 stored, 0 nothing cached to replace, -1 refused (family invalidated).
local gen = redis.pcall('GET', KEYS[1])
if type(gen) ~= 'string' or string.len(gen) > 18 or not string.match(gen, '^%d+$') then
  return 0
end
if gen ~= ARGV[5] then
  if ARGV[6] == '1' then
    redis.call('INCR', KEYS[1])
  end
  return -1
end
if ARGV[6] == '1' then
  -- Read back as text: Lua numbers are doubles, and tostring() of a large one is
  -- in exponent form.
  redis.call('INCR', KEYS[1])
  gen = redis.call('GET', KEYS[1])
end
redis.call('SET', ARGV[1] .. ':v:' .. gen .. ':' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', ARGV[1] .. ':l:' .. gen .. ':' .. ARGV[2])
return 1
