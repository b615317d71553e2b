-- Remove a deleted row and block every put and fill of its primary key for a while
-- (the row's TTL), so a late put from before the delete cannot bring it back.
-- KEYS[1] value, KEYS[2] lease, KEYS[3] version; ARGV[1] tombstone ttl ms.
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], 'x', 'PX', ARGV[1])
return 1
