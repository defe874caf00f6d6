-- Fold a batch of inbound inventory events of one hash-tag group, in order, in one call; each
-- event is folded on its own (an error in one is reported for it and the others go on).
-- KEYS[1] the outbox stream of the group, KEYS[2] the group's applied offsets (below); for
-- event i (0-based j = i - 1), from k = 2 + 5j:
--   KEYS[k+1] its position hash, KEYS[k+2] its drift record,
--   KEYS[k+3], KEYS[k+4], KEYS[k+5] the de-duplication chunk of its fingerprint in the
--   previous, current and next generation (the current one is written).
-- An allocated delta for a reservation ("rid") names where its reservation's keys are in
-- KEYS (see consume_reservation below).
-- ARGV[1] JSON array of events (RedisStore._fold_body), ARGV[2] channel policies JSON,
-- ARGV[3] de-duplication window in ms, ARGV[4] the events' fingerprints (12 bytes each,
-- concatenated), ARGV[5] when the current generation's chunks expire (ms since the epoch),
-- ARGV[6] (optional) the Kafka partitions the events come from (below).
-- The events it causes go out as one outbox entry per stream, and the positions it changed
-- as one message on atp:changes (flush_batch, _lib.lua).
-- Returns a flat array, 4 entries per event: status, version, changes emitted, and the
-- drift JSON (or ''); status 'folded', 'unchanged', 'duplicate', 'stale', 'replayed', or
-- 'error' with the error message in the 4th entry (what that event wrote before it failed
-- stays); then the offset now recorded for each partition of ARGV[6], in its order; then,
-- when the event consumed its reservation (every line allocated; on a single Redis, where
-- the record is told at once), one more: 'consumed'.
-- An event's "oa" (occurred_at, epoch ms) is kept per source in the position ("o:<source>",
-- the newest folded) and announced with it.
--
-- Applied offsets (stream_agents/_positions.py has the whole story). ARGV[6] is a JSON array
-- of [field, expected] per partition, an event's "p" the (1-based) index of its partition
-- there and "o" its offset. KEYS[2] holds per partition field the highest offset folded into
-- this group, written here in the same call as the positions the events moved:
-- - an event at or below it was folded already (a re-read, even past the de-duplication
--   window): 'replayed', nothing written;
-- - "expected" is what the worker knows it recorded itself; a recorded offset below it
--   means Redis lost writes (restarted from an older RDB or AOF, or a replica promoted
--   before it had them): nothing is folded, and the reply is 'behind' and the recorded
--   offset of each partition, so that the worker reads the partitions again from there.

local outbox = KEYS[1]
local events = cjson.decode(ARGV[1])
local policies = cjson.decode(ARGV[2])
local window = tonumber(ARGV[3])
local fingerprints = ARGV[4]
local chunk_expires_at = ARGV[5]
local ms = now_ms()
local today = math.floor(ms / 86400000)
local now_iso = iso8601(ms)
local consumed = false  -- the reservation became consumed (its last line allocated)

-- [applied offsets] What this group recorded per partition, checked against the worker's
-- expectation before anything is folded.
local applied_key = KEYS[2]
local partitions = {}
if ARGV[6] ~= nil then partitions = cjson.decode(ARGV[6]) end
local applied = {}
local behind = false
for i, p in ipairs(partitions) do
  applied[i] = tonumber(redis.call('HGET', applied_key, p[1]) or '-1')
  if applied[i] < p[2] then behind = true end
end
if behind then return {'behind', unpack(applied)} end
local moved_partitions = {}
-- [/applied offsets]

-- [consumption] The WMS allocated units for a reservation: move what the reservation's hold
-- in this group still holds (at most the delta) from reserved to allocated, so they are not
-- counted twice (consume_hold, _holds.lua). The event names its keys' places in KEYS:
-- "hk" the hold, "mk" the group's marks of allocated holds, "hg" the group; on a single
-- Redis also "rk": the reservation's hash, expiry zset and outbox (rk, rk + 1, rk + 2),
-- and a hold whose every line is allocated tells the record at once (note_consumed);
-- on a Cluster (another slot) it is marked, and the sweeper tells it. A hold that ended (or
-- none) leaves the allocation a plain one. Returns the units moved.
local function consume_reservation(ev, pos)
  local moved, every_line_allocated = consume_hold(KEYS[ev.hk], ev, pos)
  if moved > 0 and every_line_allocated then
    if ev.rk then
      consumed = note_consumed(KEYS[ev.rk], KEYS[ev.rk + 1], KEYS[ev.rk + 2], ev.rid, ev.hg,
        ev.corr, ev.id, ms, window) == 'consumed'
    else
      redis.call('HSET', KEYS[ev.mk], ev.rid, cjson.encode({c = ev.corr, e = ev.id}))
    end
  end
  return moved
end
-- [/consumption]

local function fold_one(ev, k, fingerprint)
  local pos_key = KEYS[k + 1]
  -- Seen inside the window: the previous, current or next generation has the fingerprint
  -- (next: a worker whose clock is ahead may have written there already).
  if redis.call('HEXISTS', KEYS[k + 3], fingerprint) == 1
    or redis.call('HEXISTS', KEYS[k + 4], fingerprint) == 1
    or redis.call('HEXISTS', KEYS[k + 5], fingerprint) == 1 then
    return 'duplicate', 0, 0, ''
  end
  if redis.call('HSET', KEYS[k + 4], fingerprint, '') == 1
    and redis.call('HLEN', KEYS[k + 4]) == 1 then
    redis.call('PEXPIREAT', KEYS[k + 4], chunk_expires_at)
  end

  local pos = load_position(pos_key)
  local writes = {}  -- field, value, field, value, ...: one HSET at the end
  local seq_field = 'q:' .. ev.src
  if ev.seq >= 0 then
    local last = tonumber(pos.raw[seq_field] or '-1')
    if ev.seq <= last then
      return 'stale', 0, 0, ''
    end
    writes[1] = seq_field; writes[2] = ev.seq
  end
  -- Freshness per source: the newest occurred_at folded from it (a replayed old event does
  -- not make the item-site look staler than what was heard since).
  local heard = ev.oa ~= nil and (pos.o[ev.src] == nil or ev.oa > pos.o[ev.src])
  if heard then
    pos.o[ev.src] = ev.oa
    writes[#writes + 1] = 'o:' .. ev.src; writes[#writes + 1] = string.format('%d', ev.oa)
  end

  local before = channel_atps(pos, policies, ev.site, today)
  local changed = false
  local drift_json = ''
  local deletes = {}

  if ev.k == 'd' then
    if ev.d ~= 0 then
      changed = true
      if ev.b == 'it' then
        local new = (pos.t[ev.eta] or 0) + ev.d
        if new == 0 then
          deletes[1] = 't:' .. ev.eta
        else
          writes[#writes + 1] = 't:' .. ev.eta; writes[#writes + 1] = new
        end
        pos.t[ev.eta] = new
      else
        pos[ev.b] = pos[ev.b] + ev.d
        writes[#writes + 1] = ev.b; writes[#writes + 1] = pos[ev.b]
        if ev.b == 'al' and ev.rid and ev.d > 0 and ev.hk then
          if consume_reservation(ev, pos) > 0 then
            writes[#writes + 1] = 'rs'; writes[#writes + 1] = pos.rs
          end
        end
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
          for eta, _ in pairs(pos.t) do
            if wanted[eta] == nil or wanted[eta] == 0 then deletes[#deletes + 1] = 't:' .. eta end
          end
          pos.t = {}
          for eta, n in pairs(wanted) do
            if n ~= 0 then
              writes[#writes + 1] = 't:' .. eta; writes[#writes + 1] = n
              pos.t[eta] = n
            end
          end
        end
      elseif folded ~= qty then
        changed = true
        pos[bucket] = qty
        writes[#writes + 1] = bucket; writes[#writes + 1] = qty
      end
    end
    if any_drift then
      -- Kept beside the position, not in it: a long value would take the position hash
      -- out of its compact encoding.
      local record = {event_id = ev.id, source = ev.src, detected_at = now_iso, buckets = drift}
      drift_json = cjson.encode(record)
      redis.call('SET', KEYS[k + 2], drift_json, 'PX', window)
      emit(outbox, ev.sku .. '@' .. ev.site, {
        schema = 'atp.event.v1', type = 'inventory.drift_detected',
        event_id = 'drift:' .. ev.id, occurred_at = now_iso,
        correlation_id = ev.corr or cjson.null,
        sku = ev.sku, site = ev.site, source = ev.src, snapshot_event_id = ev.id,
        buckets = drift,
      })
    end
  end

  if #deletes > 0 then redis.call('HDEL', pos_key, unpack(deletes)) end
  if not changed then
    if #writes > 0 then redis.call('HSET', pos_key, unpack(writes)) end
    -- Nothing moved but the source was heard from: the same version, fresher sources.
    if heard then announce(ev.sku, ev.site, pos) end
    return 'unchanged', pos.v, 0, drift_json
  end
  pos.v, pos.ts = pos.v + 1, ms
  writes[#writes + 1] = 'v'; writes[#writes + 1] = pos.v
  writes[#writes + 1] = 'ts'; writes[#writes + 1] = ms
  redis.call('HSET', pos_key, unpack(writes))
  announce(ev.sku, ev.site, pos)
  local after = channel_atps(pos, policies, ev.site, today)
  local n = emit_changes(outbox, before, after, ev.sku, ev.site, pos.v, ms, ev.id, ev.corr)
  return 'folded', pos.v, n, drift_json
end

begin_batch()
local out = {}
for i, ev in ipairs(events) do
  local fingerprint = string.sub(fingerprints, 12 * i - 11, 12 * i)
  local ok, status, version, n, detail
  if ev.p ~= nil and ev.o <= applied[ev.p] then  -- [applied offsets] folded already
    ok, status, version, n, detail = true, 'replayed', 0, 0, ''
  else
    if ev.p ~= nil then applied[ev.p] = ev.o; moved_partitions[ev.p] = true end
    ok, status, version, n, detail = pcall(fold_one, ev, 2 + 5 * (i - 1), fingerprint)
  end
  local j = #out
  if ok then
    out[j + 1] = status; out[j + 2] = version; out[j + 3] = n; out[j + 4] = detail
  else
    if type(status) == 'table' then status = status.err or cjson.encode(status) end
    out[j + 1] = 'error'; out[j + 2] = 0; out[j + 3] = 0; out[j + 4] = tostring(status)
  end
end
flush_batch()
-- [applied offsets] In the same call as the positions the events moved.
local writes = {}
for i, p in ipairs(partitions) do
  if moved_partitions[i] then writes[#writes + 1] = p[1]; writes[#writes + 1] = applied[i] end
end
if #writes > 0 then redis.call('HSET', applied_key, unpack(writes)) end
for i = 1, #partitions do out[#out + 1] = applied[i] end
-- [/applied offsets]
if consumed then out[#out + 1] = 'consumed' end
return out
