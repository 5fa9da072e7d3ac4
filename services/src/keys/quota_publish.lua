-- Stores a key's new limits for every instance to see, unless newer ones are stored already:
-- a compare and set in one step, as another instance's publish must not come between reading
-- the stored version and writing.
-- KEYS[1]  km:{<key id>}:quota   ARGV[1..4]  hour limit, day limit, burst rate, version (ms)
-- Returns 1 if stored.
local stored = tonumber(redis.call('HGET', KEYS[1], 'qv'))
local written = 0
if not (stored and stored >= tonumber(ARGV[4])) then
  redis.call('HSET', KEYS[1], 'hl', ARGV[1], 'dl', ARGV[2], 'br', ARGV[3], 'qv', ARGV[4])
  written = 1
end
-- A key with no traffic yet has no expiry (the check script sets it when counting starts).
if redis.call('PTTL', KEYS[1]) == -1 then
  local t = redis.call('TIME')
  keep_past_day(KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
return written
