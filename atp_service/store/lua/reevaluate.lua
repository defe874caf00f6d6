-- Re-evaluate item-sites of one hash-tag group whose ATP may have moved without a fold: a
-- channel policy changed, or a day came that brings inbound inside a channel's horizon.
-- Each position is compared, as it is now, under the book and day it was last evaluated
-- under (its stamp, field 'e') and under the target book and today; an availability.changed
-- goes out for each channel whose ATP differs, from the group's outbox, in this same call.
-- KEYS[1] the group's outbox stream; KEYS[2..] positions of the group.
-- ARGV[1] {"base": g, "target": g, "books": {"<g>": policies as fold.lua reads them}}: the
--   books a stamp may name (an unstamped position, or one whose book is gone, is taken as
--   evaluated under "base" on the day of its last change);
-- ARGV[2] per channel of the target book, who put its policy in force: {"web": [name, corr]};
-- ARGV[3] the dataset's re-evaluation epoch (in event ids); ARGV[4] the stamp's day factor
--   (keys.STAMP_DAYS); then sku and site of each position, in order.
-- Returns {positions found, positions whose ATP moved, events, what it announced}.

local outbox = KEYS[1]
local spec = cjson.decode(ARGV[1])
local who = cjson.decode(ARGV[2])
local epoch = ARGV[3]
local days = tonumber(ARGV[4])
local ms = now_ms()
local today = math.floor(ms / 86400000)
local target_stamp = spec.target * days + today

local books = {}
local function book(g)
  local found = books[g]
  if found ~= nil then return found end
  local policies = spec.books[tostring(g)]
  if policies == nil then
    if g == spec.base then return nil end
    return book(spec.base)
  end
  found = {by = {}}
  for _, pol in ipairs(policies) do found.by[pol.c] = pol end
  books[g] = found
  return found
end

-- The policy a channel sells by under a book (the unlisted channels' when it has none).
local function policy_of(b, channel)
  return b.by[channel] or b.by['*']
end

local function same_policy(a, b)
  if a.ss ~= b.ss or a.sh ~= b.sh or a.it ~= b.it or a.hz ~= b.hz then return false end
  local as, bs = a.s, b.s
  if as == nil or as == cjson.null or bs == nil or bs == cjson.null then
    return (as == nil or as == cjson.null) == (bs == nil or bs == cjson.null)
  end
  if #as ~= #bs then return false end
  for i = 1, #as do
    if as[i] ~= bs[i] then return false end
  end
  return true
end

-- Inbound with an ETA: the only part of a position whose ATP depends on the day.
local function dated_inbound(pos)
  for eta, qty in pairs(pos.t) do
    if eta ~= '-' and qty ~= 0 then return true end
  end
  return false
end

local function atp_in(b, channel, pos, site, day)
  local pol = policy_of(b, channel)
  if not sells_from(pol, site) then return 0 end
  return site_atp(pos, pol, day)
end

local target = book(spec.target)
begin_batch()
local found, moved, events = 0, 0, 0
for i = 2, #KEYS do
  local key = KEYS[i]
  local sku, site = ARGV[3 + 2 * (i - 1)], ARGV[4 + 2 * (i - 1)]
  local pos = load_position(key)
  local stamp = tonumber(pos.raw['e'] or '')
  -- Evaluated under a later book already (by a lease holder after this caller): leave it.
  if stamp ~= nil and math.floor(stamp / days) > spec.target then stamp = target_stamp end
  if next(pos.raw) ~= nil and stamp ~= target_stamp then
    found = found + 1
    local from, day
    if stamp ~= nil then
      from, day = book(math.floor(stamp / days)), stamp % days
    else
      from, day = book(spec.base), math.floor(pos.ts / 86400000)
    end
    local changes, n = {}, 0
    if from ~= target or (day ~= today and dated_inbound(pos)) then
      local channels = {}
      for c, _ in pairs(from.by) do channels[c] = true end
      for c, _ in pairs(target.by) do channels[c] = true end
      for c, _ in pairs(channels) do
        local before = atp_in(from, c, pos, site, day)
        local after = atp_in(target, c, pos, site, today)
        if before ~= after then
          changes[c] = {before, after}
          n = n + 1
        end
      end
    end
    if n == 0 then
      redis.call('HSET', key, 'e', target_stamp)
    else
      moved = moved + 1
      pos.v = redis.call('HINCRBY', key, 'v', 1)
      pos.ts = ms
      redis.call('HSET', key, 'ts', ms, 'e', target_stamp)
      announce(sku, site, pos)
      local cause = 're:' .. epoch .. ':' .. target_stamp .. ':' .. sku .. '@' .. site
      for c, pair in pairs(changes) do
        -- Who changed the channel's policy, when that (not only the day) moved it.
        local by, corr = nil, nil
        local put = who[c]
        if put ~= nil and not same_policy(policy_of(from, c), policy_of(target, c)) then
          by, corr = put[1], put[2]
        end
        events = events + emit_changes(outbox, {[c] = pair[1]}, {[c] = pair[2]}, sku, site,
          pos.v, ms, cause, corr, by)
      end
    end
  elseif next(pos.raw) ~= nil then
    found = found + 1
  end
end
return {found, moved, events, flush_batch()}
