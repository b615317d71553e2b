-- After a flush committed the write with sequence ARGV[1]: if it is still the row's
-- latest, the row is clean now (it expires like any cached row) or, if deleted, gone.
-- A later write left the row dirty, and it stays so.
-- KEYS[1] row state; ARGV[1] seq, ARGV[2] ttl ms (0: none).
if redis.pcall('HGET', KEYS[1], '~s') ~= ARGV[1] then
  return 0
end
if redis.call('HGET', KEYS[1], '~f') == 'x' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], '~f', 'c')
  if tonumber(ARGV[2]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return 1
