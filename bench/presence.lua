-- wrk script for bench/run: drives one route of presence-api and prints one RESULT line.
--
-- BENCH_MODE    ping  | POST /v1/users/{id}/ping, ids in turn
--               get   | GET /v1/users/{id}/presence
--               query | POST /v1/presence/query with BENCH_BATCH ids
-- BENCH_USERS   ids come from 0 .. BENCH_USERS-1 (at random but for pings), twelve
--               digits (the users presence-bench seeds, and redis-benchmark's keys)
-- BENCH_TOKEN   the bearer token sent with every request
-- BENCH_THINK_MS  when set, each connection waits this long on average between a
--               response and its next request (wrk waits whole milliseconds, so the
--               wait is a random mix of the two nearest)

local mode = os.getenv("BENCH_MODE") or "ping"
local users = tonumber(os.getenv("BENCH_USERS") or "1000000")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local think = tonumber(os.getenv("BENCH_THINK_MS") or "0")
local authorization = "Bearer " .. (os.getenv("BENCH_TOKEN") or "")
wrk.headers["Authorization"] = authorization

local next_thread = 1

function setup(thread)
  thread:set("thread_no", next_thread)
  next_thread = next_thread + 1
end

local function any_user()
  return string.format("%012d", math.random(0, users - 1))
end

-- Pings walk the ids in order, each thread from its own starting point, so that a user
-- pings about as rarely as a real client does and the API's per-user ping limit, which a
-- random draw would now and then trip, stays out of the measurement.
local sent = 0

local function next_pinger()
  local offset = math.floor(users / 2) * (thread_no - 1)
  return string.format("%012d", (offset + sent) % users)
end

-- Pings and single reads are built by hand around a fixed tail rather than with
-- wrk.format, which rebuilds every header line on every call: the load generator shares
-- the cores with the server, so its own cost per request comes off the server's rate.
local tail

-- Query bodies are made up front, so the load generator spends its time on the wire.
local queries = {}

function init(args)
  math.randomseed(thread_no * 7919)
  local host = wrk.headers["Host"] or (wrk.host .. ":" .. wrk.port)
  tail = " HTTP/1.1\r\nHost: " .. host .. "\r\nAuthorization: " .. authorization ..
    "\r\nContent-Length: 0\r\n\r\n"
  if mode == "query" then
    local headers = { ["Content-Type"] = "application/json", ["Authorization"] = authorization }
    for b = 1, 256 do
      local ids = {}
      for k = 1, batch do ids[k] = '"' .. any_user() .. '"' end
      local body = '{"user_ids":[' .. table.concat(ids, ",") .. ']}'
      queries[b] = wrk.format("POST", "/v1/presence/query", headers, body)
    end
  end
end

function request()
  sent = sent + 1
  if mode == "ping" then
    return "POST /v1/users/" .. next_pinger() .. "/ping" .. tail
  elseif mode == "get" then
    return "GET /v1/users/" .. any_user() .. "/presence" .. tail
  end
  return queries[sent % #queries + 1]
end

if think > 0 then
  function delay()
    local whole = math.floor(think)
    if math.random() < think - whole then return whole + 1 end
    return whole
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f mean_ms=%.3f p50_ms=%.3f p99_ms=%.3f errors=%d\n",
    summary.requests, summary.duration / 1e6, latency.mean / 1000,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors))
end
