--- Who may read data: authentication and the limits PhoenixKit's HTTP API
-- does not enforce (expiry, IP whitelist, allowed hours, rate limit,
-- download and record budgets).
--
-- The rate window lives in the connection row and is advanced by one
-- atomic UPDATE, so every nginx worker and thread sees the same count.
-- @module pksync.access
local util = require "pksync.util"

local tonumber, tostring, type, ipairs = tonumber, tostring, type, ipairs
local str_match, str_find, str_gmatch, str_sub = string.match, string.find, string.gmatch, string.sub
local math_floor = math.floor

local _M = {}

-- Addresses are arrays of units: IPv4 four 8-bit octets, IPv6 eight 16-bit
-- groups. `width` is the unit size in bits.

--- Dotted IPv4 (four decimal octets 0..255, no leading zeros) as octets, or nil.
local function ipv4(s)
  local parts = { str_match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts ~= 4 then return nil end
  for i, part in ipairs(parts) do
    local v = tonumber(part)
    if #part > 3 or v > 255 or (#part > 1 and str_sub(part, 1, 1) == "0") then return nil end
    parts[i] = v
  end
  return parts
end

--- Hex groups of one side of "::" (may be empty); an IPv4 tail counts as two.
local function hex_groups(s, out, allow_v4_tail)
  if s == "" then return true end
  local fields, n = {}, 0
  for f in str_gmatch(s .. ":", "([^:]*):") do
    n = n + 1
    fields[n] = f
  end
  for i, f in ipairs(fields) do
    local quad = i == n and allow_v4_tail and str_find(f, ".", 1, true) and ipv4(f)
    if quad then
      out[#out + 1] = quad[1] * 256 + quad[2]
      out[#out + 1] = quad[3] * 256 + quad[4]
    elseif str_match(f, "^%x%x?%x?%x?$") then
      out[#out + 1] = tonumber(f, 16)
    else
      return false
    end
  end
  return true
end

--- IPv6 text (RFC 4291: hex groups, one "::", optional dotted IPv4 tail)
-- as eight groups, or nil. Zone ids ("%eth0") are not accepted.
local function ipv6(s)
  if not str_find(s, ":", 1, true) or str_find(s, "[^%x:%.]") or #s > 45 then return nil end
  local head, tail = str_match(s, "^(.-)::(.*)$")
  local groups = {}
  if not head then
    if not hex_groups(s, groups, true) or #groups ~= 8 then return nil end
    return groups
  end
  if str_find(tail, "::", 1, true) then return nil end
  local back = {}
  if not hex_groups(head, groups, false) or not hex_groups(tail, back, true) then return nil end
  if #groups + #back > 7 then return nil end
  for _ = #groups + #back + 1, 8 do groups[#groups + 1] = 0 end
  for _, g in ipairs(back) do groups[#groups + 1] = g end
  return groups
end

--- An address as units and the unit width, or nil.
local function parse_address(s)
  local v4 = ipv4(s)
  if v4 then return v4, 8 end
  local v6 = ipv6(s)
  if v6 then return v6, 16 end
  return nil
end

--- True when the first `bits` bits of a and b (same family) are equal.
local function same_prefix(a, b, bits, width)
  for i = 1, #a do
    if bits <= 0 then return true end
    if bits >= width then
      if a[i] ~= b[i] then return false end
    else
      local size = 2 ^ (width - bits)
      return math_floor(a[i] / size) == math_floor(b[i] / size)
    end
    bits = bits - width
  end
  return true
end

--- True when address `ip` matches whitelist entry `entry`: an IPv4 or IPv6
-- address ("192.0.2.7", "2001:db8::1", "::1") or CIDR block ("10.0.0.0/8",
-- "2001:db8::/32"). Addresses compare by value, so every spelling of an
-- IPv6 address matches. Malformed entries, prefixes beyond the family's
-- length and an address of the other family never match; nothing raises.
-- @tparam string ip the peer's address
-- @tparam string entry one whitelist entry
-- @treturn boolean
function _M.ip_matches(ip, entry)
  if type(ip) ~= "string" or type(entry) ~= "string" then return false end
  local addr, width = parse_address(ip)
  if not addr then return false end
  local net, bits = str_match(entry, "^([^/]+)/(%d%d?%d?)$")
  local base, base_width = parse_address(net or entry)
  if not base or base_width ~= width then return false end
  local len = #addr * width
  local prefix = bits and tonumber(bits) or len
  if prefix > len then return false end
  return same_prefix(addr, base, prefix, width)
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
