-- Store a clean row loaded from the database, if the caller still holds the lease and
-- no write reached Redis meanwhile (a queued write is newer than any database read).
-- KEYS[1] row state, KEYS[2] lease; ARGV[1] token, ARGV[2] ttl ms (0: none),
-- ARGV[3..] field, value pairs ('~s' the row's sequence in the database, '~v', columns).
if redis.pcall('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local fields = {'~f', 'c'}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
