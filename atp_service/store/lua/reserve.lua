-- Place one reservation whose keys all share a slot (every reservation on a single Redis;
-- on a Cluster, one whose lines and idempotency record share one), atomically: the
-- idempotency check, every line's ATP check, the holds, the record, its expiry entry and
-- every event it causes, or nothing at all. (Across slots: res_begin, res_hold, res_decide.)
-- KEYS[1] idempotency record, KEYS[2] reservation hash, KEYS[3] expiry zset of its group,
-- KEYS[4] outbox of its group; then per line i: KEYS[2 + 3i] position hash, KEYS[3 + 3i]
-- outbox of the item-site's group, KEYS[4 + 3i] the reservation's hold in that group.
-- ARGV[1] request JSON {id, ch, ref, md, ttl (ms), corr, h (fingerprint),
--         lines = [{s = sku, t = site, q = qty, g = group}]}
-- ARGV[2] the channel's policy (a one-element PolicyBook encoding), ARGV[3] every policy
-- (PolicyBook encoding, for availability.changed), ARGV[4] idempotency record TTL in ms.
-- Returns {outcome, http status, payload JSON, announced positions ('' if none)}; outcome
-- is 'held', 'insufficient', 'replay' (payload and status of the first call), 'conflict'
-- or 'busy' (the key's first request is still being placed across slots).

local idem_key, rec_key, expiry_key, res_outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local req = cjson.decode(ARGV[1])
local pol = cjson.decode(ARGV[2])[1]
local policies = cjson.decode(ARGV[3])
local idem_ttl = ARGV[4]

local earlier = redis.call('GET', idem_key)
if earlier then
  local record = cjson.decode(earlier)
  if record.h ~= req.h then return {'conflict', 409, ''} end
  if record.c == nil then return {'busy', 503, ''} end
  return {'replay', record.c, record.b}
end

local ms = now_ms()
local today = math.floor(ms / 86400000)
local positions = {}
for i, _ in ipairs(req.lines) do positions[i] = load_position(KEYS[2 + 3 * i]) end
local atps, grants, short = check_lines(req.lines, positions, pol, today)
local refused = short and req.md == 'all_or_nothing'
if refused then
  local outcome, code, body = decide(idem_key, rec_key, expiry_key, res_outbox, req, grants,
    atps, true, ms, ms, idem_ttl)
  return {outcome, code, body}
end

-- From here on every line changes: its announcements and events go out together.
begin_batch()
local groups, order = {}, {}
for i, line in ipairs(req.lines) do
  local hold_key = KEYS[4 + 3 * i]
  local group = groups[hold_key]
  if group == nil then
    group = {lines = {}, positions = {}, grants = {}, atps = {}}
    groups[hold_key] = group
    order[#order + 1] = hold_key
  end
  local n = #group.lines + 1
  group.lines[n] = {i = i, s = line.s, t = line.t, q = line.q, pos_key = KEYS[2 + 3 * i],
    outbox = KEYS[3 + 3 * i]}
  group.positions[n], group.grants[n], group.atps[n] = positions[i], grants[i], atps[i]
end
for _, hold_key in ipairs(order) do
  local group = groups[hold_key]
  hold_lines(hold_key, req.id, group.lines, group.positions, group.grants, nil, policies,
    today, ms, req.corr)
end
local outcome, code, body = decide(idem_key, rec_key, expiry_key, res_outbox, req, grants, atps,
  false, ms, ms, idem_ttl)
return {outcome, code, body, flush_batch()}
