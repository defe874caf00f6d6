-- Read one reservation record for the API key asking: the whole record (HGETALL's flat
-- array) if that key may see it (owned_by, _lib.lua), else an empty array, the very answer
-- for a reservation that does not exist. Checked here, in the read itself, so a caller
-- cannot tell another key's reservation from none by the reply or by a second round trip.
-- KEYS[1] the reservation hash. ARGV[1] the name of the API key asking ('' = any).

local flat = redis.call('HGETALL', KEYS[1])
local owner = nil
for i = 1, #flat, 2 do
  if flat[i] == 'ow' then owner = flat[i + 1] end
end
if not owned_by({ow = owner}, ARGV[1]) then return {} end
return flat
