-- Move configuration keys from their old names to their new ones (a single Redis only: the
-- old and the new names are in different slots). KEYS: old, new, old, new, ...
-- A new key that exists already wins; what only the old one had is merged in (hash
-- fields, set members; a counter keeps the larger value). Returns how many moved.

local moved = 0
for i = 1, #KEYS, 2 do
  local old, new = KEYS[i], KEYS[i + 1]
  local kind = redis.call('TYPE', old).ok
  if kind ~= 'none' then
    if redis.call('EXISTS', new) == 0 then
      redis.call('RENAME', old, new)
    elseif kind == 'hash' then
      local flat = redis.call('HGETALL', old)
      for j = 1, #flat, 2 do redis.call('HSETNX', new, flat[j], flat[j + 1]) end
      redis.call('DEL', old)
    elseif kind == 'set' then
      redis.call('SUNIONSTORE', new, new, old)
      redis.call('DEL', old)
    else
      local a, b = tonumber(redis.call('GET', old)), tonumber(redis.call('GET', new))
      if a and b and a > b then redis.call('SET', new, a) end
      redis.call('DEL', old)
    end
    moved = moved + 1
  end
end
return moved
