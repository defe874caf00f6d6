-- End reservations whose holds were released (across slots: step 3, after res_transition
-- and res_unhold), in the slot of their records: released, expired or consumed, with the
-- event; a failed or aborted placing leaves nothing. Many a call.
-- ARGV[1] how long an ended reservation is kept (ms), then per reservation j: ARGV[2j] its
-- id, ARGV[2j + 1] its lines' allocations JSON ([a, ...], from the released holds). Its
-- keys: its hash, the expiry zset, the recovery zset, the outbox of its group (4 each).
-- Returns, per reservation: outcome ('changed', 'unchanged', 'missing' or 'error'), the
-- status it has now (or the error), the record as a flat HGETALL.

local keep_ms = ARGV[1]
local ms = now_ms()

begin_batch()
local results = {}
for j = 1, (#ARGV - 1) / 2 do
  local rid, alloc_json = ARGV[2 * j], ARGV[2 * j + 1]
  local base = 4 * (j - 1)
  local rec_key = KEYS[base + 1]
  local ok, outcome, status = pcall(function()
    local rec = read_hash(rec_key)
    if rec == nil then
      redis.call('ZREM', KEYS[base + 3], rid)
      return 'missing', ''
    end
    rec.id = rid
    return finish(rec_key, KEYS[base + 2], KEYS[base + 3], KEYS[base + 4], rec,
      cjson.decode(alloc_json), ms, keep_ms)
  end)
  if ok then
    results[#results + 1] = outcome
    results[#results + 1] = status
    results[#results + 1] = redis.call('HGETALL', rec_key)
  else
    results[#results + 1] = 'error'
    results[#results + 1] = tostring(outcome)
    results[#results + 1] = {}
  end
end
flush_batch()
return results
