-- wrk script: every request asks for a random aligned 64 KiB range of the 1 MiB object,
-- the way players and CDNs fetch byte ranges of segments (issue: Range HITs vs nginx).
math.randomseed(12345)
request = function()
  local start = math.random(0, 15) * 65536
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. start .. "-" .. (start + 65535) })
end
