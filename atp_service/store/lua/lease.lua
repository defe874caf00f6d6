-- Take or keep a lease (store/duty.py Lease). KEYS[1] the lease; ARGV[1] the caller, ARGV[2]
-- its length in ms, ARGV[3] 'hold' or 'release'. Returns 1 when the caller holds it after.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
