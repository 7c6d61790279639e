-- wrk script: POSTs the file named by $BENCH_BODY with Content-Type $BENCH_CONTENT_TYPE (and, for the
-- v2 binary tensor extension, Inference-Header-Content-Length $BENCH_HEADER_LENGTH), then prints one
-- line "BENCH_JSON {...}" with the counts and latency percentiles (microseconds) that bench/serving.py reads.
local file = assert(io.open(assert(os.getenv("BENCH_BODY"), "set BENCH_BODY to a body file"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
local header_length = os.getenv("BENCH_HEADER_LENGTH")
if header_length and header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"mean_us": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
