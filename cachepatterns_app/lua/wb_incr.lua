-- Add to an integer column of a write-behind row in Redis and queue the new state.
-- KEYS[1] row state, KEYS[2] queue, KEYS[3] sequence, KEYS[4] row lease; KEYS[5],
-- optional, the mark of an increment recorded in the database while Redis was down
-- (ARGV[5] its lifetime in ms): added once, however often its replay runs.
-- ARGV[1] max pending, ARGV[2] fingerprint, ARGV[3] column, ARGV[4] amount.
-- Returns {seq, queue length, entry id, new value}; {-1, length} over the limit;
-- {0} the row is not in Redis (load it first); {-2} deleted; {-3, error} the column
-- cannot take it (NULL, not an integer, or the sum would overflow); {-4} already added;
-- {-5, error} Redis refused the write (OOM at maxmemory, READONLY, NOREPLICAS, MISCONF):
-- nothing was changed.
if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1 then
  return {-4}
end
local length = redis.call('XLEN', KEYS[2])
if length >= tonumber(ARGV[1]) then
  return {-1, length}
end
local flag = redis.pcall('HGET', KEYS[1], '~f')
if type(flag) ~= 'string' or redis.call('HGET', KEYS[1], '~v') ~= ARGV[2] then
  return {0}
end
if flag == 'x' then
  return {-2}
end
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then
  return {-3, 'no such column'}
end
-- The script's first write: whatever it refuses, nothing has changed yet.
local value = redis.pcall('HINCRBY', KEYS[1], ARGV[3], ARGV[4])
if type(value) == 'table' then
  -- The column's own refusals; anything else (OOM, READONLY on a demoted master,
  -- NOREPLICAS, MISCONF) is Redis refusing the write itself, with nothing changed.
  if string.find(value.err, 'not an integer', 1, true) or string.find(value.err, 'overflow', 1, true) then
    return {-3, value.err}
  end
  return {-5, value.err}
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[3], now[1] .. string.format('%06d', tonumber(now[2])))
end
redis.call('INCR', KEYS[3])
local seq = redis.call('GET', KEYS[3])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], '~s', seq, '~f', 'd')
redis.call('PERSIST', KEYS[1])
local id = redis.call('XADD', KEYS[2], '*', unpack(redis.call('HGETALL', KEYS[1])))
if KEYS[5] then
  redis.call('SET', KEYS[5], '1', 'PX', ARGV[5])
end
return {seq, length + 1, id, value}
