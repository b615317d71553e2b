-- Store a row only if it is not older than what the cache has seen.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] version.
-- ARGV[1] row version, ARGV[2] payload, ARGV[3] ttl ms (0: none),
-- ARGV[4] version-key ttl ms (0: none), ARGV[5] lease token ('' for a writer's put).
-- The version key holds the highest version stored, or 'x' after a delete
-- (a tombstone): a late put from a writer that committed before the delete must
-- not bring the row back. A reader's fill with a valid lease started after the
-- delete committed, so it may replace a tombstone (the row was created again).
local current = redis.call('GET', KEYS[3])
if ARGV[5] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[5] then
    return 0
  end
  redis.call('DEL', KEYS[2])
elseif current == 'x' then
  return 0
end
if current and current ~= 'x' and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[3], ARGV[1])
end
return 1
