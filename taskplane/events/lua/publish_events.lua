-- Append events to the event stream and publish each on the live channel, in order
-- (the bus's round trip on a Redis Cluster, where a pipeline cannot PUBLISH).
-- KEYS[1] the event stream
-- ARGV[1] about how many entries the stream keeps (MAXLEN ~)   ARGV[2] the channel
-- ARGV[3..] the events' JSON payloads
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
  redis.call('PUBLISH', ARGV[2], ARGV[i])
end
return #ARGV - 2
