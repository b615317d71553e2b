-- ra_read.lua for a family member: the family's generation, then the member of
-- that generation, in one round trip (family_read.lua's rules for a missing or
-- malformed generation).
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member, ARGV[3] lease token,
-- ARGV[4] lease lifetime ms, ARGV[5] generation-key ttl ms (0: none), ARGV[6]
-- refresh window ms, ARGV[7] XFetch factor (0: off), ARGV[8] refresh token,
-- ARGV[9] 'claim' or ''.
-- Returns ra_read.lua's answers with the generation second: {1, gen, value},
-- {4, gen, value, pttl}, {5, gen, value, pttl}, {2, gen, healed}, {3, gen}, {0, gen}.
-- The member, lease and meta keys are built here but share KEYS[1]'s hash tag.
local healed = 0
local claim = ARGV[9] == 'claim'
local gen = redis.pcall('GET', KEYS[1])
if type(gen) == 'table' or (gen and (string.len(gen) > 18 or not string.match(gen, '^%d+$'))) then
  redis.call('DEL', KEYS[1])
  gen = false
  healed = 4
end
if not gen then
  if claim then
    return {0, ''}
  end
  local now = redis.call('TIME')
  gen = now[1] .. string.format('%06d', tonumber(now[2]))
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[1], gen, 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], gen)
  end
end
local key = ARGV[1] .. ':v:' .. gen .. ':' .. ARGV[2]
local lease = ARGV[1] .. ':l:' .. gen .. ':' .. ARGV[2]
local value = redis.pcall('GET', key)
if type(value) == 'table' and value.err then
  redis.call('DEL', key)
  healed = healed + 1
elseif value then
  local pttl = redis.call('PTTL', key)
  if claim then
    value = ''
  end
  if pttl < 0 then
    return {1, gen, value}
  end
  local delta = 0
  local meta = redis.pcall('GET', ARGV[1] .. ':m:' .. gen .. ':' .. ARGV[2])
  if type(meta) == 'string' then
    delta = tonumber(string.match(meta, '^(%d+)')) or 0
  end
  local xf = tonumber(ARGV[7])
  local due
  if xf > 0 and delta > 0 then
    due = delta * xf >= pttl
  else
    due = pttl < tonumber(ARGV[6])
  end
  if not due then
    return {1, gen, value}
  end
  if redis.call('EXISTS', lease) == 1 then
    return {5, gen, value, pttl}
  end
  redis.call('SET', lease, ARGV[8], 'PX', tonumber(ARGV[4]) + 2 * delta)
  return {4, gen, value, pttl}
end
if claim then
  return {0, gen}
end
if redis.call('SET', lease, ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {2, gen, healed}
end
local holder = redis.pcall('GET', lease)
if type(holder) == 'string' and (string.sub(holder, 1, 2) == 'r:' or string.sub(holder, 1, 2) == 'b:') then
  redis.call('SET', lease, ARGV[3], 'PX', ARGV[4])
  return {2, gen, healed}
end
local left = redis.call('PTTL', lease)
if left == -1 or left > tonumber(ARGV[4]) then
  redis.call('SET', lease, ARGV[3], 'PX', ARGV[4])
  return {2, gen, healed + 2}
end
return {3, gen}
