local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local window = tonumber(ARGV[1])
local guard = ARGV[4]
if guard ~= '' then
  local entry = redis.call('HGET', KEYS[3], guard)
  local current = ''
  if entry then current = string.format('%d', cjson.decode(entry).version) end
  if current ~= ARGV[5] then
    return {{current .. ':' .. string.format('%d', last), -1}}
  end
  if ARGV[6] == '' then
    redis.call('HDEL', KEYS[3], guard)
  else
    redis.call('HSET', KEYS[3], guard, ARGV[6])
  end
end
local node = ARGV[7]
local out = {}
local n = (#ARGV - 7) / 4
for i = 1, n do
  local base = 4 + 4 * i
  local k = tonumber(ARGV[base])
  local cond = ARGV[base + 1]
  local skip = false
  if cond ~= '' then
    local set = KEYS[tonumber(string.sub(cond, 2))]
    if string.sub(cond, 1, 1) == '+' then
      redis.call('SADD', KEYS[4], set)
      skip = redis.call('SADD', set, node) == 0 or redis.call('SCARD', set) > 1
    else
      redis.call('SREM', KEYS[4], set)
      skip = redis.call('SREM', set, node) == 0 or redis.call('SCARD', set) > 0
    end
  end
  local seen = false
  if k > 0 then seen = redis.call('GET', KEYS[k]) end
  if skip then
    out[i] = {'0', 2}
  elseif seen then
    out[i] = {seen, 1}
  else
    local id = math.max(now, last + 1)
    last = id
    local ms = math.floor(id / 1000)
    redis.call('XADD', KEYS[1], string.format('%d-%d', ms, id - ms * 1000), ARGV[base + 2], ARGV[base + 3])
    local ids = string.format('%d', id)
    if k > 0 then redis.call('SET', KEYS[k], ids, 'PX', window) end
    out[i] = {ids, 0}
  end
end
redis.call('SET', KEYS[2], string.format('%d', last))
local max_len = tonumber(ARGV[2])
if max_len > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', max_len) end
local max_age = tonumber(ARGV[3])
if max_age > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', math.floor(now / 1000) - max_age))
end
return out
