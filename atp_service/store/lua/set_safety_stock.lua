-- Set or clear the safety-stock override of one item-site and publish what it moved.
-- KEYS[1] position hash, KEYS[2] outbox stream.
-- ARGV: sku, site, override ('' clears it), policies JSON, change id, correlation id, the
-- name of the admin's API key (the events' changed_by).
-- Returns {the item-site's version, the position announced ('' if unchanged)}.

local pos_key, outbox = KEYS[1], KEYS[2]
local sku, site, override = ARGV[1], ARGV[2], ARGV[3]
local policies = cjson.decode(ARGV[4])
local ms = now_ms()
local today = math.floor(ms / 86400000)

local pos = load_position(pos_key)
local current = pos.ss
local wanted = false
if override ~= '' then wanted = tonumber(override) end
if current == wanted then return {pos.v, ''} end

begin_batch()
local before = channel_atps(pos, policies, site, today)
if wanted then
  redis.call('HSET', pos_key, 'ss', wanted)
else
  redis.call('HDEL', pos_key, 'ss')
end
pos.ss = wanted
local version = redis.call('HINCRBY', pos_key, 'v', 1)
redis.call('HSET', pos_key, 'ts', ms)
pos.v, pos.ts = version, ms
announce(sku, site, pos)
local after = channel_atps(pos, policies, site, today)
emit_changes(outbox, before, after, sku, site, version, ms, ARGV[5], ARGV[6], ARGV[7])
return {version, flush_batch()}
