-- Checks and counts a batch of requests of one key against its quota, atomically.
-- KEYS[1]  km:{<key id>}:quota  (hash; hash-tagged so that it works on Redis Cluster)
-- ARGV[1]  hour limit            ARGV[2] day limit
-- ARGV[3]  burst rate per second (0 = no burst limit)
-- ARGV[4]  version of these limits (ms since epoch of their last change, on PostgreSQL's clock,
--          so it grows with every change of the key whatever the app nodes' clocks say)
-- ARGV[5]  clock offset in ms (tests only; 0 in production)
-- ARGV[6]  requests in this batch, in arrival order (optional, 1 to 10000; default 1)
-- The first `admitted` requests of the batch are admitted and counted, the rest refused (and
-- count nothing): exactly what the same requests checked one by one would get.
-- Returns {admitted, blocked_mask, hour_used, day_used, now_ms, hour_limit, day_limit,
--          burst_rate, retry_ms}, the uses after the batch; blocked_mask (1 hour, 2 day,
--          4 burst) and retry_ms describe why the first refused request was refused.
-- Whole numbers of sane size only: anything else is refused before it can be stored.
local function whole(v)
  local n = tonumber(v)
  if n == nil or n ~= n or math.abs(n) > 1e15 or n ~= math.floor(n) then return nil end
  return n
end
for i = 1, 5 do
  if whole(ARGV[i]) == nil then return redis.error_reply('ERR quota arguments must be whole numbers') end
end
if tonumber(ARGV[1]) < 1 or tonumber(ARGV[2]) < 1 or tonumber(ARGV[3]) < 0 then
  return redis.error_reply('ERR quota limits must be positive')
end
local n = 1
if ARGV[6] ~= nil then
  n = whole(ARGV[6])
  if n == nil or n < 1 or n > 10000 then return redis.error_reply('ERR batch size must be 1 to 10000') end
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[5])
local now_s = math.floor(now_ms / 1000)
local hour_start = now_s - (now_s % 3600)
local day_start = now_s - (now_s % 86400)

local s = redis.call('HMGET', KEYS[1], 'hw', 'hc', 'dw', 'dc', 'tat', 'hl', 'dl', 'br', 'qv', 'tf', 'tr')

-- The newest limits win: those stored here (written when a quota changes) or the caller's.
local hl, dl, br, qv = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local stored_qv = tonumber(s[9])
if stored_qv and stored_qv > qv then
  hl, dl, br, qv = tonumber(s[6]), tonumber(s[7]), tonumber(s[8]), stored_qv
end

local hc = 0
if tonumber(s[1]) == hour_start then hc = tonumber(s[2]) end
local dc = 0
if tonumber(s[3]) == day_start then dc = tonumber(s[4]) end

-- As many as every window has room for, in order.
local admitted = math.max(0, math.min(n, hl - hc, dl - dc))

-- Burst: GCRA allowing `br` requests at once, refilled at `br` per second; each admission
-- moves the theoretical arrival time on by one interval (1000 / br ms). In whole numbers only:
-- the time is kept as whole ms `tat` plus `tf` / br ms (0 <= tf < br), and compared in units
-- of 1/br ms, where an interval is exactly 1000. (Fractions of a ms at today's timestamps
-- lost bits in every addition, and a whole burst arriving in one millisecond was refused its
-- last request.)
local tat, tf = nil, 0
local late, tolerance = 0, 0  -- in 1/br ms: how far `tat` is ahead of now, and how far it may be
if br > 0 then
  tolerance = 1000 * (br - 1)
  tat = math.floor(tonumber(s[5]) or now_ms)
  tf = tonumber(s[10]) or 0
  -- A fraction counted under another rate (`tr`, the rate just changed) is rounded up to a
  -- whole ms: read in the new rate's units it could stand for seconds.
  if (tonumber(s[11]) or br) ~= br then
    if tf > 0 then tat = tat + 1 end
    tf = 0
  end
  if tat < now_ms then tat, tf = now_ms, 0 end
  late = (tat - now_ms) * br + tf
  local room = 0
  if late <= tolerance then room = math.floor((tolerance - late) / 1000) + 1 end
  admitted = math.min(admitted, room)
  local ahead = tf + admitted * 1000
  tat, tf = tat + math.floor(ahead / br), ahead % br
  late = (tat - now_ms) * br + tf
end

hc = hc + admitted
dc = dc + admitted

-- Why the first refused request (if any) was refused.
local blocked = 0
local retry_ms = 0
if admitted < n then
  if hc >= hl then
    blocked = blocked + 1
    retry_ms = math.max(retry_ms, (hour_start + 3600) * 1000 - now_ms)
  end
  if dc >= dl then
    blocked = blocked + 2
    retry_ms = math.max(retry_ms, (day_start + 86400) * 1000 - now_ms)
  end
  if tat and late > tolerance then
    blocked = blocked + 4
    retry_ms = math.max(retry_ms, (late - tolerance) / br)
  end
end

-- Only what changed is written: this runs for every batch of requests.
if admitted > 0 then
  redis.call('HSET', KEYS[1], 'hw', hour_start, 'hc', hc, 'dw', day_start, 'dc', dc)
  if stored_qv ~= qv then redis.call('HSET', KEYS[1], 'hl', hl, 'dl', dl, 'br', br, 'qv', qv) end
  if tat then redis.call('HSET', KEYS[1], 'tat', tat, 'tf', tf, 'tr', br) end
  -- Set when the day's counting starts.
  if tonumber(s[3]) ~= day_start then keep_past_day(KEYS[1], now_ms) end
end

return {admitted, blocked, hc, dc, now_ms, hl, dl, br, math.ceil(retry_ms)}
