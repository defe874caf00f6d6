-- Across slots, the fold marks a hold whose every line the WMS allocated (atp:{g}:hc); the
-- sweeper brings the marks here, to the slot of the reservations' records (note_consumed
-- in _holds.lua): once every group that holds anything is allocated, consumed. Many a call.
-- ARGV[1] how long an ended reservation is kept (ms), then per mark j: ARGV[4j - 2] the
-- reservation id, ARGV[4j - 1] the hold's group, ARGV[4j] the allocation's correlation id
-- ('' = none), ARGV[4j + 1] its event id. Keys per mark: the hash, the expiry zset and the
-- outbox of the reservation's group (3 each).
-- Returns per mark: 'consumed', 'noted', 'ignored' or 'error'.

local keep_ms = ARGV[1]
local ms = now_ms()
begin_batch()
local results = {}
for j = 1, (#ARGV - 1) / 4 do
  local at = 4 * j - 2
  local base = 3 * (j - 1)
  local ok, outcome = pcall(note_consumed, KEYS[base + 1], KEYS[base + 2], KEYS[base + 3],
    ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 3], ms, keep_ms)
  if ok then results[j] = outcome else results[j] = 'error' end
end
flush_batch()
return results
