-- wrk script of the Range benchmark (bench/ranges.py): every request asks for byte ranges of
-- the 1 MiB object, drawn from a seeded generator so that both servers of a run see the same
-- mix. Arguments after "--": CASE SEED [SIZE].
--   aligned64k  one 64 KiB range at a random 64 KiB boundary (the HIT bench's Range case)
--   offset64k   one 64 KiB range at a random byte offset
--   randlen     one range of a random length, 1 KiB to 1 MiB (log-uniform), at a random offset
--   multi       2 to 4 disjoint ranges in increasing order, each 1 KiB to 64 KiB (log-uniform)
-- The same rules are written in Python in bench/ranges.py (draw_ranges), which checks a sample
-- of answers against the object's bytes.
local case, seed, size = "offset64k", 1, 1048576
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  case = args[1] or case
  seed = tonumber(args[2] or seed)
  size = tonumber(args[3] or size)
  -- one generator per wrk thread, each seeded apart, the same for every server of a run
  math.randomseed(seed * 1000 + (wrk.thread:get("id") or 0))
end

local function loglen(lo, hi)
  return math.floor(math.exp(math.log(lo) + math.random() * (math.log(hi) - math.log(lo))))
end

local function spec()
  if case == "aligned64k" then
    local start = math.random(0, size / 65536 - 1) * 65536
    return start .. "-" .. (start + 65535)
  elseif case == "offset64k" then
    local start = math.random(0, size - 65536)
    return start .. "-" .. (start + 65535)
  elseif case == "randlen" then
    local len = loglen(1024, size)
    local start = math.random(0, size - len)
    return start .. "-" .. (start + len - 1)
  elseif case == "multi" then
    local n = math.random(2, 4)
    local slot = math.floor(size / n)     -- one range inside each slot: disjoint, in order
    local parts = {}
    for i = 0, n - 1 do
      local len = loglen(1024, 65536)
      local start = i * slot + math.random(0, slot - len - 1)
      parts[#parts + 1] = start .. "-" .. (start + len - 1)
    end
    return table.concat(parts, ",")
  end
  error("unknown case " .. tostring(case))
end

request = function()
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. spec() })
end
