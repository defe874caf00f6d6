-- One outbox stream's relay lease (keys.outbox_lease): one relay at a time publishes a stream,
-- so the events of a key go out in their order (store/relay_leases.py).
-- KEYS[1] the lease. ARGV[1] the relay, ARGV[2] the lease in ms, ARGV[3] what to do:
-- 'take' (renew it if it is this relay's, else take it if nobody holds it), 'renew' (only if
-- it is this relay's), 'drop' (let it go if it is this relay's).
-- Returns 1 if the relay holds the lease afterwards, else 0.

local holder = redis.call('GET', KEYS[1])
local mine = holder == ARGV[1]
if ARGV[3] == 'drop' then
  if mine then redis.call('DEL', KEYS[1]) end
  return 0
end
if mine then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if ARGV[3] == 'take' and not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
