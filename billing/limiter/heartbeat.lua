-- Extend a live stream's concurrency slot (and its reservation record) from now.
--
-- KEYS[1] slots ZSET   KEYS[2] reservation STRING
-- ARGV 1 request id   2 now ms (-1 = Redis server time)   3 slot ttl ms   4 reservation ttl ms
--
-- Reply: 1 if the slot was still held and is extended, 0 if it had lapsed or was released.

local rid = ARGV[1]
local now = tonumber(ARGV[2])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local slot_ttl = tonumber(ARGV[3])

local expiry = redis.call('ZSCORE', KEYS[1], rid)
if not expiry then
  return 0
end
if tonumber(expiry) <= now then
  -- Lapsed but not yet pruned: its place may already have been counted as free, so it cannot be revived.
  redis.call('ZREM', KEYS[1], rid)
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + slot_ttl, rid)
redis.call('PEXPIRE', KEYS[1], slot_ttl)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
return 1
