-- Read a value, or take the fill lease when it is missing.
-- KEYS[1] value, KEYS[2] lease; ARGV[1] lease token, ARGV[2] lease lifetime (ms).
-- Returns {1, value} on a hit, {2} when this caller now holds the lease and
-- must load and fill, {3} when another caller holds it (wait, then read again).
local value = redis.call('GET', KEYS[1])
if value then
  return {1, value}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
return {3}
