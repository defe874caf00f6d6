-- Placing a reservation across slots, step 1 of 3, in the slot of its idempotency record
-- (which is its own): claim the key and write the record as 'pending', with a deadline in
-- the recovery index (so the sweeper ends what a process that dies leaves behind).
-- KEYS[1] idempotency record, KEYS[2] reservation hash, KEYS[3] recovery zset of its group.
-- ARGV[1] request JSON (as reserve.lua), ARGV[2] idempotency record TTL in ms, ARGV[3] how
-- long the placing may take, in ms (after it, holds are refused and the sweeper aborts it).
-- Returns {'begun', deadline}, {'resume', deadline} (this id is being placed already: go
-- on with it), {'other', id} (the key is being placed under that id), {'replay', status,
-- payload}, {'conflict'} or {'busy'} (being placed, past its deadline: the sweeper ends it).

local idem_key, rec_key, recovery_key = KEYS[1], KEYS[2], KEYS[3]
local req = cjson.decode(ARGV[1])
local ms = now_ms()

local earlier = redis.call('GET', idem_key)
if earlier then
  local record = cjson.decode(earlier)
  if record.h ~= req.h then return {'conflict'} end
  if record.c ~= nil then return {'replay', record.c, record.b} end
  if record.r ~= req.id then return {'other', record.r} end
  local st, dl = unpack(redis.call('HMGET', rec_key, 'st', 'dl'))
  if st == 'pending' and tonumber(dl) > ms then return {'resume', tonumber(dl)} end
  return {'busy'}
end

local deadline = ms + tonumber(ARGV[3])
redis.call('SET', idem_key, cjson.encode({h = req.h, r = req.id}), 'PX', ARGV[2])
local lines = {}
for i, line in ipairs(req.lines) do lines[i] = {s = line.s, t = line.t, q = line.q, g = line.g} end
redis.call('HSET', rec_key, 'st', 'pending', 'ch', req.ch, 'rf', req.ref, 'md', req.md,
  'cr', ms, 'up', ms, 'co', req.corr, 'ow', req.ow, 'ln', cjson.encode(lines), 'dl', deadline,
  'ik', idem_key)
redis.call('ZADD', recovery_key, deadline, req.id)
return {'begun', deadline}
