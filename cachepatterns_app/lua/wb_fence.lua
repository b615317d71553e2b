-- A write reached the database outside the queue (save(sync=True), update(), a
-- delete, a dead-lettered write) with sequence ARGV[1]: drop the row's state in Redis
-- unless a later write is queued, so that reads go to the database. Queued writes
-- older than ARGV[1] are skipped by the flush (the database row holds a newer seq).
-- ARGV[1] '' drops the row only if it is clean (an explicit invalidate()); ARGV[2]
-- 'clean' drops a clean row whatever its sequence too (a fence: the database row was
-- written while Redis was unreachable, after whatever a clean copy holds).
-- KEYS[1] row state, KEYS[2] lease; ARGV[1] seq or ''.
local seq = redis.pcall('HGET', KEYS[1], '~s')
if type(seq) ~= 'string' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
if ARGV[1] == '' or ARGV[2] == 'clean' then
  if redis.call('HGET', KEYS[1], '~f') == 'c' then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 1
  end
  if ARGV[1] == '' then
    return 0
  end
end
if tonumber(seq) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
