-- wrk script: POST /allocate with a new order line each time, over many skus.
-- Environment: ALLOT_TOKEN (access token), ALLOT_SKUS (comma-separated); with
-- ALLOT_COUNT_201 set, it also counts the 201 answers and prints "201 responses: N".
local token = os.getenv("ALLOT_TOKEN")
local skus = {}
for sku in string.gmatch(os.getenv("ALLOT_SKUS"), "[^,]+") do skus[#skus + 1] = sku end
local thread_id = 0
local counter = 0
local threads = {}

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  threads[#threads + 1] = thread
end

function init(args)
  math.randomseed(os.time() + tid * 7919)
end

function request()
  counter = counter + 1
  local sku = skus[math.random(#skus)]
  local body = string.format('{"orderid":"wrk-%d-%d-%d","sku":"%s","qty":1}', tid, os.time(), counter, sku)
  return wrk.format("POST", "/allocate", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

if os.getenv("ALLOT_COUNT_201") then
  created = 0

  function response(status, headers, body)
    if status == 201 then created = created + 1 end
  end

  function done(summary, latency, requests)
    local total = 0
    for _, thread in ipairs(threads) do total = total + thread:get("created") end
    io.write(string.format("201 responses: %d\n", total))
  end
end
