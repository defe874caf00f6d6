-- Release reservations' holds in one group (across slots: after res_transition or a refused
-- or aborted placing; res_finish follows), many reservations a call. Each hold gives back
-- what it still holds (its events name the reservation's new status); one not made yet is
-- marked void, so that a late res_hold holds nothing.
-- ARGV[1] every policy, ARGV[2] how long a released hold is kept (ms), ARGV[3] how long a
-- void mark is kept (ms), then per reservation j: ARGV[4j] its id, ARGV[4j + 1] its lines in
-- this group n, ARGV[4j + 2] the status its events name, ARGV[4j + 3] their correlation id.
-- Its keys, from where the previous one's end: its hold, then per line (in the hold's order)
-- the position hash and the outbox (1 + 2n keys).
-- Returns {announced ('' if none), then per reservation: state ('released', 'none',
-- 'refused', 'void', ... or 'error'), its lines JSON (with 'a', allocated) or the error}.

local policies = cjson.decode(ARGV[1])
local keep_ms, tomb_ms = ARGV[2], ARGV[3]
local ms = now_ms()
local today = math.floor(ms / 86400000)

begin_batch()
local results = {}
local base = 0
for j = 1, (#ARGV - 3) / 4 do
  local at = 4 * j
  local rid, n, status, corr = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 3]
  local line_keys = {}
  for i = 1, n do line_keys[i] = {KEYS[base + 2 * i], KEYS[base + 2 * i + 1]} end
  local ok, state, lines = pcall(release_hold, KEYS[base + 1], rid, line_keys, status, policies,
    today, ms, corr, keep_ms, tomb_ms)
  if ok then
    results[#results + 1] = state
    results[#results + 1] = cjson.encode(lines)
  else
    results[#results + 1] = 'error'
    results[#results + 1] = tostring(state)
  end
  base = base + 1 + 2 * n
end
table.insert(results, 1, flush_batch())
return results
