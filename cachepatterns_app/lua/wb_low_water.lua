-- The lowest sequence a write of this model that is still queued can carry: the
-- first stream entry's (entries are appended in the order their sequences are
-- drawn, in the same call), or, with nothing queued, one above the last sequence
-- drawn (every later write draws a higher one). A tombstone below it guards nothing.
-- KEYS[1] queue (stream), KEYS[2] sequence. Returns the sequence as text, or false
-- when it cannot be told (no sequence drawn yet, or an entry without one).
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first > 0 then
  local fields = first[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == '~s' then
      return fields[i + 1]
    end
  end
  return false
end
local last = redis.call('GET', KEYS[2])
if not last then
  return false
end
-- One above the last drawn, as text: below 2^53 the Lua number is exact.
local n = tonumber(last)
if n == nil or n >= 9007199254740992 then
  return false
end
return string.format('%d', n + 1)
