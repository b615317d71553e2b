-- The line between the writes queued before a direct write made while Redis was
-- unreachable and those queued after it: for each time ARGV[i] (ms since the epoch, on
-- Redis's clock), the sequence of the last write in the queue before that millisecond
-- ('0' if the queue holds none). Sequences and entry ids are drawn in the same script, so
-- every write queued later has a higher sequence.
-- KEYS[1] queue (stream). Returns the sequences, as text.
local out = {}
for i = 1, #ARGV do
  local ms = tonumber(ARGV[i])
  local seq = '0'
  if ms > 0 then
    local found = redis.call('XREVRANGE', KEYS[1], string.format('%d', ms - 1) .. '-18446744073709551615', '-', 'COUNT', 1)
    if #found > 0 then
      local fields = found[1][2]
      for j = 1, #fields, 2 do
        if fields[j] == '~s' then
          seq = fields[j + 1]
          break
        end
      end
    end
  end
  out[i] = seq
end
return out
