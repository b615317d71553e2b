-- How far behind a model's write-behind queue is, in one call (the flush asks after
-- every run): KEYS[1] the queue (stream).
-- Returns {oldest entry id or false, server time seconds, microseconds, queue length}.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = false
if #first > 0 then
  oldest = first[1][1]
end
local now = redis.call('TIME')
return {oldest, now[1], now[2], redis.call('XLEN', KEYS[1])}
