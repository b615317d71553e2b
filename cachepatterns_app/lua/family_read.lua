-- Read a family member in one round trip: the family's generation and the member
-- stored under that generation, or take the member's fill lease.
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member, ARGV[3] lease token,
-- ARGV[4] lease lifetime ms, ARGV[5] generation-key ttl ms (0: none).
-- Returns {1, gen, value} on a hit, {2, gen, healed} with the lease, {3, gen} busy.
--
-- A missing generation starts at the server's clock in microseconds, never at 0:
-- if the generation key is evicted, members of its old generations stay unreachable.
-- A generation that is not a plain integer (another Redis type, garbage) is
-- restarted the same way (healed 4), as are a member of another Redis type
-- (healed 1) and a lease that would outlive any lease this code grants (healed 2).
-- The member keys are built here but share KEYS[1]'s hash tag, so on Redis
-- Cluster they live in the slot KEYS[1] routed this call to.
local healed = 0
local gen = redis.pcall('GET', KEYS[1])
if type(gen) == 'table' or (gen and (string.len(gen) > 18 or not string.match(gen, '^%d+$'))) then
  redis.call('DEL', KEYS[1])
  gen = false
  healed = 4
end
if not gen then
  local now = redis.call('TIME')
  gen = now[1] .. string.format('%06d', tonumber(now[2]))
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[1], gen, 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], gen)
  end
end
local key = ARGV[1] .. ':v:' .. gen .. ':' .. ARGV[2]
local value = redis.pcall('GET', key)
if type(value) == 'table' and value.err then
  redis.call('DEL', key)
  healed = healed + 1
elseif value then
  return {1, gen, value}
end
local lease = ARGV[1] .. ':l:' .. gen .. ':' .. ARGV[2]
if redis.call('SET', lease, ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {2, gen, healed}
end
local left = redis.call('PTTL', lease)
if left == -1 or left > tonumber(ARGV[4]) then
  redis.call('SET', lease, ARGV[3], 'PX', ARGV[4])
  return {2, gen, healed + 2}
end
return {3, gen}
