-- Invalidate every member of a family at once by moving to the next generation.
-- A missing generation is left missing: the next read starts a fresh one.
-- KEYS[1] generation key.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCR', KEYS[1])
end
return 0
