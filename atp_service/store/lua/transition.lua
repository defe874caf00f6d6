-- Confirm, release or expire reservations whose keys all share a slot (every reservation on
-- a single Redis), atomically each, with the events they cause: one reservation (a
-- request), or many (an expiry sweep), whose announcements and events go out together
-- (one outbox entry per stream, one announcement). Every step of the cross-slot scripts
-- (res_transition, res_unhold, res_finish) at once: see _holds.lua.
-- ARGV[1] 'confirm' | 'release' | 'expire' | 'consume', ARGV[2] every policy (PolicyBook
-- encoding), ARGV[3] correlation id ('' = each reservation's own), ARGV[4] how long an ended
-- reservation is kept, in ms, ARGV[5] 1 to return each record, 0 not to, ARGV[6] the name
-- of the API key asking ('' = any reservation: a key with admin, the sweeper); then per
-- reservation j: ARGV[5 + 2j] its id, ARGV[6 + 2j] its number of lines n (as the caller
-- read them). Its keys, from where the previous reservation's end: its hash, the expiry zset
-- and the outbox of its group, then per line i (in the record's order) the position hash,
-- the outbox of the item-site's group and the reservation's hold in that group (3 + 3n).
-- A held reservation whose TTL has passed is expired first, whatever was asked.
-- Returns {the positions announced ('' if none), then per reservation: outcome, flat
-- HGETALL of the record (empty unless asked), 1 if this call expired it else 0, its lines'
-- allocations JSON}; outcome is 'changed', 'unchanged' (an idempotent repeat, or nothing
-- due), 'invalid', 'missing', or 'error' with the message in place of the record (that
-- reservation alone; the others go on). A reservation of another key than ARGV[6] is
-- 'missing', untouched, as an unknown one.

local action = ARGV[1]
local policies = cjson.decode(ARGV[2])
local asked_corr = ARGV[3]
local keep_ms = ARGV[4]
local want_record = ARGV[5] == '1'
local caller = ARGV[6]
if action ~= 'confirm' and action ~= 'release' and action ~= 'expire' and action ~= 'consume' then
  return redis.error_reply('transition.lua: unknown action ' .. action)
end
local ms = now_ms()
local today = math.floor(ms / 86400000)
local WANTED = {confirm = 'confirmed', release = 'released', expire = 'expired',
  consume = 'consumed'}

-- One reservation, its keys from KEYS[base + 1]. Returns outcome, expired_now, allocations.
local function transition_one(base, rid, n_lines)
  local rec_key, expiry_key, res_outbox = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local rec = read_hash(rec_key)
  if rec == nil then
    redis.call('ZREM', expiry_key, rid)
    return 'missing', 0, {}
  end
  rec.id = rid
  local lines = record_lines(rec)
  if #lines ~= n_lines then
    error('transition.lua: ' .. rid .. ' has ' .. #lines .. ' lines, keys were given for '
      .. n_lines)
  end
  -- The holds, by key, with the keys of their lines; what each line has allocated.
  local holds, order, alloc = {}, {}, {}
  for i = 1, n_lines do
    local at = base + 3 * i
    local hold_key = KEYS[at + 3]
    if holds[hold_key] == nil then
      holds[hold_key] = {}
      order[#order + 1] = hold_key
    end
    local keys = holds[hold_key]
    keys[#keys + 1] = {KEYS[at + 1], KEYS[at + 2]}
    alloc[i] = 0
  end
  local read = {}
  for _, hold_key in ipairs(order) do
    local hold = read_hash(hold_key)
    read[hold_key] = hold
    if hold and hold.ln then
      for _, line in ipairs(cjson.decode(hold.ln)) do alloc[line.i] = line.a end
    end
  end
  if rec.st == 'released' or rec.st == 'expired' or rec.st == 'consumed' then
    for i, line in ipairs(lines) do alloc[i] = line.a or 0 end
  end
  local corr = asked_corr
  if corr == '' then corr = rec.co end
  local outcome, expired_now = begin_transition(rec_key, expiry_key, nil, res_outbox, rec,
    action, corr, ms, 0, alloc, caller)
  if outcome == 'missing' then return 'foreign', 0, {} end
  if outcome == 'start' or outcome == 'unhold' then
    local label = ({releasing = 'released', expiring = 'expired', consuming = 'consumed'})[rec.st]
    local event_corr = rec.tc
    if event_corr == nil or event_corr == '' then event_corr = rec.co end
    -- One script: no step reads a released hold again (the record keeps its lines).
    for _, hold_key in ipairs(order) do
      local _, held = release_hold(hold_key, rid, holds[hold_key], label, policies, today, ms,
        event_corr, 0, keep_ms, read[hold_key])
      for _, line in ipairs(held) do alloc[line.i] = line.a end
    end
    finish(rec_key, expiry_key, nil, res_outbox, rec, alloc, ms, keep_ms)
    if rec.st == WANTED[action] and outcome == 'start' then outcome = 'changed'
    elseif rec.st == WANTED[action] then outcome = 'unchanged'
    elseif action == 'expire' then outcome = 'unchanged'
    else outcome = 'invalid' end
  end
  return outcome, expired_now, alloc
end

local count = (#ARGV - 6) / 2
local wanted_keys = 0
for j = 1, count do wanted_keys = wanted_keys + 3 + 3 * tonumber(ARGV[6 + 2 * j]) end
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
  local ok, outcome, expired_now, alloc = pcall(transition_one, base, rid, n_lines)
  local at = #results
  if ok and outcome == 'foreign' then
    -- Told exactly as an unknown reservation is: 'missing', no record.
    results[at + 1] = 'missing'
    results[at + 2] = {}
    results[at + 3] = 0
    results[at + 4] = '[]'
  elseif ok then
    results[at + 1] = outcome
    if want_record then
      results[at + 2] = redis.call('HGETALL', KEYS[base + 1])
    else
      results[at + 2] = {}
    end
    results[at + 3] = expired_now
    results[at + 4] = cjson.encode(alloc)
  else
    results[at + 1] = 'error'
    results[at + 2] = tostring(outcome)
    results[at + 3] = 0
    results[at + 4] = '[]'
  end
  base = base + 3 + 3 * n_lines
end
local announced = flush_batch()
table.insert(results, 1, announced)
return results
