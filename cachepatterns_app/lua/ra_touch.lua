-- Count one sampled read of a refresh-ahead key in the deployment's hot set, a
-- sorted set kept to at most ARGV[2] members (plus a tenth, so that the trim runs
-- once per many touches): the coldest members are dropped.
-- KEYS[1] hot set; ARGV[1] member, ARGV[2] capacity. Returns the set's size.
redis.call('ZINCRBY', KEYS[1], 1, ARGV[1])
local capacity = tonumber(ARGV[2])
local size = redis.call('ZCARD', KEYS[1])
if size > capacity + math.ceil(capacity / 10) then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, size - capacity - 1)
  size = capacity
end
return size
