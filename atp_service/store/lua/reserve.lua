-- Place one reservation, atomically: idempotency check, every line's ATP check, the holds,
-- the record, its expiry entry and every event it causes, or nothing at all.
-- KEYS[1] idempotency record, KEYS[2] reservation hash, KEYS[3] expiry zset of its group,
-- KEYS[4] outbox of its group; then per line i: KEYS[3 + 2i] position hash,
-- KEYS[4 + 2i] outbox of the item-site's group.
-- ARGV[1] request JSON {id, ch, ref, md, ttl (ms), corr, h (fingerprint), ow (the name of
--         the API key asking: the reservation's owner), lines = [{s = sku, t = site, q = qty}]}
-- ARGV[2] the channel's policy (a one-element PolicyBook encoding), ARGV[3] every policy
-- (PolicyBook encoding, for availability.changed), ARGV[4] idempotency record TTL in ms.
-- Returns {outcome, http status, payload JSON, announced positions ('' if none)}; outcome
-- is 'held', 'insufficient', 'replay' (payload and status of the first call) or 'conflict'.

local idem_key, res_key, expiry_key, res_outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local req = cjson.decode(ARGV[1])
local pol = cjson.decode(ARGV[2])[1]
local policies = cjson.decode(ARGV[3])
local idem_ttl = ARGV[4]

local earlier = redis.call('GET', idem_key)
if earlier then
  local record = cjson.decode(earlier)
  if record.h ~= req.h then return {'conflict', 409, ''} end
  return {'replay', record.c, record.b}
end

local ms = now_ms()
local today = math.floor(ms / 86400000)
local positions, atps, granted = {}, {}, {}
local short = false
for i, line in ipairs(req.lines) do
  local pos = load_position(KEYS[3 + 2 * i])
  positions[i] = pos
  local atp = 0
  if sells_from(pol, line.t) then atp = site_atp(pos, pol, today) end
  atps[i] = atp
  local grant = line.q
  if atp < grant then
    grant = atp
    short = true
  end
  granted[i] = grant
end

if short and req.md == 'all_or_nothing' then
  local lines = {}
  for i, line in ipairs(req.lines) do
    lines[i] = {sku = line.s, site = line.t, qty = line.q, atp = atps[i]}
  end
  local body = cjson.encode({lines = lines})
  redis.call('SET', idem_key, cjson.encode({h = req.h, c = 409, b = body}), 'PX', idem_ttl)
  return {'insufficient', 409, body}
end

-- From here on every line changes: its announcements and events go out together.
begin_batch()
local corr = req.corr
local record_lines = {}
local event_lines = {}
for i, line in ipairs(req.lines) do
  local grant = granted[i]
  record_lines[i] = {s = line.s, t = line.t, q = line.q, r = grant, a = 0}
  event_lines[i] = {sku = line.s, site = line.t, qty = line.q, reserved = grant, allocated = 0}
  if grant > 0 then
    local pos_key = KEYS[3 + 2 * i]
    local pos = positions[i]
    local before = channel_atps(pos, policies, line.t, today)
    pos.rs = pos.rs + grant
    redis.call('HSET', pos_key, 'rs', pos.rs, 'ts', ms)
    local version = redis.call('HINCRBY', pos_key, 'v', 1)
    pos.v, pos.ts = version, ms
    announce(line.s, line.t, pos)
    local after = channel_atps(pos, policies, line.t, today)
    emit_changes(KEYS[4 + 2 * i], before, after, line.s, line.t, version, ms,
      req.id .. ':held:' .. i, corr)
  end
end

local expires = ms + tonumber(req.ttl)
local ln = cjson.encode(record_lines)
local fields = {
  st = 'held', ch = req.ch, rf = req.ref, md = req.md, cr = ms, ex = expires, up = ms,
  co = corr, ow = req.ow, ln = ln,
}
redis.call('HSET', res_key, 'st', fields.st, 'ch', fields.ch, 'rf', fields.rf, 'md', fields.md,
  'cr', ms, 'ex', expires, 'up', ms, 'co', corr, 'ow', req.ow, 'ln', ln)
redis.call('ZADD', expiry_key, expires, req.id)

local ref = cjson.null
if req.ref ~= '' then ref = req.ref end
emit(res_outbox, req.id, {
  schema = 'atp.event.v1', type = 'reservation.held',
  event_id = 'res:' .. req.id .. ':held', occurred_at = iso8601(ms),
  correlation_id = corr, reservation_id = req.id, status = 'held', owner = req.ow,
  channel = req.ch, order_ref = ref, mode = req.md, expires_at = iso8601(expires), lines = event_lines,
})

fields.id = req.id
local body = cjson.encode(fields)
redis.call('SET', idem_key, cjson.encode({h = req.h, c = 201, b = body}), 'PX', idem_ttl)
return {'held', 201, body, flush_batch()}
