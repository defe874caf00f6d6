-- Confirm, release or expire one reservation, atomically, with the events it causes.
-- KEYS[1] reservation hash, KEYS[2] expiry zset of its group, KEYS[3] outbox of its group;
-- then per line i (in the record's order): KEYS[2 + 2i] position hash, KEYS[3 + 2i] outbox
-- of the item-site's group.
-- ARGV[1] reservation id, ARGV[2] 'confirm' | 'release' | 'expire', ARGV[3] every policy
-- (PolicyBook encoding), ARGV[4] correlation id ('' = the reservation's own),
-- ARGV[5] how long an ended reservation is kept, in ms.
-- A held reservation whose TTL has passed is expired first, whatever was asked: expiry
-- does not depend on the sweeper having run.
-- Returns {outcome, flat HGETALL of the record, 1 if this call expired it else 0,
-- the positions it announced ('' if none)};
-- outcome is 'changed', 'unchanged' (an idempotent repeat, or nothing due), 'invalid'
-- or 'missing'.

local res_key, expiry_key, res_outbox = KEYS[1], KEYS[2], KEYS[3]
local rid, action = ARGV[1], ARGV[2]
local policies = cjson.decode(ARGV[3])
local keep_ms = ARGV[5]
if action ~= 'confirm' and action ~= 'release' and action ~= 'expire' then
  return redis.error_reply('transition.lua: unknown action ' .. action)
end

if redis.call('EXISTS', res_key) == 0 then
  redis.call('ZREM', expiry_key, rid)
  return {'missing', {}, 0, ''}
end

local flat = redis.call('HGETALL', res_key)
local rec = {}
for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
local corr = ARGV[4]
if corr == '' then corr = rec.co end
local lines = cjson.decode(rec.ln)
if #KEYS ~= 3 + 2 * #lines then
  return redis.error_reply('transition.lua: expected ' .. (3 + 2 * #lines) .. ' keys')
end
local ms = now_ms()
local today = math.floor(ms / 86400000)

local function publish(status, event_corr)
  local ref = cjson.null
  if rec.rf ~= '' then ref = rec.rf end
  local event_lines = {}
  for i, line in ipairs(lines) do
    event_lines[i] = {sku = line.s, site = line.t, qty = line.q, reserved = line.r,
      allocated = line.a}
  end
  emit(res_outbox, rid, {
    schema = 'atp.event.v1', type = 'reservation.' .. status,
    event_id = 'res:' .. rid .. ':' .. status, occurred_at = iso8601(ms),
    correlation_id = event_corr, reservation_id = rid, status = status,
    previous_status = rec.st, channel = rec.ch, order_ref = ref, mode = rec.md,
    lines = event_lines,
  })
end

-- held/confirmed -> released/expired: give every line's unallocated units back.
local function finish(status, event_corr)
  for i, line in ipairs(lines) do
    local holding = line.r - line.a
    if holding > 0 then
      local pos_key = KEYS[2 + 2 * i]
      local pos = load_position(pos_key)
      local before = channel_atps(pos, policies, line.t, today)
      local give = math.min(holding, math.max(pos.rs, 0))
      pos.rs = pos.rs - give
      redis.call('HSET', pos_key, 'rs', pos.rs, 'ts', ms)
      local version = redis.call('HINCRBY', pos_key, 'v', 1)
      pos.v, pos.ts = version, ms
      announce(line.s, line.t, pos)
      local after = channel_atps(pos, policies, line.t, today)
      emit_changes(KEYS[3 + 2 * i], before, after, line.s, line.t, version, ms,
        rid .. ':' .. status .. ':' .. i, event_corr)
    end
  end
  publish(status, event_corr)
  redis.call('HSET', res_key, 'st', status, 'ex', '', 'up', ms)
  redis.call('ZREM', expiry_key, rid)
  redis.call('PEXPIRE', res_key, keep_ms)
  rec.st = status
end

-- What the transition announces and publishes goes out together (flush_batch below).
begin_batch()
local outcome = 'unchanged'
local expired_now = 0
if rec.st == 'held' and tonumber(rec.ex) <= ms then
  -- Expiry events carry the correlation id of the request that made the reservation.
  finish('expired', rec.co)
  expired_now = 1
  if action == 'expire' then outcome = 'changed' end
end

if action == 'confirm' then
  if rec.st == 'held' then
    publish('confirmed', corr)
    redis.call('HSET', res_key, 'st', 'confirmed', 'ex', '', 'up', ms)
    redis.call('ZREM', expiry_key, rid)
    outcome = 'changed'
  elseif rec.st ~= 'confirmed' then
    outcome = 'invalid'
  end
elseif action == 'release' then
  if rec.st == 'held' or rec.st == 'confirmed' then
    finish('released', corr)
    outcome = 'changed'
  elseif rec.st ~= 'released' then
    outcome = 'invalid'
  end
elseif rec.st ~= 'held' then  -- expire
  redis.call('ZREM', expiry_key, rid)
end

local announced = flush_batch()
return {outcome, redis.call('HGETALL', res_key), expired_now, announced}
