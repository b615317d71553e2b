-- Give a member's lease back (the loader failed) if the caller still holds it.
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member, ARGV[3] generation, ARGV[4] token.
local lease = ARGV[1] .. ':l:' .. ARGV[3] .. ':' .. ARGV[2]
if redis.pcall('GET', lease) == ARGV[4] then
  return redis.call('DEL', lease)
end
return 0
