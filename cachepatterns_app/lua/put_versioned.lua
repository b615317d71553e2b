-- Store a row version: a writer's put, or a reader's fill.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] version.
-- ARGV[1] row version, ARGV[2] payload, ARGV[3] ttl ms (0: none),
-- ARGV[4] version-key ttl ms (0: none), ARGV[5] lease token ('' for a writer's put).
--
-- A writer's put is a check-and-set on the version key, which holds the highest
-- version stored, or 'x' after a delete (a tombstone): it never replaces a newer
-- version and never brings a deleted row back. It also voids any fill lease, so a
-- reader that loaded an older row meanwhile cannot store it.
--
-- A reader's fill needs its lease to be current. Every write since the lease was
-- taken voided it (puts, invalidations, tombstones all delete the lease), and every
-- write before was visible to the reader's query, so a fill holding a current lease
-- is at least as new as anything committed: it may replace a version key left
-- ahead by another database.
--
-- Nothing replaces a tombstone before it expires, not even such a fill: a row
-- created again under the same primary key starts its versions afresh, so a late
-- put from before the delete would look newer than it.
--
-- A version key that holds neither an integer nor 'x' (another Redis type, garbage)
-- is ignored and overwritten: comparing with it would fail the script for ever.
local current = redis.pcall('GET', KEYS[3])
if type(current) == 'table' or (current and current ~= 'x' and not tonumber(current)) then
  current = false
end
if ARGV[5] ~= '' then
  if redis.pcall('GET', KEYS[2]) ~= ARGV[5] then
    return 0
  end
  redis.call('DEL', KEYS[2])
  if current == 'x' then
    return 0
  end
else
  if current == 'x' or (current and tonumber(current) > tonumber(ARGV[1])) then
    return 0
  end
  redis.call('DEL', KEYS[2])
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
