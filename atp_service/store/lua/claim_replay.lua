-- Take the replay mark of one dead letter, unless a replay already holds it.
-- KEYS[1] the marks hash (atp:dlq:replayed).
-- ARGV: the letter's field ("<partition>:<offset>"), its digest, the new mark (JSON).
-- Returns 1 when taken: no mark yet, a mark of another letter at that place (a topic made
-- anew), or a mark whose replay failed again; 0 when the letter is replayed already.

local marks, letter, digest, mark = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local held = redis.call('HGET', marks, letter)
if held then
  local ok, old = pcall(cjson.decode, held)
  if ok and type(old) == 'table' and old.digest == digest and not old.failed_again_at then
    return 0
  end
end
redis.call('HSET', marks, letter, mark)
return 1
