--- The serving side: `client:handle(request)` answers every endpoint.
--
-- Transport-agnostic: a request is `{method=, path=, headers=, body=,
-- remote_addr=}` and the answer `{status=, headers=, body=}`. Status codes,
-- bodies and the order of checks follow docs/protocol.md (and PhoenixKit
-- where that page is silent). pksync adds what PhoenixKit's HTTP API leaves
-- out: expiry, download and record limits, IP whitelist, allowed hours and a
-- per-minute rate limit, all checked against the store.
-- @module pksync.server
local core = require "pksync.core"
local util = require "pksync.util"
local answer = require "pksync.answer"
local policy = require "pksync.policy"
local serve_data = require "pksync.serve_data"

local type, tostring = type, tostring
local getmetatable, setmetatable = getmetatable, setmetatable
local str_find, str_sub = string.find, string.sub
local json_decode = core.json_decode
local null = core.null

local _M = {}

local reply, fail, require_fields = answer.reply, answer.fail, answer.require_fields

--- Protocol extensions this server offers (GET status: pksync.features).
local FEATURES = { "paged_pull", "uuid_text", "row_filters", "table_digest" }

local DEFAULT_MAX_REQUEST_BODY = 1024 * 1024
------------------------------------------------------------------------------
-- endpoints without a connection

local function h_status(self, req, settings)
  local body = {
    enabled = settings.enabled,
    incoming_mode = settings.incoming_mode,
    password_required = settings.incoming_mode == "require_password",
  }
  if self.extensions ~= false then
    body.pksync = { version = core.version, features = setmetatable(util.copy(FEATURES), core.array_mt) }
  end
  return reply(200, body)
end

local function register_metadata(req)
  local headers = req.headers or {}
  return {
    registered_via = "api", registered_at = util.iso_now(),
    remote_ip = req.remote_addr or "unknown",
    user_agent = type(headers["user-agent"]) == "string" and headers["user-agent"] or "unknown",
  }
end

local function check_password(self, settings, body)
  if settings.incoming_mode ~= "require_password" then return nil end
  local verdict = self:check_incoming_password(body.password)
  if verdict == nil then return fail(500, "Failed to create connection") end
  -- a site that asks for a password and has none set lets nobody in (0.2)
  if verdict == "unset" or body.password == nil or body.password == null or body.password == "" then
    return fail(401, "Password required for incoming connections")
  end
  if verdict ~= true then return fail(401, "Invalid password") end
  return nil
end

local function h_register(self, req, settings, body)
  if settings.incoming_mode == "deny_all" then return fail(403, "Incoming connections are not allowed") end
  local bad = require_fields(body, { "sender_url", "connection_name", "auth_token" })
  if bad then return bad end
  if not body.sender_url:match("^https?://[^/%s]+[^%s]*$") then return fail(400, "Invalid sender_url") end
  bad = check_password(self, settings, body)
  if bad then return bad end
  local ran, accepted, reason = policy.call(self.policy, "accept_incoming", {
    sender_url = body.sender_url, connection_name = body.connection_name,
    remote_addr = req.remote_addr, headers = req.headers })
  if not ran then
    self:log("error", "policy %s", accepted)
    return fail(403, "Connection refused by policy")
  end
  if policy.has(self.policy, "accept_incoming") and not accepted then
    return fail(403, type(reason) == "string" and reason or "Connection refused by policy")
  end
  local existing = self:list_connections { direction = "receiver", site_url = body.sender_url }
  if existing and existing[1] then return fail(409, "Connection already exists for this site") end
  local pending = settings.incoming_mode == "require_approval"
  local conn, err = self:create_connection {
    name = "From: " .. body.connection_name, direction = "receiver", site_url = body.sender_url,
    auth_token = body.auth_token, status = pending and "pending" or "active",
    approval_mode = pending and "require_approval" or "auto_approve", metadata = register_metadata(req),
  }
  if not conn then
    if err == "already_exists" then return fail(409, "Connection already exists for this site") end
    return fail(500, "Failed to create connection")
  end
  return reply(200, { success = true, connection_status = conn.status, connection_uuid = conn.uuid,
    message = pending and "Connection registered, awaiting approval" or "Connection registered and activated" })
end

local function find_by_url(self, body)
  local bad = require_fields(body, { "sender_url", "auth_token_hash" })
  if bad then return nil, bad end
  local conn = self:find_by_url_and_hash(body.sender_url, body.auth_token_hash)
  if conn == nil then return nil, fail(500, "Store unavailable") end
  return conn
end

local function h_delete(self, req, settings, body)
  local conn, bad = find_by_url(self, body)
  if bad then return bad end
  if not conn then return fail(404, "Connection not found") end
  -- the peer asked for it: nothing to tell it back
  if not self:delete_connection(conn.uuid, { notify = false }) then
    return fail(500, "Failed to delete connection")
  end
  self:log("info", "peer %s deleted connection %s", util.base_url(conn.site_url), conn.uuid)
  return reply(200, { success = true, message = "Connection deleted" })
end

local STATUS_VALUES = { active = true, suspended = true, revoked = true }

local function h_update_status(self, req, settings, body)
  local bad = require_fields(body, { "sender_url", "auth_token_hash", "status" })
  if bad then return bad end
  if not STATUS_VALUES[body.status] then return fail(400, "Invalid status value") end
  local conn
  conn, bad = find_by_url(self, body)
  if bad then return bad end
  if not conn then return fail(404, "Connection not found") end
  if not self:record_peer_status(conn.uuid, body.status) then return fail(500, "Failed to update status") end
  return reply(200, { success = true, message = "Status updated to " .. body.status })
end

local function h_verify(self, req, settings, body)
  local conn, bad = find_by_url(self, body)
  if bad then return bad end
  if not conn then return reply(404, { success = false, exists = false }) end
  return reply(200, { success = true, exists = true })
end

local function h_connection_status(self, req, settings, body)
  local bad = require_fields(body, { "receiver_url", "auth_token_hash" })
  if bad then return bad end
  local conn = self:find_sender_by_hash(body.auth_token_hash)
  if conn == nil then return fail(500, "Store unavailable") end
  if not conn then return fail(404, "Connection not found") end
  if conn.status == "pending" then
    conn = self:activate_on_first_contact(conn) or conn
  end
  return reply(200, { success = true, status = conn.status, name = conn.name })
end

------------------------------------------------------------------------------
-- routing

local ENDPOINTS = {
  ["status"] = { method = "GET", handler = h_status, always = true },
  ["register-connection"] = { handler = h_register },
  ["delete-connection"] = { handler = h_delete },
  ["update-status"] = { handler = h_update_status },
  ["verify-connection"] = { handler = h_verify },
  ["get-connection-status"] = { handler = h_connection_status },
  ["list-tables"] = { handler = serve_data.list_tables },
  ["table-schema"] = { handler = serve_data.table_schema },
  ["table-records"] = { handler = serve_data.table_records },
  ["pull-data"] = { handler = serve_data.pull_data },
  ["table-digest"] = { handler = serve_data.table_digest },
}

--- The endpoint name of a path under our prefix, or nil.
local function route(self, path)
  local q = str_find(path, "?", 1, true)
  if q then path = str_sub(path, 1, q - 1) end
  local base = self.prefix .. "/sync/api/"
  if str_sub(path, 1, #base) ~= base then return nil end
  local name = str_sub(path, #base + 1)
  return ENDPOINTS[name] and name or nil
end

local function parse_body(self, req)
  local raw = req.body or ""
  if #raw > (self.max_request_body or DEFAULT_MAX_REQUEST_BODY) then
    return nil, fail(413, "Request body too large")
  end
  local body = json_decode(raw, { max_depth = 32 })
  if type(body) ~= "table" or getmetatable(body) == core.array_mt then
    return nil, fail(400, "Request body must be a JSON object")
  end
  return body
end

local function dispatch(self, req)
  local name = route(self, req.path)
  if not name then return fail(404, "Not found") end
  local ep = ENDPOINTS[name]
  local method = ep.method or "POST"
  if req.method ~= method and not (method == "GET" and req.method == "HEAD") then
    local r = fail(405, "Method not allowed")
    r.headers.allow = method
    return r
  end
  local body = {}
  if method == "POST" then
    local bad
    body, bad = parse_body(self, req)
    if not body then return bad end
  end
  local settings = self:get_settings()
  if not settings then return fail(500, "Store unavailable") end
  if not ep.always and not settings.enabled then return fail(503, "DB Sync module is disabled") end
  return ep.handler(self, req, settings, body)
end

local function check_request(req)
  if type(req) ~= "table" then error("handle: request table expected", 3) end
  if type(req.method) ~= "string" or type(req.path) ~= "string" then
    error("handle: request needs method and path strings", 3)
  end
  if req.body ~= nil and type(req.body) ~= "string" then error("handle: body must be a string", 3) end
end

--- The endpoint a request path names under our prefix (e.g. "pull-data"),
-- or nil: a label of bounded cardinality for counting requests.
function _M.endpoint_name(self, path)
  if type(path) ~= "string" then return nil end
  return route(self, path)
end

--- Answer one request of the sync API.
-- @param req `{method=, path=, headers= (lowercase names), body=, remote_addr=}`
-- @return `{status=, headers=, body=}`; unexpected failures inside become a
--   500 with a generic message (details go to the logger)
function _M.handle(self, req)
  check_request(req)
  local ok, res = pcall(dispatch, self, req)
  -- the database connection died under this request (PostgreSQL restarted
  -- since the last one): answer once more on a fresh connection
  if (not ok or res.status == 500) and self:database_lost() then
    ok, res = pcall(dispatch, self, req)
  end
  if ok then return res end
  self:log("error", "handler for %s failed: %s", util.display(req.path), tostring(res))
  return fail(500, "Internal server error")
end

return _M
