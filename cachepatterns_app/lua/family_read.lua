-- Read a family member in one round trip: the family's generation and the member
-- stored under that generation, or take the member's fill lease.
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member, ARGV[3] lease token,
-- ARGV[4] lease lifetime ms, ARGV[5] generation-key ttl ms (0: none).
-- A missing generation starts at the server's clock in microseconds, never at 0:
-- if the generation key is evicted, members of its old generations stay unreachable.
-- The member keys are built here but share KEYS[1]'s hash tag, so on Redis
-- Cluster they live in the slot KEYS[1] routed this call to.
local gen = redis.call('GET', KEYS[1])
if not gen then
  local now = redis.call('TIME')
  gen = now[1] .. string.format('%06d', tonumber(now[2]))
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[1], gen, 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], gen)
  end
end
local value = redis.call('GET', ARGV[1] .. ':v:' .. gen .. ':' .. ARGV[2])
if value then
  return {1, gen, value}
end
if redis.call('SET', ARGV[1] .. ':l:' .. gen .. ':' .. ARGV[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {2, gen}
end
return {3, gen}
