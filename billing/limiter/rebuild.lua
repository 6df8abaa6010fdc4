-- Reset a period's quota counter from the ledger total, under a new generation so that settlements of
-- reservations made before the reset add their actual spend instead of subtracting a worst case that the
-- new counter never held.
--
-- KEYS[1] quota HASH
-- ARGV 1 used tokens   2 generation   3 now ms (-1 = Redis server time)   4 period end ms   5 margin ms
--      6 only if missing 0|1
--
-- Reply: 1 if written, 0 if the counter existed and only_if_missing was set.

if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local now = tonumber(ARGV[3])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('HSET', KEYS[1], 'used', ARGV[1], 'gen', ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[4]) - now, 0) + tonumber(ARGV[5]))
return 1
