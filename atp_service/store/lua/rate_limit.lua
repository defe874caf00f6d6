-- Take tokens from an API key's bucket, shared by every API process: a token bucket of
-- `burst` tokens refilled at `rate` a second, on Redis' clock (so the processes' clocks do
-- not matter). Idle buckets vanish once they would be full again.
-- KEYS[1] the bucket (hash: 'tk' tokens left, 'ts' epoch ms of that count).
-- ARGV[1] rate (tokens a second, > 0), ARGV[2] burst (>= 1), ARGV[3] tokens asked (>= 1:
-- the requests of that key one API process had waiting at once).
-- Returns {tokens granted (0..asked, to the first requests), the milliseconds until the
-- next token (0 when every one asked was granted)}.

local rate, burst, asked = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ms = now_ms()
local state = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
elseif ms > ts then
  tokens = math.min(burst, tokens + (ms - ts) * rate / 1000)
end
local granted = math.min(asked, math.floor(tokens))
tokens = tokens - granted
local wait = 0
if granted < asked then wait = math.max(1, math.ceil((1 - tokens) * 1000 / rate)) end
-- %.17g: the count survives the text round trip exactly.
redis.call('HSET', KEYS[1], 'tk', string.format('%.17g', tokens), 'ts', ms)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return {granted, wait}
