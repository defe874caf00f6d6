-- Placing a reservation across slots, step 3 of 3, in the slot of its record: every slot
-- held its lines (or the mode is partial) -> the reservation is held (record, expiry entry,
-- reservation.held, the idempotency answer 201); a slot refused -> the answer is 409 and
-- the record 'failed' until its holds are released (res_unhold, then res_finish); a slot
-- came too late or was undone -> 'aborted' (the key is free for a new try).
-- KEYS[1] idempotency record, KEYS[2] reservation hash, KEYS[3] expiry zset, KEYS[4]
-- recovery zset, KEYS[5] outbox of its group.
-- ARGV[1] request JSON (as reserve.lua), ARGV[2] JSON {grants, atps (per line, in order),
-- refused (bool), late (bool)}, ARGV[3] idempotency record TTL in ms.
-- Returns {outcome, status, payload}: 'held' / 201, 'insufficient' / 409, 'replay' (it was
-- decided before: the answer then), or {'aborted'}.

local idem_key, rec_key, expiry_key, recovery_key, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5]
local req = cjson.decode(ARGV[1])
local holds = cjson.decode(ARGV[2])
local idem_ttl = ARGV[3]

local rec = read_hash(rec_key)
if rec == nil or rec.st == 'aborted' then return {'aborted'} end
if rec.st ~= 'pending' then
  local earlier = redis.call('GET', idem_key)
  if earlier then
    local record = cjson.decode(earlier)
    if record.c ~= nil and record.h == req.h then return {'replay', record.c, record.b} end
  end
  return {'aborted'}
end
local ms = now_ms()
-- A failed or aborted placing is due in the recovery index at once: if the caller does not
-- release its holds (it dies), the sweeper's next round does.
if holds.late then
  redis.call('HSET', rec_key, 'st', 'aborted', 'up', ms)
  redis.call('ZADD', recovery_key, ms, req.id)
  local earlier = redis.call('GET', idem_key)
  if earlier and cjson.decode(earlier).r == req.id then redis.call('DEL', idem_key) end
  return {'aborted'}
end
local outcome, code, body = decide(idem_key, rec_key, expiry_key, outbox, req, holds.grants,
  holds.atps, holds.refused, ms, tonumber(rec.cr), idem_ttl)
if outcome == 'insufficient' then
  redis.call('HSET', rec_key, 'st', 'failed', 'up', ms)
  redis.call('ZADD', recovery_key, ms, req.id)
else
  redis.call('ZREM', recovery_key, req.id)
  redis.call('HDEL', rec_key, 'ik')
end
return {outcome, code, body}
