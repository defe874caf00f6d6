-- Bring a group's applied offsets (keys.applied_offsets) up to where a worker's batch ended,
-- for the partitions none of whose events reached this group lately. Sent only once the
-- batch was folded and its rejects dead-lettered: Redis keeps the order of writes in its
-- persistence and replication, so a state that has this mark has what came before it.
-- KEYS[1] the group's applied offsets.
-- ARGV[1] JSON array of [field, expected, offset, checkpoint] per partition: "expected" as
-- in fold.lua (below it, Redis lost writes: nothing is written and the reply is 'behind'),
-- "offset" the last offset of the batch on that partition, "checkpoint" the fingerprint of
-- the record there (kept in field "<field>#" as "<offset>:<fingerprint>").
-- Returns 'ok' or 'behind', then the offset now recorded for each partition, in order.

local rows = cjson.decode(ARGV[1])
local recorded = {}
local behind = false
for i, row in ipairs(rows) do
  recorded[i] = tonumber(redis.call('HGET', KEYS[1], row[1]) or '-1')
  if recorded[i] < row[2] then behind = true end
end
if behind then return {'behind', unpack(recorded)} end
local writes = {}
for i, row in ipairs(rows) do
  if row[3] >= recorded[i] then
    recorded[i] = row[3]
    writes[#writes + 1] = row[1]; writes[#writes + 1] = row[3]
    writes[#writes + 1] = row[1] .. '#'
    writes[#writes + 1] = string.format('%d', row[3]) .. ':' .. row[4]
  end
end
if #writes > 0 then redis.call('HSET', KEYS[1], unpack(writes)) end
return {'ok', unpack(recorded)}
