-- One admission decision (or, in "peek" mode, a read of the current counters) for one user.
--
-- KEYS[1] log          ZSET    member = "<request id>|<tokens charged>", score = admission time (ms); serves
--                              both rpm (its size) and tpm (the sum of its weights, kept in KEYS[2])
-- KEYS[2] log total    STRING  tokens charged by the entries in KEYS[1]
-- KEYS[3] slots        ZSET    member = request id, score = slot expiry (ms)
-- KEYS[4] quota        HASH    used = tokens charged this period, gen = id of the counter's incarnation
-- KEYS[5] reservation  STRING  "<settled 0|1> <tokens> <slot taken 0|1> <quota gen>"
--
-- ARGV[1] request id
-- ARGV[2] 16 little-endian int64, struct-packed: unpacking is one C call, where splitting and parsing text
--         cost about as much as four Redis commands. Per request: 1 now ms (-1 = Redis server time)
--         2 tokens  3 stream 0|1  4 quota baseline (-1 = none)  5 peek 0|1  6 binary reply 0|1.
--         Per plan: 7 window ms  8 rpm  9 tpm  10 slots  11 quota (limits: -1 = unlimited)
--         12 track quota 0|1  13 slot ttl ms  14 period end ms  15 period margin ms  16 reservation ttl ms
--
-- Reply: 20 integers, packed as little-endian int64 (or space-separated text for clients that decode
-- replies as UTF-8): status, now, quota missing 0|1, then for rpm, tpm, slots, quota: used, reset ms,
-- failed 0|1, retry ms; last the quota counter's generation (0: none). Early exits (status 2 and 4) send only
-- the first three.
-- status: 0 refused, 1 admitted, 2 request id already settled, 3 replay of an unsettled reservation,
--         4 quota counter missing and no baseline given (nothing recorded).

local a = {struct.unpack('<i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8', ARGV[2])}
local now = a[1]
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local tokens, stream, baseline, peek, binary = a[2], a[3] == 1, a[4], a[5] == 1, a[6] == 1
local window, rpm_limit, tpm_limit, slot_limit, quota_limit = a[7], a[8], a[9], a[10], a[11]
local track_quota, slot_ttl, period_end, period_margin, res_ttl = a[12] == 1, a[13], a[14], a[15], a[16]
local rid = ARGV[1]
local logged = rpm_limit >= 0 or tpm_limit >= 0
local horizon = now - window

local status = 1
if not peek then
  local rec = redis.call('GET', KEYS[5])
  if rec then
    if string.sub(rec, 1, 1) == '1' then
      return binary and struct.pack('<i8i8i8', 2, now, 0) or ('2 ' .. now .. ' 0')
    end
    status = 3
  end
end

-- Checked before anything is pruned, so that an early exit leaves every key as it was.
local quota_used, quota_gen, quota_missing = 0, '', 0
if track_quota then
  local q = redis.call('HMGET', KEYS[4], 'used', 'gen')
  if q[1] then
    quota_used, quota_gen = tonumber(q[1]), q[2] or ''
  elseif peek or status == 3 then
    quota_missing = 1
  elseif baseline >= 0 then
    -- Generations are integers below 2^53 so that they survive the trip through Lua numbers.
    quota_used, quota_gen = baseline, tostring(now)
    redis.call('HSET', KEYS[4], 'used', quota_used, 'gen', quota_gen)
    redis.call('PEXPIRE', KEYS[4], math.max(period_end - now, 0) + period_margin)
  else
    return binary and struct.pack('<i8i8i8', 4, now, 1) or ('4 ' .. now .. ' 1')
  end
end

-- An entry admitted at ts counts while now < ts + window. The oldest entries are read a page at a time, which
-- both prunes the expired ones and finds the oldest live one (for the reset time) in a single call.
local rpm_used, tpm_used, oldest, pruned = 0, 0, nil, false
if logged then
  tpm_used = tonumber(redis.call('GET', KEYS[2]) or '0')
  local first, expired, freed = 0, 0, 0
  while true do
    local page = redis.call('ZRANGE', KEYS[1], first, first + 7, 'WITHSCORES')
    local done = #page < 16
    for i = 1, #page, 2 do
      local ts = tonumber(page[i + 1])
      if ts > horizon then
        oldest, done = ts, true
        break
      end
      freed = freed + tonumber(string.match(page[i], '|(%d+)$'))
      expired = expired + 1
    end
    if done then break end
    first = first + 8
  end
  if expired > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, expired - 1)
    tpm_used, pruned = tpm_used - freed, true
  end
  rpm_used = redis.call('ZCARD', KEYS[1])
end
local slots_used = 0
if slot_limit >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  slots_used = redis.call('ZCARD', KEYS[3])
end

local rpm_fail, rpm_retry, tpm_fail, tpm_retry = 0, 0, 0, 0
local slot_fail, slot_retry, quota_fail, quota_retry = 0, 0, 0, 0
if status == 1 and not peek then
  if rpm_limit >= 0 and rpm_used + 1 > rpm_limit then
    rpm_fail, rpm_retry = 1, window
    if rpm_limit > 0 then
      -- The request fits once the (used - limit + 1) oldest entries have expired.
      local idx = rpm_used - rpm_limit
      local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
      rpm_retry = tonumber(e[2]) + window - now
    end
  end
  if tpm_limit >= 0 and tpm_used + tokens > tpm_limit then
    tpm_fail, tpm_retry = 1, window
    if tokens <= tpm_limit then
      -- Walk the log oldest first until enough weight has expired for this request to fit.
      local need, freed, idx, found = tpm_used + tokens - tpm_limit, 0, 0, false
      while not found do
        local page = redis.call('ZRANGE', KEYS[1], idx, idx + 255, 'WITHSCORES')
        if #page == 0 then break end
        for i = 1, #page, 2 do
          freed = freed + tonumber(string.match(page[i], '|(%d+)$'))
          if freed >= need then
            tpm_retry = tonumber(page[i + 1]) + window - now
            found = true
            break
          end
        end
        idx = idx + 256
      end
    end
  end
  if stream and slot_limit >= 0 and slots_used + 1 > slot_limit then
    -- Slots free when streams end, which cannot be predicted: the caller turns this into a polling hint.
    slot_fail = 1
  end
  if quota_limit >= 0 and quota_used + tokens > quota_limit then
    quota_fail, quota_retry = 1, math.max(period_end - now, 0)
  end
  if rpm_fail + tpm_fail + slot_fail + quota_fail > 0 then
    status = 0
  end
end

if status == 1 and not peek then
  local slot_taken = 0
  if logged then
    redis.call('ZADD', KEYS[1], now, rid .. '|' .. tokens)
    redis.call('PEXPIRE', KEYS[1], window)
    tpm_used, rpm_used = tpm_used + tokens, rpm_used + 1
    redis.call('SET', KEYS[2], tpm_used, 'PX', window)
    oldest = oldest or now
  end
  if stream and slot_limit >= 0 then
    -- Every process uses the same slot ttl, so the newest slot always expires last.
    redis.call('ZADD', KEYS[3], now + slot_ttl, rid)
    redis.call('PEXPIRE', KEYS[3], slot_ttl)
    slots_used = slots_used + 1
    slot_taken = 1
  end
  if track_quota then
    quota_used = redis.call('HINCRBY', KEYS[4], 'used', tokens)
  end
  redis.call('SET', KEYS[5], '0 ' .. tokens .. ' ' .. slot_taken .. ' ' .. quota_gen, 'PX', res_ttl)
end

if pruned and (status ~= 1 or peek) then
  redis.call('SET', KEYS[2], tpm_used, 'KEEPTTL')
end

-- Reset times: when the oldest log entry leaves the window (the earliest moment anything frees up), when the
-- oldest slot lapses on its own (only worked out when it matters: a refusal or a read), when the period ends.
local log_reset, slot_reset = window, 0
if oldest then
  log_reset = oldest + window - now
end
if slot_limit >= 0 and slots_used > 0 and (peek or status == 0) then
  local e = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if #e > 0 then slot_reset = tonumber(e[2]) - now end
end
local quota_reset = math.max(period_end - now, 0)

local reply = {status, now, quota_missing,
               rpm_used, log_reset, rpm_fail, rpm_retry,
               tpm_used, log_reset, tpm_fail, tpm_retry,
               slots_used, slot_reset, slot_fail, slot_retry,
               quota_used, quota_reset, quota_fail, quota_retry, tonumber(quota_gen) or 0}
if binary then
  return struct.pack('<i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8', unpack(reply))
end
return table.concat(reply, ' ')
