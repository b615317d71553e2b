-- Invalidate every member of a family at once by moving to the next generation,
-- and return the new generation (0: the family had none, nothing to invalidate).
-- A generation that is not a plain integer is deleted instead (-1): readers then
-- restart it from the server's clock, and its members become unreachable. An INCR
-- on it would fail and leave the family frozen.
-- KEYS[1] generation key.
local gen = redis.pcall('GET', KEYS[1])
if not gen then
  return 0
end
if type(gen) == 'table' or string.len(gen) > 18 or not string.match(gen, '^%d+$') then
  redis.call('DEL', KEYS[1])
  return -1
end
return redis.call('INCR', KEYS[1])
