-- Read a value, or take the fill lease when it is missing.
-- KEYS[1] value, KEYS[2] lease; ARGV[1] lease token, ARGV[2] lease lifetime (ms).
-- Returns {1, value} on a hit, {2, healed} when this caller now holds the lease and
-- must load and fill, {3} when another caller holds it (wait, then read again).
--
-- What is in Redis is not trusted blindly: a value key of another Redis type is
-- deleted (healed 1), and a lease that would outlive any lease this code grants (no
-- TTL, or a TTL above the lifetime: left by a restore or a hand edit) is replaced
-- (healed 2), so no reader ever waits on it for longer than the lease lifetime.
local healed = 0
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'table' and value.err then
  redis.call('DEL', KEYS[1])
  healed = 1
elseif value then
  return {1, value}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, healed}
end
local left = redis.call('PTTL', KEYS[2])
if left == -1 or left > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2, healed + 2}
end
return {3}
