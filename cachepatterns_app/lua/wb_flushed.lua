-- After a flush committed: for each row whose latest write is still the one with the
-- sequence given, the row is clean now (it expires like any cached row) or, if
-- deleted, gone. A row written again meanwhile stays dirty.
-- KEYS[i] row state; ARGV[1] ttl ms (0: none), ARGV[i + 1] the sequence flushed for KEYS[i].
-- All rows of a model share one hash tag, so one call covers a whole batch.
local cleaned = 0
for i = 1, #KEYS do
  local row = redis.pcall('HMGET', KEYS[i], '~s', '~f')
  if type(row) == 'table' and row[1] == ARGV[i + 1] then
    if row[2] == 'x' then
      redis.call('DEL', KEYS[i])
    else
      -- The expiry first, and the mark through pcall: at maxmemory Redis refuses HSET but
      -- not PEXPIRE, and the expiry is what frees the memory (the state is the database's
      -- now, so a row still marked dirty may expire too).
      if tonumber(ARGV[1]) > 0 then
        redis.call('PEXPIRE', KEYS[i], ARGV[1])
      end
      redis.pcall('HSET', KEYS[i], '~f', 'c')
    end
    cleaned = cleaned + 1
  end
end
return cleaned
