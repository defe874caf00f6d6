-- Confirm, release, expire, consume or recover reservations across slots, in the slot of
-- their records (many a call: an expiry sweep): step 1 (begin_transition in _holds.lua).
-- Confirming is done here; an ending is begun here, then res_unhold releases the holds in
-- each slot and res_finish ends it. Recovering ends what a dead process left: a placing
-- past its deadline is aborted (its idempotency record freed), a failed or aborted one and
-- an ending past its deadline go on to their holds.
-- ARGV[1] action, ARGV[2] correlation id ('' = each reservation's own), ARGV[3] how long an
-- ending may take (ms) before the sweeper finishes it, ARGV[4] 1 to return each record,
-- ARGV[5] the name of the API key asking ('' = any owner's; another key's reservation is
-- 'missing', untouched), then per reservation j: ARGV[4 + 2j] its id, ARGV[5 + 2j] its
-- lines' allocations JSON
-- ([a, ...], for the confirmed event; '' if not read). Its keys: its hash, the expiry zset,
-- the recovery zset, the outbox of its group and its idempotency record (its hash again
-- when it has none): 5 keys each.
-- Returns, per reservation: outcome (begin_transition's, or 'error'), the record as a flat
-- HGETALL (or the error message), 1 if this call expired it else 0.

local action, asked_corr, deadline_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local want_record = ARGV[4] == '1'
local caller = ARGV[5]
local ms = now_ms()

begin_batch()
local results = {}
for j = 1, (#ARGV - 5) / 2 do
  local rid, alloc_json = ARGV[4 + 2 * j], ARGV[5 + 2 * j]
  local base = 5 * (j - 1)
  local rec_key, expiry_key, recovery_key, outbox, idem_key = KEYS[base + 1], KEYS[base + 2],
    KEYS[base + 3], KEYS[base + 4], KEYS[base + 5]
  local ok, outcome, expired_now = pcall(function()
    local rec = read_hash(rec_key)
    if rec == nil then
      redis.call('ZREM', expiry_key, rid)
      redis.call('ZREM', recovery_key, rid)
      return 'missing', 0
    end
    rec.id = rid
    record_lines(rec)
    local corr = asked_corr
    if corr == '' then corr = rec.co end
    local alloc = nil
    if alloc_json ~= '' then alloc = cjson.decode(alloc_json) end
    local outcome, expired_now = begin_transition(rec_key, expiry_key, recovery_key, outbox, rec,
      action, corr, ms, deadline_ms, alloc, caller)
    if outcome == 'missing' then return 'foreign', 0 end
    if rec.st == 'aborted' and idem_key ~= rec_key then
      local earlier = redis.call('GET', idem_key)
      if earlier and cjson.decode(earlier).r == rid then redis.call('DEL', idem_key) end
    end
    return outcome, expired_now
  end)
  if ok and outcome == 'foreign' then
    results[#results + 1] = 'missing'
    results[#results + 1] = {}
    results[#results + 1] = 0
  elseif ok then
    results[#results + 1] = outcome
    if want_record then results[#results + 1] = redis.call('HGETALL', rec_key)
    else results[#results + 1] = {} end
    results[#results + 1] = expired_now
  else
    results[#results + 1] = 'error'
    results[#results + 1] = tostring(outcome)
    results[#results + 1] = 0
  end
end
flush_batch()
return results
