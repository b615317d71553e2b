-- Read a write-behind row's state, or take the fill lease when it is not in Redis.
-- KEYS[1] row state, KEYS[2] lease; ARGV[1] token, ARGV[2] lease lifetime ms.
-- Returns {1, fields} ({'~s', seq, '~f', flag, ...}); {2, healed} with the lease;
-- {3} while another caller holds it. A key of another type is deleted (healed 1), a
-- lease no code could have granted is replaced (healed 2), as in read.lua.
local healed = 0
local state = redis.pcall('HGETALL', KEYS[1])
if state.err then
  redis.call('DEL', KEYS[1])
  healed = 1
elseif #state > 0 then
  return {1, state}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, healed}
end
local left = redis.call('PTTL', KEYS[2])
if left == -1 or left > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2, healed + 2}
end
return {3}
