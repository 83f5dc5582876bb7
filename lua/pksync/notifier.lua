--- The client side of the protocol: the ConnectionNotifier operations.
--
-- Each method sends one request to a peer and maps its answer. Expected
-- failures return `nil, err, detail`; the "offline" state of a peer is a
-- normal value where PhoenixKit treats it as one (delete, status change,
-- status query, verify). Misuse (wrong argument types) raises.
-- @module pksync.notifier
local core = require "pksync.core"
local util = require "pksync.util"
local transport = require "pksync.transport"

local type, error, ipairs, pairs, next, tostring = type, error, ipairs, pairs, next, tostring
local setmetatable, getmetatable = setmetatable, getmetatable
local math_floor = math.floor
local str_format = string.format
local null = core.null

local _M = {}

local STATUS_VALUES = { active = true, suspended = true, revoked = true }

--- Map a transport failure to the shared shape.
local function transport_failure(err, detail)
  detail = detail or {}
  return nil, err, { reason = detail.reason, message = detail.message, code = detail.code }
end

local function check_conn(conn, fname)
  if type(conn) ~= "table" then
    error(str_format("bad argument #1 to '%s' (connection table expected, got %s)", fname, type(conn)), 3)
  end
end

local peer_error, status_detail = transport.peer_error, transport.status_detail

--- Send `body` to `endpoint` of the connection's peer. Requests that
-- carry a credential (every POST) respect `require_tls`.
-- @return res or nil, err, detail
local function call(self, conn, endpoint, body, opts, method)
  opts = opts or {}
  local prefix = conn.prefix
  if util.is_null(prefix) then prefix = self.prefix end
  local url = transport.endpoint_url(conn.site_url, prefix, endpoint)
  if (method or "POST") == "POST" then
    local err, detail = transport.check_secure(self, url)
    if err then return nil, err, detail end
  end
  return transport.request(self:http(), {
    method = method or "POST",
    url = url,
    body = body,
    timeout = opts.timeout,
    connect_timeout = opts.connect_timeout,
  })
end

local function our_url(self, fname)
  local url = self.site_url
  if type(url) ~= "string" then
    error(fname .. ": the client needs site_url (our public URL) for this call", 3)
  end
  return url
end

local function has_credentials(conn)
  return type(conn.site_url) == "string" and conn.site_url ~= ""
     and type(conn.auth_token_hash) == "string" and conn.auth_token_hash ~= ""
end

local MISSING = { message = "the connection lacks site_url or auth_token_hash" }

--- A 200 answer whose body must be a JSON object.
local function json_object(res)
  return type(res.json) == "table" and getmetatable(res.json) ~= core.array_mt
end

------------------------------------------------------------------------------
-- register-connection

local REGISTER_DEFAULTS = {
  [401] = "Password required or invalid",
  [403] = "Incoming connections denied",
  [409] = "Connection already exists",
  [503] = "DB Sync module disabled on remote site",
}

local function register_result(fields)
  return setmetatable({
    success = fields.success, status = fields.status, message = fields.message,
    remote_connection_uuid = fields.remote_connection_uuid, http_status = fields.http_status,
    error = fields.error,
  }, nil)
end

local function registration_from_response(res)
  local body = res.json
  if res.status == 200 then
    if not json_object(res) then
      return register_result { success = false, status = "failed", http_status = 200,
        message = "Invalid response from remote site", error = "Invalid JSON response" }
    end
    if body.success == true then
      local uuid = body.connection_uuid
      if util.is_null(uuid) then uuid = body.connection_id end
      return register_result {
        success = true, http_status = 200,
        status = body.connection_status == "pending" and "pending" or "registered",
        message = type(body.message) == "string" and body.message or "Connection registered",
        remote_connection_uuid = not util.is_null(uuid) and tostring(uuid) or nil,
      }
    end
    local msg = peer_error(res) or "Remote site rejected connection"
    return register_result { success = false, status = "failed", http_status = 200, message = msg, error = msg }
  end
  local msg = peer_error(res) or REGISTER_DEFAULTS[res.status] or ("HTTP error " .. res.status)
  return register_result { success = false, status = "failed", http_status = res.status, message = msg, error = msg }
end

--- Register a sender connection on its receiver (POST register-connection).
-- @param conn the connection (`direction`, `site_url`, `name`, optional `prefix`)
-- @param raw_token the connection's raw token (sent once, never logged)
-- @param opts `password` (the receiver's incoming password), `timeout`
-- @return result table `{success, status, message, remote_connection_uuid, http_status, error}`;
--   `status` is "registered", "pending", "failed" or "skipped" (receiver connections)
function _M.notify_remote_site(self, conn, raw_token, opts)
  check_conn(conn, "notify_remote_site")
  if type(raw_token) ~= "string" then error("bad argument #2 to 'notify_remote_site' (raw token string expected)", 2) end
  opts = opts or {}
  if conn.direction ~= "sender" then
    return register_result { success = true, status = "skipped",
      message = "Notification skipped for receiver connections" }
  end
  if type(conn.site_url) ~= "string" or conn.site_url == "" then
    return register_result { success = false, status = "failed", message = "Missing connection info",
      error = "missing_connection_info" }
  end
  local body = { sender_url = our_url(self, "notify_remote_site"), connection_name = conn.name,
                 auth_token = raw_token, password = opts.password }
  local res, err, detail = call(self, conn, "register-connection", body, opts)
  if not res and err == "insecure_transport" then
    return register_result { success = false, status = "failed", message = detail.message, error = err }
  end
  if not res then
    self:log("warn", "register-connection to %s failed: %s", util.base_url(conn.site_url), err)
    return register_result { success = false, status = "failed", message = "Failed to contact remote site",
      error = err == "offline" and ("Connection failed: " .. (detail and detail.reason or "offline")) or err }
  end
  local result = registration_from_response(res)
  self:log("info", "register-connection to %s: %s (HTTP %d)", util.base_url(conn.site_url), result.status, res.status)
  return result
end

------------------------------------------------------------------------------
-- status

--- Ask a site whether it accepts connections (GET status, no auth).
-- @param site_url the peer's base URL
-- @param opts `prefix`, `timeout`
-- @return `{enabled, incoming_mode, password_required[, pksync]}` or nil, err, detail
function _M.check_remote_status(self, site_url, opts)
  if type(site_url) ~= "string" then error("bad argument #1 to 'check_remote_status' (string expected)", 2) end
  opts = opts or {}
  local res, err, detail = call(self, { site_url = site_url, prefix = opts.prefix }, "status", nil, opts, "GET")
  if not res then return transport_failure(err, detail) end
  if res.status ~= 200 then return nil, "unexpected_response", status_detail(res) end
  if not json_object(res) then return nil, "invalid_response", status_detail(res) end
  local body = res.json
  local out = {
    enabled = body.enabled == true,
    incoming_mode = type(body.incoming_mode) == "string" and body.incoming_mode or nil,
    password_required = body.password_required == true,
  }
  if type(body.pksync) == "table" then out.pksync = body.pksync end
  return out
end

------------------------------------------------------------------------------
-- lifecycle notifications: "value" answers, offline as a value

--- Map an answer of delete / update-status / verify to a word.
local function lifecycle_answer(res, err, detail, ok_word)
  if not res then
    if err == "offline" then return "offline" end
    return transport_failure(err, detail)
  end
  if res.status == 200 or res.status == 204 then return ok_word end
  if res.status == 404 then return "not_found" end
  return nil, "unexpected_response", status_detail(res)
end

local function lifecycle_call(self, conn, endpoint, fname, extra, opts)
  check_conn(conn, fname)
  if not has_credentials(conn) then return nil, "missing_connection_info", MISSING end
  local body = { sender_url = our_url(self, fname), auth_token_hash = conn.auth_token_hash }
  for k, v in pairs(extra or {}) do body[k] = v end
  return call(self, conn, endpoint, body, opts)
end

--- Tell the peer to delete its side of the connection (POST delete-connection).
-- @return "deleted", "not_found" or "offline"; nil, err, detail otherwise
function _M.notify_delete(self, conn, opts)
  local res, err, detail = lifecycle_call(self, conn, "delete-connection", "notify_delete", nil, opts)
  if not res and err == "missing_connection_info" then return nil, err, detail end
  return lifecycle_answer(res, err, detail, "deleted")
end

--- Mirror a status change on the receiver (POST update-status).
-- @param new_status "active", "suspended" or "revoked" (anything else raises)
-- @return "updated", "not_found" or "offline"; nil, err, detail otherwise
function _M.notify_status_change(self, conn, new_status, opts)
  if not STATUS_VALUES[new_status] then
    error(str_format("bad argument #2 to 'notify_status_change' (active, suspended or revoked expected, got %s)",
      tostring(new_status)), 2)
  end
  local res, err, detail = lifecycle_call(self, conn, "update-status", "notify_status_change",
    { status = new_status }, opts)
  if not res and err == "missing_connection_info" then return nil, err, detail end
  return lifecycle_answer(res, err, detail, "updated")
end

--- Check that the receiver still has the connection (POST verify-connection).
-- @return "exists", "not_found" or "offline"; nil, err, detail otherwise
function _M.verify_connection(self, conn, opts)
  local res, err, detail = lifecycle_call(self, conn, "verify-connection", "verify_connection", nil, opts)
  if not res and err == "missing_connection_info" then return nil, err, detail end
  return lifecycle_answer(res, err, detail, "exists")
end

--- Ask the sender for the connection's status (POST get-connection-status).
-- A pending sender connection becomes active on this call.
-- @return the status string, "not_found" or "offline"; nil, err, detail otherwise
function _M.query_sender_status(self, conn, opts)
  check_conn(conn, "query_sender_status")
  if not has_credentials(conn) then return nil, "missing_connection_info", MISSING end
  local body = { receiver_url = our_url(self, "query_sender_status"), auth_token_hash = conn.auth_token_hash }
  local res, err, detail = call(self, conn, "get-connection-status", body, opts)
  if not res then
    if err == "offline" then return "offline" end
    return transport_failure(err, detail)
  end
  if res.status == 404 then return "not_found" end
  if res.status ~= 200 then return nil, "unexpected_response", status_detail(res) end
  local b = res.json
  if json_object(res) and b.success == true and type(b.status) == "string" then return b.status end
  if json_object(res) and b.success == false then return "not_found" end
  return nil, "invalid_response", status_detail(res)
end

------------------------------------------------------------------------------
-- data endpoints (receiver -> sender)

local data_failure = transport.data_failure

--- Send a data request and return the decoded 200 body.
local function data_call(self, conn, endpoint, fname, body, opts, not_found)
  check_conn(conn, fname)
  if not has_credentials(conn) then return nil, "missing_connection_info", MISSING end
  body.auth_token_hash = conn.auth_token_hash
  local res, err, detail = call(self, conn, endpoint, body, opts)
  if not res then return transport_failure(err, detail) end
  if res.status ~= 200 then return data_failure(res, not_found) end
  if not json_object(res) then return nil, "invalid_response", status_detail(res) end
  if res.json.success ~= true then
    local msg = peer_error(res)
    if msg then return nil, msg, status_detail(res) end
    return nil, "invalid_response", status_detail(res)
  end
  return res.json
end

--- Table names come from users and from peers: a string that is no
-- identifier names no table there (PhoenixKit's client asks and maps the
-- 404 the same way); anything but a string is a programmer's mistake.
-- @return nil when the name can be sent, else the error triple's tail
local function check_table(name, fname)
  if type(name) ~= "string" then
    error(str_format("bad argument #2 to '%s' (table name expected, got %s)", fname, type(name)), 3)
  end
  if not util.valid_ident(name) then
    return "table_not_found", { message = "no table is named " .. str_format("%q", util.display(name)) }
  end
  return nil
end

local function is_array(v)
  return type(v) == "table" and (getmetatable(v) == core.array_mt or v[1] ~= nil or next(v) == nil)
end

--- Normalise one list-tables entry; nil when it is malformed.
local function table_entry(t)
  if type(t) ~= "table" or type(t.name) ~= "string" then return nil end
  local deps = {}
  if is_array(t.depends_on) then
    for _, d in ipairs(t.depends_on) do
      if type(d) == "string" then deps[#deps + 1] = d end
    end
  end
  return {
    name = t.name,
    row_count = not util.is_null(t.row_count) and t.row_count or 0,
    size_bytes = not util.is_null(t.size_bytes) and t.size_bytes or 0,
    checksum = t.checksum,
    depends_on = setmetatable(deps, core.array_mt),
  }
end

--- List the sender's tables (POST list-tables).
-- @return array of `{name, row_count, size_bytes, checksum, depends_on}`
--   (`checksum` may be `pksync.null`), or nil, err, detail
function _M.fetch_sender_tables(self, conn, opts)
  local body, err, detail = data_call(self, conn, "list-tables", "fetch_sender_tables", {}, opts, "not_found")
  if not body then return nil, err, detail end
  if not is_array(body.tables) then return nil, "invalid_response", { http_status = 200, message = "tables is not a list" } end
  local out = setmetatable({}, core.array_mt)
  for i, t in ipairs(body.tables) do
    local entry = table_entry(t)
    if not entry then
      return nil, "invalid_response", { http_status = 200, message = "malformed table entry #" .. i }
    end
    out[#out + 1] = entry
  end
  return out
end

--- Read a table's columns on the sender (POST table-schema).
-- @return `{table_name, columns = {{column_name, data_type, is_nullable,
--   column_default, character_maximum_length}...}[, primary_key]}` or nil, err, detail
function _M.fetch_table_schema(self, conn, table_name, opts)
  local bad, why = check_table(table_name, "fetch_table_schema")
  if bad then return nil, bad, why end
  local body, err, detail = data_call(self, conn, "table-schema", "fetch_table_schema",
    { table_name = table_name }, opts, "table_not_found")
  if not body then return nil, err, detail end
  local schema = body.schema
  if type(schema) ~= "table" or not is_array(schema.columns) then
    return nil, "invalid_response", { http_status = 200, message = "schema.columns missing" }
  end
  for i, c in ipairs(schema.columns) do
    if type(c) ~= "table" or type(c.column_name) ~= "string" then
      return nil, "invalid_response", { http_status = 200, message = "malformed column #" .. i }
    end
  end
  if util.is_null(schema.table_name) then schema.table_name = table_name end
  return schema
end

local MAX_FILTER_IDS = 1000

--- Validate a records filter the way PhoenixKit does before sending it.
local function filter_fields(body, opts)
  if opts.ids ~= nil then
    local ids = opts.ids
    if type(ids) ~= "table" or #ids < 1 or #ids > MAX_FILTER_IDS or opts.id_range then return false end
    for _, id in ipairs(ids) do
      local ok = (type(id) == "number" and id == math_floor(id)) or core.is_decimal(id)
        or (type(id) == "string" and #id >= 1 and #id <= 255 and not id:find("\0", 1, true))
      if not ok then return false end
    end
    body.ids = setmetatable(ids, core.array_mt)
  elseif opts.id_range ~= nil then
    local r = opts.id_range
    if type(r) ~= "table" or (r[1] == nil and r[2] == nil) then return false end
    body.id_start, body.id_end = r[1], r[2]
  end
  return true
end

--- Preview rows of a sender's table (POST table-records).
-- @param opts `limit` (10, peer caps at 100), `offset` (0), `ids` (array of
--   key values) or `id_range` ({first, last}, inclusive), `timeout`
-- @return array of records (column -> value, nulls as pksync.null), or nil, err, detail
function _M.fetch_table_records(self, conn, table_name, opts)
  local bad, why = check_table(table_name, "fetch_table_records")
  if bad then return nil, bad, why end
  opts = opts or {}
  local req = { table_name = table_name, limit = opts.limit or 10, offset = opts.offset or 0 }
  if not filter_fields(req, opts) then
    return nil, "invalid_filter", { message = "ids must be 1..1000 integers or short strings; id_range needs a bound" }
  end
  local body, err, detail = data_call(self, conn, "table-records", "fetch_table_records", req, opts, "table_not_found")
  if not body then return nil, err, detail end
  if not is_array(body.records) then
    return nil, "invalid_response", { http_status = 200, message = "records is not a list" }
  end
  return body.records
end

--- One page of a table's rows through pull-data, decoded on the control
-- path (the importer streams instead; this is for previews and tools).
-- @param opts `limit` and `after` (the paged_pull extension), `ids` or
--   `id_range` (row filters), `conflict_strategy`, `timeout`
-- @return `{data, has_more, next_after, truncated, filtered}` or nil, err, detail
function _M.fetch_pull_page(self, conn, table_name, opts)
  local bad, why = check_table(table_name, "fetch_pull_page")
  if bad then return nil, bad, why end
  opts = opts or {}
  local req = { table_name = table_name, conflict_strategy = opts.conflict_strategy or "skip",
                limit = opts.limit, after = opts.after, uuid_format = "text" }
  if not filter_fields(req, opts) then
    return nil, "invalid_filter", { message = "ids must be 1..1000 integers or short strings; id_range needs a bound" }
  end
  opts.timeout = opts.timeout or self.pull_timeout
  local body, err, detail = data_call(self, conn, "pull-data", "fetch_pull_page", req, opts, "table_not_found")
  if not body then return nil, err, detail end
  if not is_array(body.data) then return nil, "invalid_response", { http_status = 200, message = "data is not a list" } end
  local after = body.next_after
  return {
    data = body.data,
    has_more = body.has_more == true or body.truncated == true,
    next_after = type(after) == "string" and after or nil,
    truncated = body.truncated == true,
    filtered = body.filtered == true,
  }
end

--- Digests of consecutive key ranges of a sender's table (POST
-- table-digest, the table_digest extension; see docs/extensions.md).
-- @param fields `columns` (names to hash, in order), `after` / `upto`
--   (bounds: arrays of key texts), `range_rows`, `scan_rows` (scan less
--   than the server's limit)
-- @param opts `timeout`
-- @return `{key, ranges = {{last, rows, digest}, ...}, has_more}` or nil, err, detail
function _M.fetch_table_digest(self, conn, table_name, fields, opts)
  local bad, why = check_table(table_name, "fetch_table_digest")
  if bad then return nil, bad, why end
  opts = opts or {}
  local req = { table_name = table_name, columns = setmetatable(fields.columns, core.array_mt),
                after = fields.after, upto = fields.upto, range_rows = fields.range_rows,
                scan_rows = fields.scan_rows }
  opts.timeout = opts.timeout or self.pull_timeout
  local body, err, detail = data_call(self, conn, "table-digest", "fetch_table_digest", req, opts, "table_not_found")
  if not body then return nil, err, detail end
  if not is_array(body.ranges) or #body.ranges == 0 or not is_array(body.key) then
    return nil, "invalid_response", { http_status = 200, message = "ranges is not a list" }
  end
  for _, r in ipairs(body.ranges) do
    if type(r) ~= "table" or type(r.rows) ~= "number" or type(r.digest) ~= "string"
       or (r.last ~= null and not is_array(r.last)) then
      return nil, "invalid_response", { http_status = 200, message = "a range lacks rows, digest or last" }
    end
  end
  return { key = body.key, ranges = body.ranges, has_more = body.has_more == true }
end

return _M
