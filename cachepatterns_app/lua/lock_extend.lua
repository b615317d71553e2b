-- Extend a lock if the caller still holds it.
-- KEYS[1] lock; ARGV[1] token; ARGV[2] new lifetime in ms. Returns 1 if extended, 0 if
-- the lock lapsed (or another holder has it now): the caller must stop.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
