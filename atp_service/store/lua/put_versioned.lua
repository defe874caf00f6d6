-- Store entries of a versioned table (the channel policies, the sites' attributes) and bump
-- its version, atomically.
-- KEYS[1] the table (hash: name -> JSON), KEYS[2] its version counter (one slot:
-- keys.CONFIG_TAG). ARGV[1] 'put' (replace) or 'seed' (only names without an entry yet),
-- then per entry its name and its JSON. Returns the new version.

local set = 'HSET'
if ARGV[1] == 'seed' then set = 'HSETNX' elseif ARGV[1] ~= 'put' then
  return redis.error_reply('put_versioned.lua: unknown mode ' .. ARGV[1])
end
for i = 2, #ARGV, 2 do redis.call(set, KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('INCR', KEYS[2])
