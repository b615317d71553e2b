-- Queue one write-behind write: store the row's new state and append it to the
-- model's durable queue, atomically (the caller's save returns after this reply).
-- KEYS[1] row state (hash), KEYS[2] queue (stream), KEYS[3] sequence, KEYS[4] row lease.
-- ARGV[1] max pending entries, ARGV[2] mode: 'full' (the whole row), 'merge' (some
-- fields of a row already in Redis), 'delete'; ARGV[3] layout fingerprint;
-- ARGV[4..] field, value pairs (JSON texts).
-- Returns {seq, queue length, entry id}; {-1, queue length} over the limit (nothing
-- written); {0} for 'merge' when the row is not in Redis (load it first); {-2} for a
-- row deleted by a queued write.
--
-- A row in Redis is a hash: '~s' the sequence of its latest write, '~f' its state
-- ('d' dirty: queued, not flushed; 'c' clean: what the database holds; 'x' deleted,
-- not flushed), '~v' the fingerprint, and one field per column. A dirty row has no
-- TTL: it is the only copy of an acknowledged write until the flush.
local length = redis.call('XLEN', KEYS[2])
if length >= tonumber(ARGV[1]) then
  return {-1, length}
end
if ARGV[2] == 'merge' then
  local flag = redis.pcall('HGET', KEYS[1], '~f')
  if type(flag) ~= 'string' or redis.call('HGET', KEYS[1], '~v') ~= ARGV[3] then
    return {0}
  end
  if flag == 'x' then
    return {-2}
  end
end
-- The sequence starts at the server clock in microseconds, never at 1: if Redis
-- loses it, new writes still order after every write the database already holds.
local n = redis.call('INCR', KEYS[3])
if n == 1 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[3], now[1] .. string.format('%06d', tonumber(now[2])))
  n = redis.call('INCR', KEYS[3])
end
-- As text. Below 2^53 the Lua number is exact and '%d' prints every digit (tostring
-- would use an exponent); beyond it only the server's own text is.
local seq
if n < 9007199254740992 then
  seq = string.format('%d', n)
else
  seq = redis.call('GET', KEYS[3])
end
-- A fill of the clean row read before this write must not land.
redis.call('DEL', KEYS[4])
local flag = 'd'
if ARGV[2] == 'delete' then
  flag = 'x'
end
-- The columns go from ARGV straight into each command (unpack), not through a table.
local id
if ARGV[2] == 'merge' then
  redis.call('HSET', KEYS[1], '~s', seq, '~f', flag, '~v', ARGV[3], unpack(ARGV, 4))
  redis.call('PERSIST', KEYS[1])
  id = redis.call('XADD', KEYS[2], '*', unpack(redis.call('HGETALL', KEYS[1])))
else
  -- The whole row: the new hash holds exactly these fields (and, new, no TTL).
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], '~s', seq, '~f', flag, '~v', ARGV[3], unpack(ARGV, 4))
  id = redis.call('XADD', KEYS[2], '*', '~s', seq, '~f', flag, '~v', ARGV[3], unpack(ARGV, 4))
end
return {seq, length + 1, id}
