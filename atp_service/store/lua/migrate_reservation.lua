-- Give a reservation of an earlier release its holds (a single Redis only, where such a
-- record can exist): its lines' units were counted in the record itself; now they are in a
-- hold per group (_holds.lua), which the fold, the transitions and the audit read.
-- KEYS[1] the reservation hash, then per line (in the record's order) its hold.
-- ARGV[1] JSON: each line's group. Returns 1 if it was migrated, else 0.

local rec = read_hash(KEYS[1])
if rec == nil then return 0 end
local lines = cjson.decode(rec.ln)
local groups = cjson.decode(ARGV[1])
local legacy = false
for _, line in ipairs(lines) do if line.g == nil then legacy = true end end
if not legacy or #groups ~= #lines then return 0 end
local active = rec.st == 'held' or rec.st == 'confirmed'
local holds, order = {}, {}
for i, line in ipairs(lines) do
  line.g = groups[i]
  local hold_key = KEYS[1 + i]
  if holds[hold_key] == nil then
    holds[hold_key] = {}
    order[#order + 1] = hold_key
  end
  local held = holds[hold_key]
  held[#held + 1] = {i = i, s = line.s, t = line.t, q = line.q, r = line.r, a = line.a or 0}
end
if active then
  for _, hold_key in ipairs(order) do
    if redis.call('EXISTS', hold_key) == 0 then
      redis.call('HSET', hold_key, 'st', 'held', 'ln', cjson.encode(holds[hold_key]), 'at', '[]')
    end
  end
end
redis.call('HSET', KEYS[1], 'ln', cjson.encode(lines))
return 1
