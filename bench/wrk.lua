-- The request loop of `python -m bench`'s load generator; bench/load.py runs wrk with it:
--   wrk --threads 1 --connections C --script bench/wrk.lua URL -- BODIES METHOD PATH STOP_AFTER OUT
-- BODIES holds the request bodies, each as a "content-type<TAB>length" line and then its
-- bytes; requests cycle through them, built once in init(). STOP_AFTER > 0 ends the run
-- after that many answers (wrk itself only knows durations): the thread stops and wrk gets
-- the SIGINT that Ctrl-C would send, which still reports. OUT receives "key value" lines.
local ffi = require("ffi")
ffi.cdef("int getpid(void); int kill(int pid, int sig);")
local SIGINT = 2
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local bodies, method, path = args[1], args[2], args[3]
  stop_after, out_path = tonumber(args[4]), args[5]
  prepared = {}
  local file = assert(io.open(bodies, "rb"))
  while true do
    local line = file:read("*l")
    if line == nil then break end
    local content_type, length = line:match("^(.*)\t(%d+)$")
    local body = file:read(tonumber(length))
    local headers = {}
    if content_type ~= "" then headers["Content-Type"] = content_type end
    prepared[#prepared + 1] = wrk.format(method, path, headers, length ~= "0" and body or nil)
  end
  file:close()
  sent, answered, failures, sample = 0, 0, {}, ""
end

function request()
  sent = sent % #prepared + 1
  return prepared[sent]
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    local kind = "HTTP " .. status
    failures[kind] = (failures[kind] or 0) + 1
    if sample == "" then sample = body:sub(1, 300):gsub("[\r\n]", " ") end
  end
  if answered == stop_after then
    wrk.thread:stop()
    ffi.C.kill(ffi.C.getpid(), SIGINT)
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(threads[1]:get("out_path"), "w"))
  out:write("answered ", summary.requests, "\n", "duration_us ", summary.duration, "\n")
  for _, kind in ipairs({"connect", "read", "write", "timeout"}) do
    if summary.errors[kind] > 0 then out:write("error socket ", kind, "\t", summary.errors[kind], "\n") end
  end
  for _, thread in ipairs(threads) do
    for kind, count in pairs(thread:get("failures")) do out:write("error ", kind, "\t", count, "\n") end
    local sample = thread:get("sample")
    if sample ~= "" then out:write("sample ", sample, "\n") end
  end
  if summary.requests > 0 then
    for _, q in ipairs({50, 95, 99}) do out:write("p", q, " ", latency:percentile(q), "\n") end
    out:write("mean ", latency.mean, "\n", "min ", latency.min, "\n", "max ", latency.max, "\n")
  end
  out:close()
end
