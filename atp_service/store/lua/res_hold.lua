-- Placing a reservation across slots, step 2 of 3, in each slot its lines live in: check
-- and hold that slot's lines, atomically (all_or_nothing: every line of the slot or none).
-- Idempotent per reservation: a hold made (or refused) before answers as it did.
-- KEYS[1] the reservation's hold in this group, then per line: position hash, outbox.
-- ARGV[1] JSON {id, md, corr, dl (the placing's deadline, ms), lines = [{i, s, t, q}]},
-- ARGV[2] the channel's policy, ARGV[3] every policy, ARGV[4] how long a refusal or a void
-- mark is kept, in ms.
-- Returns {outcome, announced ('' if none), atps JSON, grants JSON}; outcome 'held',
-- 'refused' (all_or_nothing, a line short: nothing held), 'void' (the reservation is being
-- undone: nothing held) or 'late' (past the deadline: nothing held, and never will be).

local hold_key = KEYS[1]
local req = cjson.decode(ARGV[1])
local tomb_ms = ARGV[4]

local hold = read_hash(hold_key)
if hold ~= nil then
  if hold.st ~= 'held' and hold.st ~= 'refused' then return {'void', '', '[]', '[]'} end
  local grants = {}
  for j, line in ipairs(cjson.decode(hold.ln)) do grants[j] = line.r end
  return {hold.st, '', hold.at, cjson.encode(grants)}
end

local ms = now_ms()
if ms > tonumber(req.dl) then
  redis.call('HSET', hold_key, 'st', 'void')
  redis.call('PEXPIRE', hold_key, tomb_ms)
  return {'late', '', '[]', '[]'}
end
local today = math.floor(ms / 86400000)
local pol = cjson.decode(ARGV[2])[1]
local policies = cjson.decode(ARGV[3])
local lines, positions = {}, {}
for j, line in ipairs(req.lines) do
  lines[j] = {i = line.i, s = line.s, t = line.t, q = line.q, pos_key = KEYS[2 * j],
    outbox = KEYS[2 * j + 1]}
  positions[j] = load_position(KEYS[2 * j])
end
local atps, grants, short = check_lines(lines, positions, pol, today)
if short and req.md == 'all_or_nothing' then
  local refused = {}
  for j, line in ipairs(lines) do
    refused[j] = {i = line.i, s = line.s, t = line.t, q = line.q, r = 0, a = 0}
  end
  redis.call('HSET', hold_key, 'st', 'refused', 'ln', cjson.encode(refused), 'at',
    cjson.encode(atps))
  redis.call('PEXPIRE', hold_key, tomb_ms)
  return {'refused', '', cjson.encode(atps), cjson.encode(grants)}
end
begin_batch()
hold_lines(hold_key, req.id, lines, positions, grants, atps, policies, today, ms, req.corr)
return {'held', flush_batch(), cjson.encode(atps), cjson.encode(grants)}
