--- One protocol request: URL, headers, JSON body out, exact JSON back.
--
-- The control path of pksync: every ConnectionNotifier call goes through
-- `request`, which returns the HTTP status with the decoded body, or
-- `nil, err, detail` when the peer could not be reached.
-- @module pksync.transport
local core = require "pksync.core"
local util = require "pksync.util"

local type, setmetatable = type, setmetatable
local str_format, str_sub = string.format, string.sub
local json_encode, json_decode = core.json_encode, core.json_decode

local _M = {}

_M.USER_AGENT = "PhoenixKit-Sync/1.0 pksync/" .. core.version

--- The URL of a sync API endpoint on a peer.
-- @param site_url the peer's base URL
-- @param prefix the peer's PhoenixKit prefix (nil: "/phoenix_kit")
-- @param endpoint e.g. "list-tables"
function _M.endpoint_url(site_url, prefix, endpoint)
  return util.base_url(site_url) .. util.normalize_prefix(prefix) .. "/sync/api/" .. endpoint
end

local JSON_HEADERS = {
  ["content-type"] = "application/json",
  ["accept"] = "application/json",
}

--- Send one request and decode its answer.
-- @param http a core http handle
-- @param req {method=, url=, body=table|nil, timeout=, connect_timeout=, max_body=}
-- @return res {status=, json=decoded body or nil, body=raw text, json_error=}
-- @return[2] nil, err ("offline", "response_too_large" or curl's message), detail
function _M.request(http, req)
  local body
  if req.body ~= nil then
    local err
    body, err = json_encode(req.body)
    if not body then error("cannot encode request body: " .. err, 2) end
  end
  local res, err, detail = http:request {
    method = req.method or "POST",
    url = req.url,
    headers = JSON_HEADERS,
    body = body,
    timeout = req.timeout,
    connect_timeout = req.connect_timeout,
    max_body = req.max_body,
  }
  if not res then return nil, err, detail end
  local decoded, json_err = json_decode(res.body)
  return setmetatable({
    status = res.status,
    body = res.body,
    headers = res.headers,
    json = decoded,
    json_error = json_err,
  }, nil)
end

--- True when a URL's host is this machine (127.0.0.0/8, ::1, localhost).
function _M.is_loopback(url)
  local host = url:match("^%a+://%[([^%]]+)%]") or url:match("^%a+://([^/:?#]+)") or ""
  host = host:lower()
  return host == "localhost" or host == "::1" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

--- nil when credentials may go to `url`; else err, detail. With
-- `require_tls` (the default) a token or hash is never sent over plain
-- http, except to loopback addresses.
function _M.check_secure(client, url)
  if client.require_tls == false or url:sub(1, 8):lower() == "https://" or _M.is_loopback(url) then
    return nil
  end
  return "insecure_transport", { message = "refusing to send credentials over plain http to " ..
    util.base_url(url) .. " (use https, or require_tls = false)" }
end

--- A short, log-safe excerpt of a response body.
function _M.excerpt(body)
  if type(body) ~= "string" then return nil end
  local s = str_sub(body, 1, 200):gsub("[%c]", " ")
  if #body > 200 then s = s .. str_format("… (%d bytes)", #body) end
  return s
end

--- The peer's `error` text from a JSON answer, if it sent one.
function _M.peer_error(res)
  local body = res.json
  if type(body) == "table" and type(body.error) == "string" then return body.error end
  return nil
end

--- What an error detail says of an HTTP answer.
function _M.status_detail(res)
  return { http_status = res.status, message = _M.peer_error(res), body = _M.excerpt(res.body),
           error_code = type(res.json) == "table" and res.json.error_code or nil }
end

local DATA_STATUS = {
  [401] = "unauthorized",
  [403] = "forbidden",
  [429] = "rate_limited",
  [503] = "disabled",
}

--- Map a non-200 answer of a data endpoint to nil, err, detail: one
-- mapping for the control path and the importer.
-- @param res `{status=, json=, body=}`
-- @param not_found the error word for a 404
function _M.data_failure(res, not_found)
  local d = _M.status_detail(res)
  if res.status == 404 then return nil, not_found, d end
  if res.status == 400 and type(d.error_code) == "string" then return nil, d.error_code, d end
  return nil, DATA_STATUS[res.status] or "unexpected_response", d
end

return _M
