-- Give a lease back (the loader failed) if the caller still holds it.
-- KEYS[1] lease; ARGV[1] token.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
