-- wrk script of benches/peers/run.sh: one check-and-mark per request, each with one
-- fresh ID, posted to the URL given to wrk:
--
--   wrk -t1 -c8 -d15s -s benches/peers/single.lua \
--       http://127.0.0.1:7070/v1/namespaces/default/check-and-mark
--
-- With DEPTH=N in the environment (default 1), each connection pipelines N requests
-- at a time over HTTP/1.1, writing them together before reading their answers (the
-- pipelined workload of benches/peers/peers.py; compare with redis-benchmark -P N).
-- wrk counts the requests in the first string request() returns and expects as many
-- answers to each later one; it counts every answer, but times each group once, from
-- its sending to its last answer.
--
-- IDs are 32 lowercase hex characters, like oncelyd load's: the wrk thread's
-- number, a per-run number (ONCELY_WRK_RUN, default 0) and the thread's request
-- counter, so they are unique within a run and across runs given distinct run
-- numbers. Each request's body is built before it is sent; wrk calls request() for
-- every request, on the thread that sends it.
--
-- At the end one line is printed, after wrk's own summary:
--   ONCELY_WRK {"requests":N,"duration_us":N,"p50_us":N,"p99_us":N,...}
-- with the latency percentiles (wrk times each request from its sending to its
-- answer) and the error counts, for benches/peers/peers.py.

local threads = {}

function setup(thread)
   thread:set("thread_number", #threads)
   table.insert(threads, thread)
end

local depth = math.max(1, tonumber(os.getenv("DEPTH") or "1") or 1)
local prefix
local sent = 0

function init(args)
   local run = tonumber(os.getenv("ONCELY_WRK_RUN") or "0") or 0
   prefix = string.format("%08x%08x", thread_number, run)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

local function one()
   sent = sent + 1
   -- The counter in two 24-bit halves: string.format's %x takes 32-bit integers.
   local hi = math.floor(sent / 16777216)
   local lo = sent % 16777216
   local body = string.format('{"ids":["%s%08x%08x"]}', prefix, hi, lo)
   return wrk.format(nil, nil, nil, body)
end

function request()
   if depth == 1 then
      return one()
   end
   local batch = {}
   for i = 1, depth do
      batch[i] = one()
   end
   return table.concat(batch)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'ONCELY_WRK {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"mean_us":%.1f,"max_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write,
      e.status, e.timeout))
end
