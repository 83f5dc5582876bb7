--- Small shared helpers: identifiers, URLs, logging without secrets.
-- @module pksync.util
local core = require "pksync.core"

local type, tostring, error, pairs = type, tostring, error, pairs
local str_sub, str_format, str_match = string.sub, string.format, string.match

local _M = {}

--- The JSON null sentinel (a NULL light userdata: equals cjson.null and ngx.null).
_M.null = core.null

--- True for nil and the JSON null sentinel.
function _M.is_null(v)
  return v == nil or v == core.null
end

local IDENT = "^[a-zA-Z_][a-zA-Z0-9_]*$"

--- True when s is a table or column name the protocol accepts
-- (`^[a-zA-Z_][a-zA-Z0-9_]*$`, at most 63 bytes like PostgreSQL's NAMEDATALEN).
function _M.valid_ident(s)
  return type(s) == "string" and #s <= 63 and str_match(s, IDENT) ~= nil
end

--- Quote an identifier for SQL after validating it (raises on anything
-- outside the protocol's identifier grammar: never spliced unchecked).
function _M.quote_ident(s)
  if not _M.valid_ident(s) then
    error(str_format("invalid SQL identifier %q", tostring(s)), 2)
  end
  return '"' .. s .. '"'
end

--- A table name for error messages and logs, cut to a safe length.
function _M.display(s)
  s = tostring(s)
  if #s > 80 then s = str_sub(s, 1, 77) .. "..." end
  return (s:gsub("[%c]", "?"))
end

--- Strip trailing slashes from a base URL.
function _M.base_url(url)
  return (url:gsub("/+$", ""))
end

--- Normalise a path prefix: "" or "/x/y" (leading slash, no trailing one).
function _M.normalize_prefix(prefix)
  if prefix == nil then return "/phoenix_kit" end
  prefix = prefix:gsub("/+$", "")
  if prefix ~= "" and str_sub(prefix, 1, 1) ~= "/" then prefix = "/" .. prefix end
  return prefix
end

--- The first 8 characters of a hash or token: all a log line may show.
function _M.redact(secret)
  if type(secret) ~= "string" then return "-" end
  return str_sub(secret, 1, 8) .. "…"
end

--- Shallow copy of a table.
function _M.copy(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k] = v end
  return out
end

--- The current UTC time as ISO 8601 with milliseconds ("2026-01-02T03:04:05.678Z").
function _M.iso_now()
  local ms = core.now_ms()
  local secs = math.floor(ms / 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. str_format(".%03dZ", math.floor(ms - secs * 1000))
end

--- Milliseconds since the epoch (wall clock), for durations and timestamps.
function _M.now_ms()
  return core.now_ms()
end

return _M
