-- Confirm, release or expire reservations, atomically each, with the events they cause: one
-- reservation (a request), or many (an expiry sweep), whose announcements and events go
-- out together (one outbox entry per stream, one announcement).
-- ARGV[1] 'confirm' | 'release' | 'expire', ARGV[2] every policy (PolicyBook encoding),
-- ARGV[3] correlation id ('' = each reservation's own), ARGV[4] how long an ended
-- reservation is kept, in ms, ARGV[5] 1 to return each record, 0 not to, ARGV[6] the name
-- of the API key asking ('' = any reservation: a key with admin, the sweeper); then per
-- reservation j: ARGV[5 + 2j] its id, ARGV[6 + 2j] its number of lines n (as the caller read
-- them). Its keys, from where the previous reservation's end: its hash, the expiry zset and
-- the outbox of its group, then per line i (in the record's order) the position hash and
-- the outbox of the item-site's group (3 + 2n keys).
-- A held reservation whose TTL has passed is expired first, whatever was asked: expiry
-- does not depend on the sweeper having run.
-- Returns {the positions announced ('' if none), then per reservation: outcome, flat
-- HGETALL of the record (empty unless asked), 1 if this call expired it else 0}; outcome is
-- 'changed', 'unchanged' (an idempotent repeat, or nothing due), 'invalid', 'missing', or
-- 'error' with the message in place of the record (that reservation alone; the others go on).
-- A reservation of another key than ARGV[6] is 'missing', untouched, as an unknown one.

local action = ARGV[1]
local policies = cjson.decode(ARGV[2])
local asked_corr = ARGV[3]
local keep_ms = ARGV[4]
local want_record = ARGV[5] == '1'
local caller = ARGV[6]
if action ~= 'confirm' and action ~= 'release' and action ~= 'expire' then
  return redis.error_reply('transition.lua: unknown action ' .. action)
end
local ms = now_ms()
local today = math.floor(ms / 86400000)

-- One reservation, its keys from KEYS[base + 1]. Returns outcome, expired_now.
local function transition_one(base, rid, n_lines)
  local res_key, expiry_key, res_outbox = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  if redis.call('EXISTS', res_key) == 0 then
    redis.call('ZREM', expiry_key, rid)
    return 'missing', 0
  end

  local flat = redis.call('HGETALL', res_key)
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  if not owned_by(rec, caller) then return 'foreign', 0 end
  local corr = asked_corr
  if corr == '' then corr = rec.co end
  local lines = cjson.decode(rec.ln)
  if #lines ~= n_lines then
    error('transition.lua: ' .. rid .. ' has ' .. #lines .. ' lines, keys were given for '
      .. n_lines)
  end

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
      event_id = 'res:' .. rid .. ':' .. status, occurred_at = iso_of(ms),
      correlation_id = event_corr, reservation_id = rid, status = status,
      previous_status = rec.st, owner = owner_of(rec), channel = rec.ch, order_ref = ref, mode = rec.md,
      lines = event_lines,
    })
  end

  -- held/confirmed -> released/expired: give every line's unallocated units back.
  local function finish(status, event_corr)
    for i, line in ipairs(lines) do
      local holding = line.r - line.a
      if holding > 0 then
        local pos_key = KEYS[base + 2 + 2 * i]
        local pos = load_position(pos_key)
        local before = channel_atps(pos, policies, line.t, today)
        local give = math.min(holding, math.max(pos.rs, 0))
        pos.rs = pos.rs - give
        redis.call('HSET', pos_key, 'rs', pos.rs, 'ts', ms)
        local version = redis.call('HINCRBY', pos_key, 'v', 1)
        pos.v, pos.ts = version, ms
        announce(line.s, line.t, pos)
        local after = channel_atps(pos, policies, line.t, today)
        emit_changes(KEYS[base + 3 + 2 * i], before, after, line.s, line.t, version, ms,
          rid .. ':' .. status .. ':' .. i, event_corr)
      end
    end
    publish(status, event_corr)
    redis.call('HSET', res_key, 'st', status, 'ex', '', 'up', ms)
    redis.call('ZREM', expiry_key, rid)
    redis.call('PEXPIRE', res_key, keep_ms)
    rec.st = status
  end

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
  return outcome, expired_now
end

local count = (#ARGV - 6) / 2
local wanted_keys = 0
for j = 1, count do wanted_keys = wanted_keys + 3 + 2 * tonumber(ARGV[6 + 2 * j]) end
if wanted_keys ~= #KEYS then
  return redis.error_reply('transition.lua: expected ' .. wanted_keys .. ' keys')
end

-- What the transitions announce and publish goes out together (flush_batch below).
begin_batch()
local results = {}
local base = 0
for j = 1, count do
  local rid = ARGV[5 + 2 * j]
  local n_lines = tonumber(ARGV[6 + 2 * j])
  local ok, outcome, expired_now = pcall(transition_one, base, rid, n_lines)
  local at = #results
  if ok and outcome == 'foreign' then
    -- Told exactly as an unknown reservation is: 'missing', no record.
    results[at + 1] = 'missing'
    results[at + 2] = {}
    results[at + 3] = 0
  elseif ok then
    results[at + 1] = outcome
    if want_record then
      results[at + 2] = redis.call('HGETALL', KEYS[base + 1])
    else
      results[at + 2] = {}
    end
    results[at + 3] = expired_now
  else
    results[at + 1] = 'error'
    results[at + 2] = tostring(outcome)
    results[at + 3] = 0
  end
  base = base + 3 + 2 * n_lines
end
local announced = flush_batch()
table.insert(results, 1, announced)
return results
