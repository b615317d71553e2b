-- Read a refresh-ahead value in one round trip: the value, and whether it is due
-- for a background refresh (taking the refresh lease if so), or take the fill
-- lease when the value is missing.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] meta ("<compute ms>[,<failures>]").
-- ARGV[1] lease token, ARGV[2] lease lifetime ms, ARGV[3] refresh window ms,
-- ARGV[4] XFetch factor beta * -ln(rand) (0: off), ARGV[5] refresh token,
-- ARGV[6] 'claim' (the hot-keys task: no value back, no lease on a miss) or ''.
-- Returns {1, value} fresh hit; {4, value, pttl} due, and ARGV[5] now holds the
-- lease (the caller schedules the refresh); {5, value, pttl} due, but a refresh
-- is pending or backing off; {2, healed} miss, lease granted; {3} busy; {0} a
-- claim of a missing value.
--
-- Due means: less than the window left (PTTL, the server's clock); or, with XFetch
-- on and a compute time (delta) known, instead of the window: XFetch's
-- now - delta * beta * ln(rand) >= expiry, i.e. delta * beta * -ln(rand) >= PTTL.
-- The refresh lease is the fill lease with an 'r:' token, so every write that
-- voids a fill (a DEL of the lease, a put, a generation bump) voids the refresh.
-- A reader that misses never waits on a refresh ('r:') or its backoff ('b:'): it
-- takes the lease over, and the refresh's fill is then refused.
local healed = 0
local claim = ARGV[6] == 'claim'
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'table' and value.err then
  redis.call('DEL', KEYS[1])
  healed = 1
elseif value then
  local pttl = redis.call('PTTL', KEYS[1])
  if claim then
    value = ''
  end
  if pttl < 0 then
    return {1, value}
  end
  local delta = 0
  local meta = redis.pcall('GET', KEYS[3])
  if type(meta) == 'string' then
    delta = tonumber(string.match(meta, '^(%d+)')) or 0
  end
  local xf = tonumber(ARGV[4])
  local due
  if xf > 0 and delta > 0 then
    due = delta * xf >= pttl
  else
    due = pttl < tonumber(ARGV[3])
  end
  if not due then
    return {1, value}
  end
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return {5, value, pttl}
  end
  redis.call('SET', KEYS[2], ARGV[5], 'PX', tonumber(ARGV[2]) + 2 * delta)
  return {4, value, pttl}
end
if claim then
  return {0}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, healed}
end
local holder = redis.pcall('GET', KEYS[2])
if type(holder) == 'string' and (string.sub(holder, 1, 2) == 'r:' or string.sub(holder, 1, 2) == 'b:') then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2, healed}
end
local left = redis.call('PTTL', KEYS[2])
if left == -1 or left > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2, healed + 2}
end
return {3}
