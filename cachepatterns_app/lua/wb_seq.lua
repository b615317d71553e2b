-- Draw one sequence number for a write that goes to the database directly.
-- KEYS[1] sequence. Returns it (as text).
if redis.call('EXISTS', KEYS[1]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])))
end
redis.call('INCR', KEYS[1])
return redis.call('GET', KEYS[1])
