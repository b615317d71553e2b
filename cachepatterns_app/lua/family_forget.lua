-- Forget one member of a family (its current generation's value and lease).
-- KEYS[1] generation key; ARGV[1] key base, ARGV[2] member.
local gen = redis.pcall('GET', KEYS[1])
if type(gen) ~= 'string' then
  return 0
end
return redis.call('DEL', ARGV[1] .. ':v:' .. gen .. ':' .. ARGV[2], ARGV[1] .. ':l:' .. gen .. ':' .. ARGV[2])
