-- Shared helpers, prepended to every script by the store (Redis scripts cannot import).
-- Mirrors atp_service/domain/atp.py; tests/integration/test_lua_matches_domain.py checks it.

local BUCKET_NAMES = {oh = 'on_hand', al = 'allocated', qu = 'quarantined', it = 'in_transit'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- RFC 3339 UTC timestamp with milliseconds from epoch milliseconds (no os.date in Redis).
local function iso8601(ms)
  local secs = math.floor(ms / 1000)
  local millis = ms - secs * 1000
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  -- civil_from_days (H. Hinnant)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60, millis)
end

-- Whether the API key named caller may see and act on a reservation record (a table of its
-- fields): its owner ('ow') is that key, or caller is '' (a key with admin, the sweeper), or
-- the record predates owners. domain/reservations.py's may_act_on is the same rule.
local function owned_by(rec, caller)
  return caller == '' or rec.ow == nil or rec.ow == caller
end

-- The owner of a reservation record for its events (null for a record made before owners).
local function owner_of(rec)
  if rec.ow == nil then return cjson.null end
  return rec.ow
end

-- A position hash as a Lua table of numbers; in-transit by ETA under pos.t[day|'-'], the
-- occurred_at (epoch ms) of the newest event folded from each source under pos.o[source].
local function load_position(key)
  local flat = redis.call('HGETALL', key)
  local pos = {oh = 0, al = 0, qu = 0, rs = 0, v = 0, ts = 0, ss = false, t = {}, o = {}, raw = {}}
  for i = 1, #flat, 2 do
    local f, val = flat[i], flat[i + 1]
    pos.raw[f] = val
    local prefix = string.sub(f, 1, 2)
    if prefix == 't:' then
      pos.t[string.sub(f, 3)] = tonumber(val)
    elseif prefix == 'o:' then
      pos.o[string.sub(f, 3)] = tonumber(val)
    elseif f == 'ss' then
      pos.ss = tonumber(val)
    elseif f == 'oh' or f == 'al' or f == 'qu' or f == 'rs' or f == 'v' or f == 'ts' then
      pos[f] = tonumber(val)
    end
  end
  return pos
end

local function in_transit_total(pos)
  local total = 0
  for _, qty in pairs(pos.t) do total = total + qty end
  return total
end

local function sells_from(pol, site)
  if pol.s == nil or pol.s == cjson.null then return true end
  for _, s in ipairs(pol.s) do
    if s == site then return true end
  end
  return false
end

-- atp(sku, site, channel) of the contract (domain/atp.py's atp_for_site): the stock part
-- after share and safety stock, then the inbound less the units the stock part owes.
local function site_atp(pos, pol, today)
  local sellable = pos.oh - pos.al - pos.qu - pos.rs
  local shared = math.min(sellable, math.floor(sellable * pol.sh / 100))
  local safety = pol.ss
  if pos.ss then safety = pos.ss end
  local stock = shared - safety
  local atp, owed = stock, 0
  if stock < 0 then atp, owed = 0, -stock end
  if pol.it == 1 then
    local inbound = 0
    if pol.hz == 0 then
      inbound = in_transit_total(pos)
    else
      local cutoff = today + pol.hz
      for eta, qty in pairs(pos.t) do
        if qty > 0 and eta ~= '-' and tonumber(eta) <= cutoff then inbound = inbound + qty end
      end
    end
    if inbound > owed then atp = atp + inbound - owed end
  end
  return atp
end

-- {channel -> atp} for every channel (policy) that sells from this site.
local function channel_atps(pos, policies, site, today)
  local out = {}
  for _, pol in ipairs(policies) do
    if sells_from(pol, site) then out[pol.c] = site_atp(pos, pol, today) end
  end
  return out
end

-- Between begin_batch() and flush_batch() (a fold of many events) what announce() and
-- emit() below write is buffered and written once per script call.
local announcements = nil
local outbox_buffers = nil

-- "<source>:<ms>,..." by source name ('-' for none): the sources part of an announcement,
-- spelt as position_cache.sources_text spells it.
local function sources_token(pos)
  local names = {}
  for source, _ in pairs(pos.o) do names[#names + 1] = source end
  if #names == 0 then return '-' end
  table.sort(names)
  for i, source in ipairs(names) do
    names[i] = source .. ':' .. string.format('%d', pos.o[source])
  end
  return table.concat(names, ',')
end

-- Publish an item-site's position after a change, for the API processes' in-process copies
-- (atp_service/store/position_cache.py parses it; the channel is keys.CHANGES_CHANNEL):
-- "<sku>@<site> <version> <as_of ms> <oh> <al> <qu> <rs> <ss or -> <sources>
-- [<eta day or ->:<qty> ...]", <sources> as sources_token; a line per position (a batch
-- publishes its lines in one message).
local function announce(sku, site, pos)
  local parts = {sku .. '@' .. site, pos.v, pos.ts, pos.oh, pos.al, pos.qu, pos.rs, pos.ss or '-',
    sources_token(pos)}
  for eta, qty in pairs(pos.t) do
    if qty ~= 0 then parts[#parts + 1] = eta .. ':' .. qty end
  end
  local line = table.concat(parts, ' ')
  if announcements == nil then
    redis.call('PUBLISH', 'atp:changes', line)
  else
    announcements[#announcements + 1] = line
  end
end

-- Outbound events go to the outbox stream of their group as the final JSON the relay
-- publishes as is: one entry ('k' key, 'v' value) per event, or, in a batch, one entry per
-- stream whose field 'b' holds the records, a "<key>\31<value>" a line
-- (store.outbox_records).
local function begin_batch()
  announcements = {}
  outbox_buffers = {}
end

-- emit() with the value already encoded.
local function emit_json(outbox, key, value)
  if outbox_buffers == nil then
    redis.call('XADD', outbox, '*', 'k', key, 'v', value)
    return
  end
  local lines = outbox_buffers[outbox]
  if lines == nil then
    lines = {}
    outbox_buffers[outbox] = lines
  end
  lines[#lines + 1] = key .. '\31' .. value
end

local function emit(outbox, key, event)
  emit_json(outbox, key, cjson.encode(event))
end

-- Returns what it announced ('' if nothing), for the caller's own copy (read your writes).
local function flush_batch()
  for outbox, lines in pairs(outbox_buffers) do
    redis.call('XADD', outbox, '*', 'b', table.concat(lines, '\n'))
  end
  local announced = table.concat(announcements, '\n')
  if announced ~= '' then redis.call('PUBLISH', 'atp:changes', announced) end
  outbox_buffers = nil
  announcements = nil
  return announced
end

-- iso8601(ms) of the script's clock, made once per script (every change shares it).
local iso_ms, iso_text = nil, nil
local function iso_of(ms)
  if ms ~= iso_ms then
    iso_ms, iso_text = ms, iso8601(ms)
  end
  return iso_text
end

-- availability.changed for each channel whose ATP moved. Written as text, the hottest JSON
-- of the service: sku, site and channel are checked identifiers (no character to escape);
-- the event id, the correlation id and changed_by are encoded. changed_by (optional): the
-- name of the admin's API key whose change moved the ATP (a safety-stock change).
local function emit_changes(outbox, before, after, sku, site, version, ms, cause_id, corr,
    changed_by)
  local n = 0
  local key = sku .. '@' .. site
  local corr_json = 'null'
  if corr ~= nil and corr ~= cjson.null then corr_json = cjson.encode(corr) end
  local tail = '}'
  if changed_by ~= nil then tail = ',"changed_by":' .. cjson.encode(changed_by) .. '}' end
  for channel, atp in pairs(after) do
    local prev = before[channel] or 0
    if prev ~= atp then
      emit_json(outbox, key, '{"schema":"atp.event.v1","type":"availability.changed","event_id":'
        .. cjson.encode('chg:' .. cause_id .. ':' .. channel) .. ',"occurred_at":"' .. iso_of(ms)
        .. '","correlation_id":' .. corr_json .. ',"sku":"' .. sku .. '","site":"' .. site
        .. '","channel":"' .. channel .. '","atp":' .. string.format('%d', atp)
        .. ',"previous_atp":' .. string.format('%d', prev)
        .. ',"version":' .. string.format('%d', version) .. tail)
      n = n + 1
    end
  end
  return n
end
