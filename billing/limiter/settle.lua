-- Replace a reservation's worst-case charge by the actual token count and release its slot. Idempotent: the
-- reservation record is marked settled and kept (as a tombstone) for the settled ttl.
--
-- KEYS[1] log ZSET   KEYS[2] log total STRING   KEYS[3] slots ZSET   KEYS[4] quota HASH
-- KEYS[5] reservation STRING "<settled 0|1> <tokens> <slot taken 0|1> <quota gen>"
-- ARGV 1 request id   2 actual tokens   3 settled ttl ms   4 track quota 0|1
--      5 quota gen the reservation was charged under (used only if its record is gone)
--
-- Reply: {applied (0 = already settled), quota charge change}

local rid = ARGV[1]
local actual = tonumber(ARGV[2])
local track_quota = ARGV[4] == '1'

local rec = redis.call('GET', KEYS[5])
local settled, reserved, gen
if rec then
  settled, reserved, gen = string.match(rec, '^(%d) (%d+) %d (.*)$')
end
if settled == '1' then
  redis.call('ZREM', KEYS[3], rid)
  return {0, 0}
end

local charge = 0
if reserved then
  local delta = actual - tonumber(reserved)
  -- Still in the log (not yet pruned): the window follows the actual count too.
  local member = rid .. '|' .. reserved
  local ts = redis.call('ZSCORE', KEYS[1], member)
  if ts and delta ~= 0 then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZADD', KEYS[1], ts, rid .. '|' .. actual)
    redis.call('INCRBY', KEYS[2], delta)
  end
  if track_quota then
    local current = redis.call('HGET', KEYS[4], 'gen')
    if current and current == gen then
      charge = delta
    elseif current then
      -- The counter was rebuilt from the ledger after this reservation: the worst case is not in it, and the
      -- ledger did not yet hold this request, so only the actual spend is added.
      charge = actual
    end
  end
elseif track_quota then
  -- The reservation record is gone. If the counter was rebuilt since the reservation (Redis flushed), the
  -- ledger it came from did not hold this request: add what was really spent. If it is the same counter, the
  -- record was either a tombstone that expired (settled long ago) or evicted before settling: in both cases
  -- changing nothing is safe (at worst the reserved worst case stays charged until the next rebuild).
  local current = redis.call('HGET', KEYS[4], 'gen')
  if current and current ~= ARGV[5] then
    charge = actual
  end
end
if charge ~= 0 then
  redis.call('HINCRBY', KEYS[4], 'used', charge)
end
redis.call('ZREM', KEYS[3], rid)
redis.call('SET', KEYS[5], '1 ' .. actual .. ' 0 ' .. (gen or ''), 'PX', ARGV[3])
return {1, charge}
