-- Register a live outbox relay (keys.RELAYS) and count the live ones, by Redis' own clock.
-- KEYS[1] the registry. ARGV[1] the relay, ARGV[2] how long its registration stands (ms),
-- ARGV[3] '1' to register, '0' to leave. Returns how many relays are registered.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
