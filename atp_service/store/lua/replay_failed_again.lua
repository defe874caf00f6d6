-- A replayed message was refused again: say so on its letter's mark, which a later replay
-- then takes again (the letter itself is still in the dead-letter topic: no copy is made).
-- KEYS[1] the marks hash (atp:dlq:replayed).
-- ARGV: the letter's field ("<partition>:<offset>"), when, the code, the detail.
-- Returns 1 when the mark was there and now says so; 0 when there is no such mark.

local marks, letter = KEYS[1], ARGV[1]
local held = redis.call('HGET', marks, letter)
if not held then return 0 end
local ok, mark = pcall(cjson.decode, held)
if not ok or type(mark) ~= 'table' then return 0 end
mark.failed_again_at = ARGV[2]
mark.code = ARGV[3]
mark.detail = ARGV[4]
redis.call('HSET', marks, letter, cjson.encode(mark))
return 1
