-- Fold one inbound inventory event into one item-site, atomically.
-- KEYS[1] position hash, KEYS[2] folded event ids (zset, score = fold time ms),
-- KEYS[3] outbox stream of the item-site's group.
-- ARGV[1] event JSON (see RedisStore._encode_event), ARGV[2] channel policies JSON,
-- ARGV[3] de-duplication window in ms.
-- An allocated delta with a reservation id ("rid") also gets KEYS[4] the reservation's
-- hash, KEYS[5] its group's expiry zset, KEYS[6] its group's outbox (consumption).
-- Returns {status, version, changes emitted, drift JSON or ''}; status is one of
-- 'folded', 'unchanged', 'duplicate', 'stale'.

local pos_key, seen_key, outbox = KEYS[1], KEYS[2], KEYS[3]
local ev = cjson.decode(ARGV[1])
local policies = cjson.decode(ARGV[2])
local window = tonumber(ARGV[3])
local ms = now_ms()
local today = math.floor(ms / 86400000)

-- Consumption: the WMS allocated units for an active reservation. Move what the line
-- still holds (at most the delta) from reserved to allocated, so they are not counted
-- twice; once every line is allocated the reservation is consumed. A reservation that
-- ended (or is unknown) leaves the allocation a plain one.
local function consume_reservation(pos)
  local res_key = KEYS[4]
  local flat = redis.call('HGETALL', res_key)
  if #flat == 0 then return end
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  if not (rec.st == 'confirmed' or (rec.st == 'held' and tonumber(rec.ex) > ms)) then return end
  local lines = cjson.decode(rec.ln)
  local moved = 0
  local every_line_allocated = true
  for _, line in ipairs(lines) do
    if line.s == ev.sku and line.t == ev.site and moved == 0 then
      moved = math.max(0, math.min(ev.d, line.r - line.a, pos.rs))
      line.a = line.a + moved
    end
    if line.a < line.r then every_line_allocated = false end
  end
  if moved == 0 then return end
  pos.rs = pos.rs - moved
  redis.call('HSET', pos_key, 'rs', pos.rs)
  local ln = cjson.encode(lines)
  if not every_line_allocated then
    redis.call('HSET', res_key, 'ln', ln, 'up', ms)
    return
  end
  redis.call('HSET', res_key, 'st', 'consumed', 'ex', '', 'up', ms, 'ln', ln)
  redis.call('ZREM', KEYS[5], ev.rid)
  redis.call('PEXPIRE', res_key, window)
  local event_lines = {}
  for i, line in ipairs(lines) do
    event_lines[i] = {sku = line.s, site = line.t, qty = line.q, reserved = line.r,
      allocated = line.a}
  end
  local ref = cjson.null
  if rec.rf ~= '' then ref = rec.rf end
  local corr = ev.corr
  if corr == nil or corr == cjson.null then corr = rec.co end
  emit(KEYS[6], ev.rid, {
    schema = 'atp.event.v1', type = 'reservation.consumed',
    event_id = 'res:' .. ev.rid .. ':consumed', occurred_at = iso8601(ms),
    correlation_id = corr, reservation_id = ev.rid, status = 'consumed',
    previous_status = rec.st, channel = rec.ch, order_ref = ref, mode = rec.md,
    allocation_event_id = ev.id, lines = event_lines,
  })
end

if redis.call('ZSCORE', seen_key, ev.id) then
  return {'duplicate', 0, 0, ''}
end
redis.call('ZADD', seen_key, ms, ev.id)
redis.call('ZREMRANGEBYSCORE', seen_key, '-inf', ms - window)
redis.call('PEXPIRE', seen_key, window)

local seq_field = 'q:' .. ev.src
if ev.seq >= 0 then
  local last = tonumber(redis.call('HGET', pos_key, seq_field) or '-1')
  if ev.seq <= last then
    return {'stale', 0, 0, ''}
  end
  redis.call('HSET', pos_key, seq_field, ev.seq)
end

local pos = load_position(pos_key)
local before = channel_atps(pos, policies, ev.site, today)
local changed = false
local drift_json = ''

if ev.k == 'd' then
  if ev.d ~= 0 then
    changed = true
    if ev.b == 'it' then
      local f = 't:' .. ev.eta
      local new = (pos.t[ev.eta] or 0) + ev.d
      if new == 0 then redis.call('HDEL', pos_key, f) else redis.call('HSET', pos_key, f, new) end
      pos.t[ev.eta] = new
    else
      pos[ev.b] = pos[ev.b] + ev.d
      redis.call('HSET', pos_key, ev.b, pos[ev.b])
      if ev.b == 'al' and ev.rid and ev.d > 0 and KEYS[4] then consume_reservation(pos) end
    end
  end
else
  -- Snapshot: set every bucket it carries; record what disagreed with the fold.
  local drift = {}
  local any_drift = false
  for bucket, qty in pairs(ev.q) do
    local folded
    if bucket == 'it' then folded = in_transit_total(pos) else folded = pos[bucket] end
    -- A bucket nothing was ever folded into is an initial load, not a disagreement.
    local known
    if bucket == 'it' then known = next(pos.t) ~= nil else known = pos.raw[bucket] ~= nil end
    if folded ~= qty and known then
      any_drift = true
      drift[BUCKET_NAMES[bucket]] = {folded = folded, snapshot = qty}
    end
    if bucket == 'it' then
      local same = true
      local wanted = ev.tq
      for eta, n in pairs(pos.t) do if wanted[eta] ~= n then same = false end end
      for eta, n in pairs(wanted) do if pos.t[eta] ~= n then same = false end end
      if not same then
        changed = true
        for eta, _ in pairs(pos.t) do redis.call('HDEL', pos_key, 't:' .. eta) end
        pos.t = {}
        for eta, n in pairs(wanted) do
          if n ~= 0 then
            redis.call('HSET', pos_key, 't:' .. eta, n)
            pos.t[eta] = n
          end
        end
      end
    elseif folded ~= qty then
      changed = true
      pos[bucket] = qty
      redis.call('HSET', pos_key, bucket, qty)
    end
  end
  if any_drift then
    local record = {event_id = ev.id, source = ev.src, detected_at = iso8601(ms), buckets = drift}
    drift_json = cjson.encode(record)
    redis.call('HSET', pos_key, 'dr', drift_json)
    emit(outbox, ev.sku .. '@' .. ev.site, {
      schema = 'atp.event.v1', type = 'inventory.drift_detected',
      event_id = 'drift:' .. ev.id, occurred_at = iso8601(ms),
      correlation_id = ev.corr or cjson.null,
      sku = ev.sku, site = ev.site, source = ev.src, snapshot_event_id = ev.id,
      buckets = drift,
    })
  end
end

if not changed then
  return {'unchanged', pos.v, 0, drift_json}
end

local version = redis.call('HINCRBY', pos_key, 'v', 1)
redis.call('HSET', pos_key, 'ts', ms)
pos.v, pos.ts = version, ms
announce(ev.sku, ev.site, pos)
local after = channel_atps(pos, policies, ev.site, today)
local n = emit_changes(outbox, before, after, ev.sku, ev.site, version, ms, ev.id, ev.corr)
return {'folded', version, n, drift_json}
