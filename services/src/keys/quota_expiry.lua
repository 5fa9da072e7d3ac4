-- How long a key's quota state is kept: a little past the UTC day it counts, so a key that goes
-- quiet costs nothing. Shared by the scripts that write that state (prepended to each).
local function keep_past_day(key, now_ms)
  local day_end_ms = now_ms - now_ms % 86400000 + 86400000
  redis.call('PEXPIRE', key, day_end_ms + 3600000 - now_ms)
end

