-- Reservations as a coordinator record and per-slot holds (docs/reservations.md), prepended
-- after _lib.lua to the reservation scripts and the fold. Each function touches the keys it
-- is given and nothing else, so a script of one slot (a Cluster's step) and a script of
-- many (a single Redis running every step at once) share them.
--
-- A hold (atp:{g<n>}:h:<id>, in the group of its item-sites) holds the lines of one
-- reservation that live in that group: 'st' held | released | refused | void, 'ln' JSON
-- [{i = line index, s, t, q, r = held, a = allocated}], 'at' JSON the ATP of each line when
-- it was checked. The coordinator record (atp:{g<h>}:r:<id>) has the reservation's status
-- and its lines [{s, t, q, r, g = group}] ('a' too once it ended); the holds are where the
-- units are, and where the fold consumes them.

local function read_hash(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end

-- The ATP the channel has at each line's site, and what each line gets: {atps}, {grants},
-- short (some line got less than it asked). lines: {s, t, q}; positions: loaded positions.
local function check_lines(lines, positions, pol, today)
  local atps, grants, short = {}, {}, false
  for j, line in ipairs(lines) do
    local atp = 0
    if sells_from(pol, line.t) then atp = site_atp(positions[j], pol, today) end
    atps[j] = atp
    local grant = line.q
    if atp < grant then
      grant = atp
      short = true
    end
    grants[j] = grant
  end
  return atps, grants, short
end

-- Move ``delta`` units into (or, negative, out of) the position's reserved, with its
-- version, its announcement and its availability.changed events.
local function move_reserved(pos_key, outbox, pos, sku, site, delta, policies, today, ms, cause,
                             corr)
  local before = channel_atps(pos, policies, site, today)
  pos.rs = pos.rs + delta
  redis.call('HSET', pos_key, 'rs', pos.rs, 'ts', ms)
  local version = redis.call('HINCRBY', pos_key, 'v', 1)
  pos.v, pos.ts = version, ms
  announce(sku, site, pos)
  local after = channel_atps(pos, policies, site, today)
  emit_changes(outbox, before, after, sku, site, version, ms, cause, corr)
end

-- Hold one group's lines: lines {i, s, t, q, pos_key, outbox}, positions loaded, grants and
-- atps per line (atps nil: not kept, when no step will ask for them again). Writes the hold
-- record (status held) and moves the units into reserved.
local function hold_lines(hold_key, rid, lines, positions, grants, atps, policies, today, ms, corr)
  local held = {}
  for j, line in ipairs(lines) do
    local grant = grants[j]
    held[j] = {i = line.i, s = line.s, t = line.t, r = grant, a = 0}
    if grant > 0 then
      move_reserved(line.pos_key, line.outbox, positions[j], line.s, line.t, grant, policies,
        today, ms, rid .. ':held:' .. line.i, corr)
    end
  end
  if atps then
    redis.call('HSET', hold_key, 'st', 'held', 'ln', cjson.encode(held), 'at', cjson.encode(atps))
  else
    redis.call('HSET', hold_key, 'st', 'held', 'ln', cjson.encode(held))
  end
  return held
end

-- Give back what a hold still holds: status (the reservation's new one) names the events.
-- line_keys: per line of the hold, in its order, {pos_key, outbox}. A hold that does not
-- exist yet is marked void (so a late hold of the same reservation holds nothing) for
-- tomb_ms; a released one is kept keep_ms (0: deleted, when no step will read it again).
-- hold: the hold as read_hash read it already, if it was. Returns the hold's state and its
-- lines (with what was allocated), or 'none'.
local function release_hold(hold_key, rid, line_keys, status, policies, today, ms, corr, keep_ms,
                            tomb_ms, hold)
  if hold == nil then hold = read_hash(hold_key) end
  if hold == nil then
    redis.call('HSET', hold_key, 'st', 'void')
    redis.call('PEXPIRE', hold_key, tomb_ms)
    return 'none', {}
  end
  local lines = {}
  if hold.ln then lines = cjson.decode(hold.ln) end
  if hold.st ~= 'held' then return hold.st, lines end
  if #lines ~= #line_keys then
    error('release_hold: ' .. rid .. ' holds ' .. #lines .. ' lines here, keys were given for '
      .. #line_keys)
  end
  for j, line in ipairs(lines) do
    local holding = line.r - line.a
    if holding > 0 then
      local keys = line_keys[j]
      local pos = load_position(keys[1])
      local give = math.min(holding, math.max(pos.rs, 0))
      move_reserved(keys[1], keys[2], pos, line.s, line.t, -give, policies, today, ms,
        rid .. ':' .. status .. ':' .. line.i, corr)
    end
  end
  if tonumber(keep_ms) == 0 then
    redis.call('DEL', hold_key)
  else
    redis.call('HSET', hold_key, 'st', 'released')
    redis.call('PEXPIRE', hold_key, keep_ms)
  end
  return 'released', lines
end

-- The fold's part: an allocation of ev.d units at (ev.sku, ev.site) for the hold's
-- reservation moves what the line still holds (at most the delta, at most the position's
-- reserved) from reserved to allocated. Returns the units moved and whether every line of
-- the hold is allocated now. A hold that ended (or none) leaves the allocation a plain one.
local function consume_hold(hold_key, ev, pos)
  local hold = read_hash(hold_key)
  if hold == nil or hold.st ~= 'held' then return 0, false end
  local lines = cjson.decode(hold.ln)
  local moved = 0
  local every_line_allocated = true
  for _, line in ipairs(lines) do
    if line.s == ev.sku and line.t == ev.site and moved == 0 then
      moved = math.max(0, math.min(ev.d, line.r - line.a, pos.rs))
      line.a = line.a + moved
    end
    if line.a < line.r then every_line_allocated = false end
  end
  if moved == 0 then return 0, false end
  pos.rs = pos.rs - moved
  redis.call('HSET', hold_key, 'ln', cjson.encode(lines))
  return moved, every_line_allocated
end

-- The coordinator's lines as the events carry them; alloc (optional): line index -> allocated.
local function event_lines(lines, alloc)
  local out = {}
  for i, line in ipairs(lines) do
    local a = line.a or 0
    if alloc and alloc[i] then a = alloc[i] end
    out[i] = {sku = line.s, site = line.t, qty = line.q, reserved = line.r or 0, allocated = a}
  end
  return out
end

local function order_ref(rec)
  if rec.rf == nil or rec.rf == '' then return cjson.null end
  return rec.rf
end

-- A reservation event of the coordinator record ``rec`` (with rec.id).
local function emit_reservation(outbox, rec, status, previous, corr, ms, lines, extra)
  local event = {
    schema = 'atp.event.v1', type = 'reservation.' .. status,
    event_id = 'res:' .. rec.id .. ':' .. status, occurred_at = iso_of(ms),
    correlation_id = corr, reservation_id = rec.id, status = status, owner = owner_of(rec),
    channel = rec.ch, order_ref = order_ref(rec), mode = rec.md, lines = lines,
  }
  if previous then event.previous_status = previous end
  if extra then for k, v in pairs(extra) do event[k] = v end end
  emit(outbox, rec.id, event)
end

-- The coordinator decides: every line held (its grants) -> the record is held, the answer
-- 201; else (refused) the answer is 409 with each line's ATP. ``req``: {id, ch, ref, md,
-- ttl, corr, h, ow (its owner: the name of the API key asking), lines = [{s, t, q, g}]}. Writes the record, its expiry entry, the held
-- event and the idempotency answer. Returns outcome, status code, body.
local function decide(idem_key, rec_key, expiry_key, outbox, req, grants, atps, refused, ms,
                      created_ms, idem_ttl)
  if refused then
    local lines = {}
    for i, line in ipairs(req.lines) do
      lines[i] = {sku = line.s, site = line.t, qty = line.q, atp = atps[i]}
    end
    local body = cjson.encode({lines = lines})
    redis.call('SET', idem_key, cjson.encode({h = req.h, c = 409, b = body}), 'PX', idem_ttl)
    return 'insufficient', 409, body
  end
  local record_lines = {}
  for i, line in ipairs(req.lines) do
    record_lines[i] = {s = line.s, t = line.t, q = line.q, r = grants[i], g = line.g}
  end
  local expires = created_ms + tonumber(req.ttl)
  local ln = cjson.encode(record_lines)
  redis.call('HSET', rec_key, 'st', 'held', 'ch', req.ch, 'rf', req.ref, 'md', req.md,
    'cr', created_ms, 'ex', expires, 'up', ms, 'co', req.corr, 'ow', req.ow, 'ln', ln)
  redis.call('HDEL', rec_key, 'dl')
  redis.call('ZADD', expiry_key, expires, req.id)
  local rec = {id = req.id, ch = req.ch, rf = req.ref, md = req.md, ow = req.ow}
  local lines = event_lines(record_lines)
  for _, line in ipairs(lines) do line.allocated = 0 end
  emit_reservation(outbox, rec, 'held', nil, req.corr, ms, lines,
    {expires_at = iso8601(expires)})
  local fields = {
    id = req.id, st = 'held', ch = req.ch, rf = req.ref, md = req.md, cr = created_ms,
    ex = expires, up = ms, co = req.corr, ow = req.ow, ln = ln,
  }
  local body = cjson.encode(fields)
  redis.call('SET', idem_key, cjson.encode({h = req.h, c = 201, b = body, r = req.id}), 'PX',
    idem_ttl)
  return 'held', 201, body
end

-- The record's lines, decoded and checked before anything is written (a script that fails
-- half way leaves what it wrote): raises on a line that is not what the service wrote.
local function record_lines(rec)
  local lines = cjson.decode(rec.ln)
  for i, line in ipairs(lines) do
    if type(line.q) ~= 'number' or (line.r ~= nil and type(line.r) ~= 'number')
      or (line.a ~= nil and type(line.a) ~= 'number') then
      error('reservation ' .. tostring(rec.id) .. ' has an unreadable line ' .. i)
    end
  end
  return lines
end

-- Statuses of a coordinator record on its way to an end, and that end.
local ENDING = {releasing = 'released', expiring = 'expired', consuming = 'consumed'}

-- Begin a transition of the record ``rec`` (read by read_hash, with rec.id) for ``action``
-- ('confirm', 'release', 'expire', 'consume', 'recover'). Confirming changes the record
-- alone; ending it (release, expiry, the OMS's consume) sets it 'releasing' (etc.) first:
-- then every hold is released (release_hold) and ``finish`` ends it. Returns the outcome:
-- 'changed' (done), 'unchanged', 'invalid', 'start' (this call began ending it: release
-- the holds, then finish), 'unhold' (the same, for an ending begun before: help it end),
-- 'wait' (another process is still at it), 'missing'; and 1 if this call expired it.
-- alloc: line index -> allocated (from the holds), for the confirmed event's lines. A
-- reservation another API key than ``caller`` owns is 'missing', untouched, as an unknown
-- one ('' = any owner's: a key with admin, the sweeper).
local function begin_transition(rec_key, expiry_key, recovery_key, outbox, rec, action, corr, ms,
                                deadline_ms, alloc, caller)
  if not owned_by(rec, caller) then return 'missing', 0 end
  local st = rec.st
  local function start(ending, event_corr)
    redis.call('HSET', rec_key, 'st', ending, 'ps', st, 'tc', event_corr, 'up', ms,
      'dl', ms + deadline_ms)
    if recovery_key then redis.call('ZADD', recovery_key, ms + deadline_ms, rec.id) end
    rec.ps, rec.tc = st, event_corr
    rec.st = ending
    st = ending
  end
  if action == 'recover' then
    if st == 'pending' then
      if tonumber(rec.dl or '0') > ms then return 'wait', 0 end
      redis.call('HSET', rec_key, 'st', 'aborted', 'up', ms)
      rec.st = 'aborted'
      return 'start', 0
    end
    if st == 'failed' or st == 'aborted' or ENDING[st] then
      if ENDING[st] and tonumber(rec.dl or '0') > ms then return 'wait', 0 end
      return 'unhold', 0
    end
    if recovery_key then redis.call('ZREM', recovery_key, rec.id) end
    return 'unchanged', 0
  end
  if st == 'pending' or st == 'failed' or st == 'aborted' then return 'missing', 0 end
  -- A held reservation whose TTL has passed is expired first, whatever was asked: expiry
  -- does not depend on the sweeper having run. Its events carry the reserving request's
  -- correlation id.
  if st == 'held' and tonumber(rec.ex) <= ms then
    start('expiring', rec.co)
    return 'start', 1
  end
  if ENDING[st] then
    if action == 'expire' and st ~= 'expiring' then return 'unchanged', 0 end
    return 'unhold', 0  -- help it end; the answer follows from where it ends
  end
  if action == 'confirm' then
    if st == 'held' then
      emit_reservation(outbox, rec, 'confirmed', 'held', corr, ms,
        event_lines(cjson.decode(rec.ln), alloc))
      redis.call('HSET', rec_key, 'st', 'confirmed', 'ex', '', 'up', ms)
      redis.call('ZREM', expiry_key, rec.id)
      rec.st, rec.ex = 'confirmed', ''
      return 'changed', 0
    end
    if st == 'confirmed' then return 'unchanged', 0 end
    return 'invalid', 0
  elseif action == 'release' then
    if st == 'held' or st == 'confirmed' then
      start('releasing', corr)
      return 'start', 0
    end
    if st == 'released' then return 'unchanged', 0 end
    return 'invalid', 0
  elseif action == 'consume' then
    if st == 'held' or st == 'confirmed' then
      start('consuming', corr)
      return 'start', 0
    end
    if st == 'consumed' then return 'unchanged', 0 end
    return 'invalid', 0
  end
  -- expire: nothing due (anything not held is out of the index)
  if st ~= 'held' then redis.call('ZREM', expiry_key, rec.id) end
  return 'unchanged', 0
end

-- End a transition begun by begin_transition once every hold is released: ``alloc`` maps a
-- line index to what was allocated of it (from the released holds). A reservation whose
-- every held line turns out allocated ends consumed, whatever ended it. A placement that
-- failed or was aborted leaves nothing (its answer, if any, is the idempotency record's).
-- Returns 'changed' and the final status, or 'unchanged'.
local function finish(rec_key, expiry_key, recovery_key, outbox, rec, alloc, ms, keep_ms)
  local st = rec.st
  if recovery_key then redis.call('ZREM', recovery_key, rec.id) end
  if st == 'failed' or st == 'aborted' then
    redis.call('DEL', rec_key)
    return 'changed', st
  end
  local final = ENDING[st]
  if final == nil then return 'unchanged', st end
  local lines = cjson.decode(rec.ln)
  local any_held, all_allocated = false, true
  for i, line in ipairs(lines) do
    line.a = alloc[i] or line.a or 0
    if (line.r or 0) > 0 then any_held = true end
    if line.a < (line.r or 0) then all_allocated = false end
  end
  if any_held and all_allocated then final = 'consumed' end
  local ln = cjson.encode(lines)
  local corr = rec.tc
  if corr == nil or corr == '' then corr = rec.co end
  emit_reservation(outbox, rec, final, rec.ps, corr, ms, event_lines(lines))
  redis.call('HSET', rec_key, 'st', final, 'ex', '', 'up', ms, 'ln', ln)
  redis.call('HDEL', rec_key, 'dl', 'tc')
  redis.call('ZREM', expiry_key, rec.id)
  redis.call('PEXPIRE', rec_key, keep_ms)
  rec.st, rec.ex, rec.ln = final, '', ln
  return 'changed', final
end

-- A hold of group ``group`` has every line allocated (the fold said so): once every group
-- that holds anything has, the reservation is consumed. ``alloc_event``: the allocation's
-- event id; corr: its correlation id (or the reservation's). Returns 'consumed', 'noted' or
-- 'ignored' (not active: it ended, or is ending and will end consumed by itself).
local function note_consumed(rec_key, expiry_key, outbox, rid, group, corr, alloc_event, ms,
                             keep_ms)
  local rec = read_hash(rec_key)
  if rec == nil or (rec.st ~= 'held' and rec.st ~= 'confirmed') then return 'ignored' end
  rec.id = rid
  local done = {}
  if rec.cg then for _, g in ipairs(cjson.decode(rec.cg)) do done[g] = true end end
  done[group] = true
  local lines = cjson.decode(rec.ln)
  local every_group = true
  for _, line in ipairs(lines) do
    if (line.r or 0) > 0 and not done[line.g] then every_group = false end
  end
  local groups = {}
  for g, _ in pairs(done) do groups[#groups + 1] = g end
  if not every_group then
    redis.call('HSET', rec_key, 'cg', cjson.encode(groups), 'up', ms)
    return 'noted'
  end
  for _, line in ipairs(lines) do line.a = line.r or 0 end
  local ln = cjson.encode(lines)
  if corr == nil or corr == cjson.null or corr == '' then corr = rec.co end
  emit_reservation(outbox, rec, 'consumed', rec.st, corr, ms, event_lines(lines),
    {allocation_event_id = alloc_event})
  redis.call('HSET', rec_key, 'st', 'consumed', 'ex', '', 'up', ms, 'ln', ln)
  redis.call('HDEL', rec_key, 'cg')
  redis.call('ZREM', expiry_key, rid)
  redis.call('PEXPIRE', rec_key, keep_ms)
  return 'consumed'
end
