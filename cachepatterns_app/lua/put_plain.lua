-- Store a writer's value and void in-flight fills (they read before this write).
-- KEYS[1] value, KEYS[2] lease; ARGV[1] payload, ARGV[2] ttl ms (0: none).
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2])
return 1
