--- Who may read data: authentication and the limits PhoenixKit's HTTP API
-- does not enforce (expiry, IP whitelist, allowed hours, rate limit,
-- download and record budgets).
--
-- The rate window lives in the connection row and is advanced by one
-- atomic UPDATE, so every nginx worker and thread sees the same count.
-- @module pksync.access
local util = require "pksync.util"

local tonumber, tostring, type, ipairs = tonumber, tostring, type, ipairs
local str_format, str_match, str_lower = string.format, string.match, string.lower
local math_floor = math.floor

local _M = {}

--- Parse dotted IPv4 into a 32-bit number, or nil.
local function ipv4(s)
  local a, b, c, d = str_match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local n = 0
  for _, part in ipairs { a, b, c, d } do
    local v = tonumber(part)
    if v > 255 or #part > 3 then return nil end
    n = n * 256 + v
  end
  return n
end

--- True when address `ip` matches whitelist entry `entry` (an address or,
-- for IPv4, a CIDR block). IPv6 entries match exactly (case-insensitive).
function _M.ip_matches(ip, entry)
  if type(ip) ~= "string" or type(entry) ~= "string" then return false end
  local net, bits = str_match(entry, "^([^/]+)/(%d+)$")
  local addr = ipv4(ip)
  if net and addr then
    local base, prefix = ipv4(net), tonumber(bits)
    if not base or prefix > 32 then return false end
    local size = 2 ^ (32 - prefix)
    return math_floor(addr / size) == math_floor(base / size)
  end
  if addr then return addr == ipv4(entry) end
  return str_lower(ip) == str_lower(entry)
end

local function ip_allowed(whitelist, ip)
  if type(whitelist) ~= "table" or #whitelist == 0 then return true end
  for _, entry in ipairs(whitelist) do
    if _M.ip_matches(ip, entry) then return true end
  end
  return false
end

--- Allowed hours are UTC hours, both ends inclusive; start > end wraps
-- past midnight (22..6 allows 22:00 to 06:59).
function _M.hour_allowed(start, stop, hour)
  if type(start) ~= "number" or type(stop) ~= "number" then return true end
  if start <= stop then return hour >= start and hour <= stop end
  return hour >= start or hour <= stop
end

--- Authenticate a data request and apply the connection's limits.
-- @return conn, or nil and the error answer (a response table)
function _M.authorize(self, req, body, fail)
  local conn = self:find_sender_by_hash(body.auth_token_hash)
  if conn == nil then return nil, fail(500, "Store unavailable") end
  if not conn then return nil, fail(401, "Invalid connection") end
  if conn.status ~= "active" then return nil, fail(403, "Connection is not active") end
  local w = self:count_request(conn.uuid)
  if not w then return nil, fail(500, "Store unavailable") end
  if w.expired then return nil, fail(403, "Connection has expired") end
  if not ip_allowed(conn.ip_whitelist, req.remote_addr) then return nil, fail(403, "IP address not allowed") end
  if not _M.hour_allowed(conn.allowed_hours_start, conn.allowed_hours_end, w.hour) then
    return nil, fail(403, "Access is not allowed at this hour")
  end
  local per_minute = conn.rate_limit_requests_per_minute
  if type(per_minute) == "number" and per_minute > 0 and w.count > per_minute then
    local r = fail(429, "Rate limit exceeded")
    r.headers["retry-after"] = tostring(w.retry_after > 0 and w.retry_after or 1)
    return nil, r
  end
  return conn
end

--- The largest page a pull may have now, or nil and the error answer when
-- the connection's download or record budget is spent.
function _M.pull_budget(conn, starting, fail)
  if starting and type(conn.max_downloads) == "number" and conn.downloads_used >= conn.max_downloads then
    return nil, fail(403, "Download limit reached")
  end
  local page = conn.max_records_per_request
  local total = conn.max_records_total
  if type(total) == "number" then
    local left = total - conn.records_downloaded
    if left <= 0 then return nil, fail(403, "Record limit reached") end
    if left < page then page = left end
  end
  return page
end

return _M
