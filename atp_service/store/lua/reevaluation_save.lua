-- Save the re-evaluation's state, only while the caller holds its lease (store/reevaluation.py).
-- KEYS[1] the lease, KEYS[2] the state hash (one slot). ARGV[1] the caller, then field, value
-- pairs to set, then '-', then fields to delete. Returns 1, or 0 (not the holder: nothing).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local i, sets, drops = 2, {}, {}
while ARGV[i] ~= '-' do
  sets[#sets + 1] = ARGV[i]
  sets[#sets + 1] = ARGV[i + 1]
  i = i + 2
end
for j = i + 1, #ARGV do drops[#drops + 1] = ARGV[j] end
if #sets > 0 then redis.call('HSET', KEYS[2], unpack(sets)) end
if #drops > 0 then redis.call('HDEL', KEYS[2], unpack(drops)) end
return 1
