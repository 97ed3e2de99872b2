-- wrk script: POST chat-completion bodies, taken in turn from a JSON-lines file.
--   wrk -t1 -c32 -d10s --latency -s bench/wrk/chat.lua URL -- BODIES.jsonl [stream]
-- Every line of BODIES.jsonl is one request body. With "stream" as the second
-- argument, "stream":true is added to each body (the bodies must not set it).
-- Non-2xx answers are counted by wrk itself ("Non-2xx or 3xx responses").

local requests = {}
local i = 0

function init(args)
  local path = args[1] or error("give the bodies file after --")
  local stream = args[2] == "stream"
  for line in io.lines(path) do
    if #line > 0 then
      local body = line
      if stream then
        body = string.gsub(line, "^{", '{"stream":true,', 1)
      end
      requests[#requests + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
    end
  end
  -- spread the threads' starting points over the bodies
  i = math.random(#requests) - 1
end

function request()
  i = i % #requests + 1
  return requests[i]
end
