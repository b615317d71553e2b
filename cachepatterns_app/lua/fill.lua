-- Store a loaded value only if the caller's lease is still the current one.
-- An invalidation deletes the lease, so a reader that loaded a row before a
-- concurrent write committed can never store that old row (no stale set).
-- KEYS[1] value, KEYS[2] lease; ARGV[1] token, ARGV[2] payload, ARGV[3] ttl ms (0: none).
local lease = redis.pcall('GET', KEYS[2])
if lease ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
