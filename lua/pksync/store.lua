--- The connection store: migrations, connections, transfers, settings.
--
-- Everything lives in the local PostgreSQL (the client's `db`). Every value
-- travels as a query parameter; the only identifiers spliced into SQL are
-- the store's own validated table names and column names from the fixed
-- lists below.
-- @module pksync.store
local core = require "pksync.core"
local util = require "pksync.util"
local store_ddl = require "pksync.store_ddl"

local type, pairs, ipairs, error, tostring, select = type, pairs, ipairs, error, tostring, select
local setmetatable = setmetatable
local unpack = table.unpack or unpack -- luacheck: ignore (5.1 global)
local str_format, tbl_concat, tbl_sort = string.format, table.concat, table.sort
local null = core.null
local json_encode, json_decode = core.json_encode, core.json_decode

local _M = {}

local STATUSES = { pending = true, active = true, suspended = true, revoked = true, expired = true }
local DIRECTIONS = { sender = true, receiver = true }
_M.STRATEGIES = { skip = true, overwrite = true, merge = true, append = true }
_M.INCOMING_MODES = { auto_accept = true, require_approval = true, require_password = true, deny_all = true }

-- Columns a caller may set, with their SQL type. Keys of caller tables are
-- checked against this list before anything reaches SQL.
local SETTABLE = {
  name = "text", site_url = "text", prefix = "text", approval_mode = "text",
  allowed_tables = "text[]", excluded_tables = "text[]", auto_approve_tables = "text[]",
  expires_at = "timestamptz", max_downloads = "integer", max_records_total = "bigint",
  max_records_per_request = "integer", rate_limit_requests_per_minute = "integer",
  ip_whitelist = "text[]", allowed_hours_start = "integer", allowed_hours_end = "integer",
  default_conflict_strategy = "text", auto_sync_enabled = "boolean",
  auto_sync_tables = "text[]", auto_sync_interval_minutes = "integer", metadata = "jsonb",
  download_password = "password",
  -- scheduled sync: an explicit next due time ("run now", or a pause)
  next_auto_sync_at = "timestamptz",
}

local LUA_TYPES = {
  text = "string", ["text[]"] = "table", timestamptz = "string", integer = "number",
  bigint = "number", boolean = "boolean", jsonb = "table", password = "string",
}

------------------------------------------------------------------------------
-- helpers

local function db_or_err(self)
  return self:database()
end

local function tname(self, which)
  return util.quote_ident(self.store_tables[which])
end

--- SQL expression turning parameter $n into a value of the given type.
local function param_expr(sqltype, n)
  if sqltype == "text[]" then
    return str_format("ARRAY(SELECT jsonb_array_elements_text($%d::jsonb))", n)
  elseif sqltype == "password" then
    return str_format("$%d::text", n)
  end
  return str_format("$%d::%s", n, sqltype)
end

--- A caller's value as a parameter for the given type.
local function param_value(sqltype, v)
  if v == nil or v == null then return null end
  if sqltype == "text[]" then return json_encode(setmetatable(util.copy(v), core.array_mt)) end
  if sqltype == "jsonb" then return json_encode(v) end
  if sqltype == "password" then return v ~= "" and core.password_hash(v) or null end
  return v
end

local function check_settable(attrs, fname)
  for k, v in pairs(attrs) do
    local sqltype = SETTABLE[k]
    if not sqltype then error(str_format("%s: unknown or read-only field %q", fname, tostring(k)), 3) end
    if v ~= null and type(v) ~= LUA_TYPES[sqltype] then
      error(str_format("%s: field %s must be a %s, got %s", fname, k, LUA_TYPES[sqltype], type(v)), 3)
    end
  end
  if attrs.default_conflict_strategy and not _M.STRATEGIES[attrs.default_conflict_strategy] then
    error(fname .. ": default_conflict_strategy must be skip, overwrite, merge or append", 3)
  end
  if attrs.site_url and not attrs.site_url:match("^https?://[^/]") then
    error(fname .. ": site_url must be an http(s) URL", 3)
  end
end

--- Sorted keys, so generated SQL is stable.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  tbl_sort(keys)
  return keys
end

-- Filterable columns of the list functions, with their SQL types.
local CONNECTION_FILTERS = { { "direction", "text" }, { "status", "text" }, { "site_url", "text" } }
local TRANSFER_FILTERS = { { "connection_uuid", "uuid" }, { "table_name", "text" }, { "direction", "text" },
                           { "status", "text" } }

--- " WHERE a = $1::t AND ..." for the filter's present keys (or ""), and
-- the parameters; column names come from the fixed list, values are bound.
local function where_clause(filter, columns)
  local where, params = {}, {}
  for _, c in ipairs(columns) do
    local v = filter[c[1]]
    if v ~= nil then
      params[#params + 1] = v
      where[#where + 1] = str_format("%s = $%d::%s", c[1], #params, c[2])
    end
  end
  return #where > 0 and (" WHERE " .. tbl_concat(where, " AND ")) or "", params
end

local function column_of(field)
  return field == "download_password" and "download_password_hash" or field
end

--- A store row as a connection table (metadata decoded, hashes kept).
local function to_conn(row)
  if type(row.metadata) == "string" then row.metadata = json_decode(row.metadata) or {} end
  row.auth_lookup = nil
  row.rate_window_start, row.rate_window_count = nil, nil
  return row
end

local function one(rows, err, detail)
  if not rows then return nil, err, detail end
  if not rows[1] then return nil, "not_found", { message = "no such connection" } end
  return to_conn(rows[1])
end

--- The lookup key for a token hash: a digest of it, so an index lookup
-- leaks nothing useful about the hash itself (compared in constant time
-- afterwards).
local function lookup_key(hash)
  return core.sha256_hex(hash)
end
_M._lookup_key = lookup_key

------------------------------------------------------------------------------
-- migrations

--- Create the store's tables (idempotent; concurrent calls serialise).
-- @return true or nil, err, detail
function _M.migrate(self)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local ok
  ok, err, detail = db:exec(store_ddl.ddl(self.store_tables))
  if not ok then return nil, "migration_failed", { message = err, sqlstate = detail and detail.sqlstate } end
  return true
end

--- True when the store's tables exist (migrate has run); pulls record
-- transfers only then.
function _M.store_migrated(self)
  local db = self:database()
  if not db then return false end
  local rows = db:query("SELECT to_regclass($1) IS NOT NULL AS ok",
    util.quote_ident(self.schema) .. "." .. tname(self, "transfers"))
  return rows ~= nil and rows[1] ~= nil and rows[1].ok == true
end

------------------------------------------------------------------------------
-- connections

local function insert_connection(self, db, attrs, hash, status)
  local cols = { "name", "direction", "site_url", "auth_token_hash", "auth_lookup", "status" }
  local exprs = { "$1", "$2", "$3", "$4", "$5", "$6" }
  local params = { attrs.name, attrs.direction, attrs.site_url, hash, lookup_key(hash), status }
  local extra = util.copy(attrs)
  for _, k in ipairs { "name", "direction", "site_url", "auth_token", "auth_token_hash", "status",
                       "password", "notify" } do
    extra[k] = nil
  end
  check_settable(extra, "create_connection")
  for _, k in ipairs(sorted_keys(extra)) do
    local sqltype = SETTABLE[k]
    params[#params + 1] = param_value(sqltype, extra[k])
    cols[#cols + 1] = util.quote_ident(column_of(k))
    exprs[#exprs + 1] = param_expr(sqltype, #params)
  end
  local sql = str_format("INSERT INTO %s (%s) VALUES (%s) RETURNING *", tname(self, "connections"),
    tbl_concat(cols, ", "), tbl_concat(exprs, ", "))
  local rows, err, detail = db:query(sql, unpack(params))
  if not rows then
    if detail and detail.sqlstate == "23505" then
      return nil, "already_exists", { message = "a " .. attrs.direction .. " connection for this site exists" }
    end
    return nil, "store_failed", { message = err, sqlstate = detail and detail.sqlstate }
  end
  return to_conn(rows[1])
end

local function check_create(attrs)
  if type(attrs) ~= "table" then error("create_connection: attributes table expected", 3) end
  if type(attrs.name) ~= "string" or attrs.name == "" then error("create_connection: name required", 3) end
  if not DIRECTIONS[attrs.direction] then error("create_connection: direction must be sender or receiver", 3) end
  if type(attrs.site_url) ~= "string" or not attrs.site_url:match("^https?://[^/]") then
    error("create_connection: site_url must be an http(s) URL", 3)
  end
  if attrs.status ~= nil and not STATUSES[attrs.status] then error("create_connection: invalid status", 3) end
end

--- Record the outcome of register-connection in the connection's metadata.
local function record_notification(self, conn, result)
  local note = {
    notified_at = util.iso_now(), notification_success = result.success,
    notification_status = result.status, notification_message = result.message,
    notification_error = result.error or null,
    remote_connection_uuid = result.remote_connection_uuid or null,
    http_status = result.http_status or null,
  }
  local meta = util.copy(conn.metadata)
  meta.remote_notification = note
  return _M.update_connection(self, conn.uuid, { metadata = meta })
end

--- Create a connection.
-- A sender gets a fresh token and, unless `notify = false`, registers itself
-- on the receiver (the outcome lands in `metadata.remote_notification`).
-- A receiver needs the raw `auth_token` the sender gave (or its `auth_token_hash`).
-- @param attrs `name`, `direction`, `site_url`, optional `prefix`, `status`,
--   `password` (the receiver's incoming password), `notify`, and any settable field
-- @return conn, raw_token (the only time it exists), or nil, err, detail
function _M.create_connection(self, attrs)
  check_create(attrs)
  local raw, hash = attrs.auth_token, attrs.auth_token_hash
  if attrs.direction == "sender" then
    raw = raw or core.token_generate()
  elseif not raw and not hash then
    error("create_connection: a receiver needs auth_token (or auth_token_hash)", 2)
  end
  if raw then hash = core.token_hash(raw) end
  local status = attrs.status or (attrs.direction == "sender" and "pending" or "active")
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local conn
  conn, err, detail = insert_connection(self, db, attrs, hash, status)
  if not conn then return nil, err, detail end
  self:log("info", "created %s connection %s to %s (token %s)", conn.direction, conn.uuid,
    util.base_url(conn.site_url), util.redact(hash))
  if conn.direction == "sender" and attrs.notify ~= false then
    local result = self:notify_remote_site(conn, raw, { password = attrs.password })
    conn = record_notification(self, conn, result) or conn
  end
  return conn, raw
end

--- A connection by uuid.
-- @return conn or nil, "not_found" (or a store error)
function _M.get_connection(self, uuid)
  if type(uuid) ~= "string" then error("get_connection: uuid string expected", 2) end
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  if not uuid:match("^%x+%-%x+%-%x+%-%x+%-%x+$") then return nil, "not_found", { message = "no such connection" } end
  return one(db:query(str_format("SELECT * FROM %s WHERE uuid = $1::uuid", tname(self, "connections")), uuid))
end

--- Connections, optionally filtered: `{direction=, status=, site_url=}`.
-- @return array of connections (newest first) or nil, err, detail
function _M.list_connections(self, filter)
  filter = filter or {}
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local where, params = where_clause(filter, CONNECTION_FILTERS)
  local sql = str_format("SELECT * FROM %s%s ORDER BY inserted_at DESC, uuid", tname(self, "connections"), where)
  local rows
  rows, err, detail = db:query(sql, unpack(params))
  if not rows then return nil, "store_failed", { message = err } end
  rows.affected = nil
  for i, r in ipairs(rows) do rows[i] = to_conn(r) end
  return setmetatable(rows, core.array_mt)
end

--- Run an UPDATE ... SET <sets> on one connection and return it.
-- sets: array of {column, sql_expression_with_$n, value}; values become $2..
local function update_row(self, uuid, sets)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local assigns, params = { "updated_at = now()" }, { uuid }
  for _, s in ipairs(sets) do
    if s[3] ~= nil then
      params[#params + 1] = s[3]
      assigns[#assigns + 1] = str_format("%s = %s", s[1], s[2]:gsub("%$N", "$" .. #params))
    else
      assigns[#assigns + 1] = str_format("%s = %s", s[1], s[2])
    end
  end
  local sql = str_format("UPDATE %s SET %s WHERE uuid = $1::uuid RETURNING *", tname(self, "connections"),
    tbl_concat(assigns, ", "))
  local rows
  rows, err, detail = db:query(sql, unpack(params))
  if not rows then
    if detail and detail.sqlstate == "23505" then return nil, "already_exists", { message = err } end
    if detail and detail.sqlstate == "22P02" then return nil, "not_found", { message = "no such connection" } end
    return nil, "store_failed", { message = err, sqlstate = detail and detail.sqlstate }
  end
  return one(rows)
end

--- Change settable fields of a connection (not its status, direction or token).
-- @return conn or nil, err, detail
function _M.update_connection(self, uuid, attrs)
  if type(uuid) ~= "string" then error("update_connection: uuid string expected", 2) end
  if type(attrs) ~= "table" then error("update_connection: attributes table expected", 2) end
  check_settable(attrs, "update_connection")
  local sets = {}
  for _, k in ipairs(sorted_keys(attrs)) do
    local sqltype = SETTABLE[k]
    sets[#sets + 1] = { util.quote_ident(column_of(k)), param_expr(sqltype, 0):gsub("%$0", "$N"),
                        param_value(sqltype, attrs[k]) }
  end
  return update_row(self, uuid, sets)
end

--- Delete a connection, telling the peer first (offline peers are fine).
-- @param opts passed to notify_delete; `notify = false` deletes without
--   telling the peer (the peer itself asked for it)
-- @return true, remote ("deleted", "not_found", "offline", "skipped" or an
--   error text), or nil, err, detail
function _M.delete_connection(self, uuid, opts)
  local conn, err, detail = _M.get_connection(self, uuid)
  if not conn then return nil, err, detail end
  local remote = "skipped"
  if not (opts and opts.notify == false) then
    local rerr
    remote, rerr = self:notify_delete(conn, opts)
    remote = remote or rerr
  end
  local db = self:database()
  local rows
  rows, err, detail = db:query(str_format("DELETE FROM %s WHERE uuid = $1::uuid", tname(self, "connections")), uuid)
  if not rows then return nil, "store_failed", { message = err } end
  self:log("info", "deleted %s connection %s (peer: %s)", conn.direction, uuid, tostring(remote))
  return true, remote
end

--- Set a status (and its timestamps); a sender mirrors it on its receiver.
local function transition(self, uuid, status, sets, mirror)
  if type(uuid) ~= "string" then error("connection uuid string expected", 3) end
  local all = { { "status", "$N", status } }
  for _, s in ipairs(sets) do all[#all + 1] = s end
  local conn, err, detail = update_row(self, uuid, all)
  if not conn then return nil, err, detail end
  local remote = "skipped"
  if conn.direction == "sender" and mirror then
    local r, rerr = self:notify_status_change(conn, mirror)
    remote = r or rerr
  end
  self:log("info", "connection %s is now %s (peer: %s)", uuid, status, tostring(remote))
  return conn, remote
end

--- Approve a pending connection (sender: mirrored as "active").
-- @return conn, remote_result or nil, err, detail
function _M.approve_connection(self, uuid)
  return transition(self, uuid, "active", { { "approved_at", "now()" } }, "active")
end

--- Suspend a connection with a reason.
function _M.suspend_connection(self, uuid, reason)
  return transition(self, uuid, "suspended",
    { { "suspended_at", "now()" }, { "suspended_reason", "$N", reason or null } }, "suspended")
end

--- Reactivate a suspended connection.
function _M.reactivate_connection(self, uuid)
  return transition(self, uuid, "active",
    { { "suspended_at", "NULL" }, { "suspended_reason", "NULL" } }, "active")
end

--- Revoke a connection for good, with a reason.
function _M.revoke_connection(self, uuid, reason)
  return transition(self, uuid, "revoked",
    { { "revoked_at", "now()" }, { "revoked_reason", "$N", reason or null } }, "revoked")
end

-- Stamps of a status the peer reported (update-status).
local PEER_STATUS_STAMPS = {
  active = { { "suspended_at", "NULL" }, { "suspended_reason", "NULL" } },
  suspended = { { "suspended_at", "now()" }, { "suspended_reason", "$N", "Suspended by the remote site" } },
  revoked = { { "revoked_at", "now()" }, { "revoked_reason", "$N", "Revoked by the remote site" } },
}

--- Take a status the peer reported for our side of a connection (active,
-- suspended or revoked), without telling the peer again.
-- @return conn or nil, err, detail
function _M.record_peer_status(self, uuid, status)
  local stamps = PEER_STATUS_STAMPS[status]
  if not stamps then error("record_peer_status: status must be active, suspended or revoked", 2) end
  return transition(self, uuid, status, stamps, nil)
end

--- Activate a pending sender connection whose receiver has proved it holds
-- the token (it asked for the connection's status), as PhoenixKit does.
-- @return the updated conn or nil, err, detail
function _M.activate_on_first_contact(self, conn)
  local meta = util.copy(conn.metadata)
  meta.auto_activated, meta.auto_activated_at = true, util.iso_now()
  meta.auto_activated_reason = "receiver queried connection status"
  return update_row(self, conn.uuid, { { "status", "$N", "active" }, { "approved_at", "now()" },
    { "metadata", "$N::jsonb", json_encode(meta) } })
end

--- Give a connection a new token. A sender re-registers on its receiver
-- (the old registration is deleted there first).
-- @return conn, raw_token or nil, err, detail
function _M.regenerate_token(self, uuid, opts)
  local old, err, detail = _M.get_connection(self, uuid)
  if not old then return nil, err, detail end
  local raw = core.token_generate()
  local hash = core.token_hash(raw)
  local conn
  conn, err, detail = update_row(self, uuid, {
    { "auth_token_hash", "$N", hash }, { "auth_lookup", "$N", lookup_key(hash) } })
  if not conn then return nil, err, detail end
  if conn.direction == "sender" then
    self:notify_delete(old, opts)
    local result = self:notify_remote_site(conn, raw, { password = opts and opts.password })
    conn = record_notification(self, conn, result) or conn
  end
  return conn, raw
end

------------------------------------------------------------------------------
-- server-side lookups (constant-time on the hash)

local function match_hash(rows, hash)
  local found
  for _, r in ipairs(rows) do
    -- compare every candidate, so timing does not depend on which matched
    if core.secure_equals(r.auth_token_hash, hash) then found = r end
  end
  return found and to_conn(found) or nil
end

--- The connection whose peer is `site_url` and whose hash is `hash`
-- (either direction, as PhoenixKit does).
function _M.find_by_url_and_hash(self, site_url, hash)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format("SELECT * FROM %s WHERE site_url = $1", tname(self, "connections")), site_url)
  if not rows then return nil, "store_failed", { message = err } end
  return match_hash(rows, hash) or false
end

--- The sender connection whose hash is `hash`.
function _M.find_sender_by_hash(self, hash)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format("SELECT * FROM %s WHERE auth_lookup = $1 AND direction = 'sender'",
    tname(self, "connections")), lookup_key(hash))
  if not rows then return nil, "store_failed", { message = err } end
  return match_hash(rows, hash) or false
end

------------------------------------------------------------------------------
-- serving-side counters (one atomic UPDATE each, shared by every worker)

local RATE_WINDOW = [[
UPDATE %s SET
  rate_window_count = CASE WHEN rate_window_start IS NULL
    OR rate_window_start <= now() - interval '1 minute' THEN 1 ELSE rate_window_count + 1 END,
  rate_window_start = CASE WHEN rate_window_start IS NULL
    OR rate_window_start <= now() - interval '1 minute' THEN now() ELSE rate_window_start END
WHERE uuid = $1::uuid
RETURNING rate_window_count AS count,
  ceil(extract(epoch FROM rate_window_start + interval '1 minute' - now()))::int AS retry_after,
  (expires_at IS NOT NULL AND expires_at <= now()) AS expired,
  extract(hour FROM now() AT TIME ZONE 'UTC')::int AS hour]]

--- Count one data request in the connection's per-minute window.
-- @return `{count, retry_after (s), expired, hour (UTC)}` or nil, err, detail
function _M.count_request(self, uuid)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err, detail = db:query(str_format(RATE_WINDOW, tname(self, "connections")), uuid)
  if not rows or not rows[1] then return nil, "store_failed", { message = err or "no such connection" } end
  return rows[1]
end

--- Note that the peer of a sender connection has just been served.
function _M.mark_connected(self, uuid)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format("UPDATE %s SET last_connected_at = now() WHERE uuid = $1::uuid",
    tname(self, "connections")), uuid)
  if not rows then return nil, "store_failed", { message = err } end
  return true
end

--- Add one served pull-data page to a sender connection's counters.
-- @param page `{count = rows, bytes =, starting = true on a table's first page}`
function _M.count_served_page(self, uuid, page)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format([[UPDATE %s SET records_downloaded = records_downloaded + $2,
      total_records_transferred = total_records_transferred + $2,
      total_bytes_transferred = total_bytes_transferred + $3, last_transfer_at = now(),
      downloads_used = downloads_used + $4, total_transfers = total_transfers + $4
    WHERE uuid = $1::uuid]], tname(self, "connections")),
    uuid, page.count, page.bytes, page.starting and 1 or 0)
  if not rows then return nil, "store_failed", { message = err } end
  return true
end

------------------------------------------------------------------------------
-- settings

local SETTING_DEFAULTS = { enabled = false, incoming_mode = "require_approval" }

--- The site's sync settings: `{enabled, incoming_mode, password_set[, site_url]}`.
function _M.get_settings(self)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format("SELECT key, value::text AS value FROM %s", tname(self, "settings")))
  if not rows then return nil, "store_failed", { message = err } end
  local out = util.copy(SETTING_DEFAULTS)
  out.password_set, out.admin_password_set = false, false
  for _, r in ipairs(rows) do
    local v = json_decode(r.value)
    if r.key == "incoming_password_hash" then out.password_set = type(v) == "string"
    elseif r.key == "admin_password_hash" then out.admin_password_set = type(v) == "string"
    elseif r.key == "site_url" and type(v) == "string" then out.site_url = v
    elseif SETTING_DEFAULTS[r.key] ~= nil and type(v) == type(SETTING_DEFAULTS[r.key]) then out[r.key] = v end
  end
  return out
end

local function put_setting(self, db, key, value)
  return db:query(str_format([[INSERT INTO %s (key, value) VALUES ($1, $2::jsonb)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()]], tname(self, "settings")),
    key, json_encode(value))
end

-- Settings given as a password and stored as its salted PBKDF2 hash.
local PASSWORD_SETTINGS = { incoming_password = "incoming_password_hash", admin_password = "admin_password_hash" }

--- Change settings: `enabled` (boolean), `incoming_mode` (auto_accept,
-- require_approval, require_password, deny_all), `incoming_password`
-- (stored as a salted PBKDF2 hash; "" or pksync.null clears it),
-- `admin_password` (the admin page's login, stored and cleared the same
-- way), `site_url` (this site's public URL, for tools that have no client
-- option for it).
-- @return the new settings or nil, err, detail
function _M.set_settings(self, attrs)
  if type(attrs) ~= "table" then error("set_settings: table expected", 2) end
  for k, v in pairs(attrs) do
    if k == "enabled" then
      if type(v) ~= "boolean" then error("set_settings: enabled must be a boolean", 2) end
    elseif k == "incoming_mode" then
      if not _M.INCOMING_MODES[v] then error("set_settings: invalid incoming_mode", 2) end
    elseif PASSWORD_SETTINGS[k] then
      if v ~= null and type(v) ~= "string" then error("set_settings: " .. k .. " must be a string", 2) end
    elseif k == "site_url" then
      if type(v) ~= "string" or not v:match("^https?://[^/]") then error("set_settings: site_url must be an http(s) URL", 2) end
    else
      error("set_settings: unknown setting " .. tostring(k), 2)
    end
  end
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  for _, k in ipairs(sorted_keys(attrs)) do
    local v = attrs[k]
    local ok
    local hash_key = PASSWORD_SETTINGS[k]
    if hash_key then
      if v == null or v == "" then
        ok, err = db:query(str_format("DELETE FROM %s WHERE key = $1", tname(self, "settings")), hash_key)
      else
        ok, err = put_setting(self, db, hash_key, core.password_hash(v))
      end
    else
      ok, err = put_setting(self, db, k, v)
    end
    if not ok then return nil, "store_failed", { message = err } end
  end
  return _M.get_settings(self)
end

--- Check a password against the stored hash of a password setting.
local function check_password_setting(self, hash_key, password)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format("SELECT value #>> '{}' AS hash FROM %s WHERE key = $1",
    tname(self, "settings")), hash_key)
  if not rows then return nil, "store_failed", { message = err } end
  if not rows[1] then return "unset" end
  return type(password) == "string" and core.password_verify(password, rows[1].hash)
end

--- Check a password against the stored incoming password.
-- @return "unset", true (matches) or false
function _M.check_incoming_password(self, password)
  return check_password_setting(self, "incoming_password_hash", password)
end

--- Check a password against the stored admin password.
-- @return "unset", true (matches) or false
function _M.check_admin_password(self, password)
  return check_password_setting(self, "admin_password_hash", password)
end

------------------------------------------------------------------------------
-- transfers

local TRANSFER_FIELDS = {
  direction = "text", connection_uuid = "uuid", remote_site_url = "text", table_name = "text",
  records_requested = "bigint", records_transferred = "bigint", records_created = "bigint",
  records_updated = "bigint", records_skipped = "bigint", records_failed = "bigint",
  bytes_transferred = "bigint", conflict_strategy = "text", status = "text", error_message = "text",
  cursor = "text", requester_ip = "text", metadata = "jsonb", started_at = "timestamptz",
  completed_at = "timestamptz",
}

--- A transfer row with its metadata decoded.
local function to_transfer(row)
  if row and type(row.metadata) == "string" then row.metadata = json_decode(row.metadata) or {} end
  return row
end

--- Columns, SQL expressions and parameters for transfer fields; the
-- first parameter is $first. A timestamp given as "now" is the server's now().
local function transfer_params(attrs, first)
  local cols, exprs, params = {}, {}, {}
  for _, k in ipairs(sorted_keys(attrs)) do
    local sqltype = TRANSFER_FIELDS[k]
    if not sqltype then error("transfer: unknown field " .. tostring(k), 3) end
    local v = attrs[k]
    cols[#cols + 1] = util.quote_ident(k)
    if sqltype == "timestamptz" and v == "now" then
      exprs[#exprs + 1] = "now()"
    else
      if sqltype == "jsonb" and v ~= null then v = json_encode(v) end
      params[#params + 1] = v
      exprs[#exprs + 1] = str_format("$%d::%s", #params + first - 1, sqltype)
    end
  end
  return cols, exprs, params
end

--- Record a transfer. attrs: direction ("send"/"receive"), table_name, ...;
-- timestamps accept "now".
-- @return transfer row or nil, err, detail
function _M.create_transfer(self, attrs)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local cols, exprs, params = transfer_params(attrs, 1)
  local rows
  rows, err, detail = db:query(str_format("INSERT INTO %s (%s) VALUES (%s) RETURNING *", tname(self, "transfers"),
    tbl_concat(cols, ", "), tbl_concat(exprs, ", ")), unpack(params))
  if not rows then return nil, "store_failed", { message = err, sqlstate = detail and detail.sqlstate } end
  return to_transfer(rows[1])
end

--- Update a transfer's fields.
function _M.update_transfer(self, uuid, attrs)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local cols, exprs, params = transfer_params(attrs, 2)
  local sets = {}
  for i, c in ipairs(cols) do sets[i] = c .. " = " .. exprs[i] end
  local rows
  rows, err, detail = db:query(str_format("UPDATE %s SET %s WHERE uuid = $1::uuid RETURNING *",
    tname(self, "transfers"), tbl_concat(sets, ", ")), uuid, unpack(params))
  if not rows then return nil, "store_failed", { message = err, sqlstate = detail and detail.sqlstate } end
  return to_transfer(rows[1])
end

--- Add a served page to a send transfer of the connection `conn_uuid`
-- (a transfer of another connection is left alone).
-- @param page `{count =, requested =, bytes =, status = "in_progress"|"completed"}`
function _M.add_to_send_transfer(self, uuid, conn_uuid, page)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format([[UPDATE %s SET records_transferred = records_transferred + $3,
      records_requested = records_requested + $4, bytes_transferred = bytes_transferred + $5,
      status = $6, completed_at = CASE WHEN $6 = 'completed' THEN now() END
    WHERE uuid = $1::uuid AND connection_uuid = $2::uuid]], tname(self, "transfers")),
    uuid, conn_uuid, page.count, page.requested, page.bytes, page.status)
  if not rows then return nil, "store_failed", { message = err } end
  return true
end

--- Transfers, newest first: filter `{connection_uuid=, table_name=, direction=, status=, limit=, offset=}`.
function _M.list_transfers(self, filter)
  filter = filter or {}
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local where, params = where_clause(filter, TRANSFER_FILTERS)
  params[#params + 1] = filter.limit or 100
  params[#params + 1] = filter.offset or 0
  local rows
  rows, err = db:query(str_format("SELECT * FROM %s%s ORDER BY inserted_at DESC, uuid LIMIT $%d::int OFFSET $%d::int",
    tname(self, "transfers"), where, #params - 1, #params),
    unpack(params))
  if not rows then return nil, "store_failed", { message = err } end
  rows.affected = nil
  for i, r in ipairs(rows) do rows[i] = to_transfer(r) end
  return setmetatable(rows, core.array_mt)
end

------------------------------------------------------------------------------
-- scheduled sync (pksync.schedule decides what to run; the rule and the
-- claim are SQL, so they live here)

-- The due rule on a connections row: an enabled, active receiver whose
-- explicit next due time has come, or, without one, whose last automatic
-- run is an interval old (never run: due now).
local DUE_RULE = [[auto_sync_enabled AND status = 'active' AND direction = 'receiver'
  AND CASE WHEN next_auto_sync_at IS NOT NULL THEN next_auto_sync_at <= now()
      ELSE last_auto_sync_at IS NULL
        OR last_auto_sync_at <= now() - make_interval(mins => auto_sync_interval_minutes) END]]

-- When the rule will next hold (NULL: never, or now when never run).
local NEXT_DUE = [[CASE WHEN auto_sync_enabled AND status = 'active' AND direction = 'receiver'
  THEN coalesce(next_auto_sync_at, last_auto_sync_at + make_interval(mins => auto_sync_interval_minutes), now())
  END]]

-- The advisory lock of one connection's runner: a namespace of pksync's own
-- and the connection's uuid (a session lock: it dies with its session).
local LOCK_KEY = "hashtext('pksync.schedule'), hashtext($1::uuid::text)"

--- Receiver connections that are due for an automatic sync, longest
-- waiting first.
-- @return array of connections or nil, err, detail
function _M.due_connections(self)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format("SELECT * FROM %s WHERE %s ORDER BY %s, uuid", tname(self, "connections"),
    DUE_RULE, NEXT_DUE))
  if not rows then return nil, "store_failed", { message = err } end
  rows.affected = nil
  for i, r in ipairs(rows) do rows[i] = to_conn(r) end
  return setmetatable(rows, core.array_mt)
end

--- Claim a due connection for this runner: take its advisory lock (held by
-- this client's database session until `release_connection`, or until the
-- session dies) and check, under the lock, that it is still due.
-- @return the connection; false when another runner holds it or it is no
--   longer due; nil, err, detail
function _M.claim_connection(self, uuid)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query("SELECT pg_try_advisory_lock(" .. LOCK_KEY .. ") AS locked", uuid)
  if not rows then return nil, "store_failed", { message = err } end
  if rows[1].locked ~= true then return false end
  rows, err = db:query(str_format("SELECT * FROM %s WHERE uuid = $1::uuid AND %s", tname(self, "connections"),
    DUE_RULE), uuid)
  if rows and rows[1] then return to_conn(rows[1]) end
  _M.release_connection(self, uuid)
  if not rows then return nil, "store_failed", { message = err } end
  return false
end

--- Release a connection claimed by `claim_connection`.
function _M.release_connection(self, uuid)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query("SELECT pg_advisory_unlock(" .. LOCK_KEY .. ") AS unlocked", uuid)
  if not rows then return nil, "store_failed", { message = err } end
  return rows[1].unlocked == true
end

-- What an outcome does to the failure streak and the next due time.
local OUTCOME_NEXT = { ok = "reset", partial = "reset", offline = "backoff", failed = "backoff",
                       stopped = "resume", suspended = "reset", revoked = "reset", not_found = "reset" }

local RECORD_RUN = [[
UPDATE %s SET last_auto_sync_at = now(), last_auto_sync_status = $2, last_auto_sync_error = $3,
  last_auto_sync_rows = $4::bigint,
  last_auto_sync_success_at = CASE WHEN $2 = 'ok' THEN now() ELSE last_auto_sync_success_at END,
  auto_sync_failures = CASE $5 WHEN 'backoff' THEN auto_sync_failures + 1
    WHEN 'reset' THEN 0 ELSE auto_sync_failures END,
  next_auto_sync_at = CASE $5
    WHEN 'backoff' THEN now() + least(make_interval(mins => auto_sync_interval_minutes),
      make_interval(secs => $6::float8 / 1000 * 2 ^ least(auto_sync_failures, 30)))
    WHEN 'resume' THEN now() ELSE NULL END
WHERE uuid = $1::uuid RETURNING *]]

--- Record an automatic run. An offline or failed run retries after
-- `retry_base_ms * 2^failures`, capped at the interval; a run stopped by a
-- signal is due again at once (the next run picks up where it stopped);
-- any other outcome resets the streak and waits the interval.
-- @param result `{outcome = ok|partial|offline|failed|stopped|suspended|revoked|not_found,
--   error = text, rows = rows pulled, retry_base_ms = 60000}`
-- @return the connection or nil, err, detail
function _M.record_auto_sync(self, uuid, result)
  local mode = OUTCOME_NEXT[result.outcome]
  if not mode then error("record_auto_sync: unknown outcome " .. tostring(result.outcome), 2) end
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err, detail = db:query(str_format(RECORD_RUN, tname(self, "connections")), uuid, result.outcome,
    result.error or null, result.rows or 0, mode, result.retry_base_ms or 60000)
  if not rows then return nil, "store_failed", { message = err, sqlstate = detail and detail.sqlstate } end
  return one(rows)
end

local SCHEDULE_STATE = [[
SELECT c.uuid, c.name, c.direction, c.status, c.site_url, c.auto_sync_enabled, c.auto_sync_tables,
  c.auto_sync_interval_minutes, c.last_auto_sync_at, c.last_auto_sync_status, c.last_auto_sync_error,
  c.last_auto_sync_rows, c.last_auto_sync_success_at, c.next_auto_sync_at, c.auto_sync_failures,
  %s AS next_due_at, coalesce(%s, false) AS due,
  extract(epoch FROM now() - c.last_auto_sync_success_at)::float8 AS seconds_since_success,
  extract(epoch FROM (%s) - now())::float8 AS seconds_until_due,
  coalesce((SELECT sum(t.records_transferred) FROM %s t
    WHERE t.connection_uuid = c.uuid AND t.direction = 'receive'), 0)::bigint AS rows_pulled
FROM %s c ORDER BY c.direction, c.name, c.uuid]]

--- Every connection with its schedule: the stored state plus `next_due_at`
-- (NULL when it is not scheduled), `due`, `seconds_since_success`,
-- `seconds_until_due` (negative: overdue) and `rows_pulled` (all receive
-- transfers), computed by the database's clock.
-- @return array or nil, err, detail
function _M.schedule_state(self)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err = db:query(str_format(SCHEDULE_STATE, NEXT_DUE, DUE_RULE, NEXT_DUE, tname(self, "transfers"),
    tname(self, "connections")))
  if not rows then return nil, "store_failed", { message = err } end
  rows.affected = nil
  return setmetatable(rows, core.array_mt)
end

--- One transfer by uuid.
-- @return transfer or nil, "not_found" (or a store error)
function _M.get_transfer(self, uuid)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  if type(uuid) ~= "string" or not uuid:match("^%x+%-%x+%-%x+%-%x+%-%x+$") then
    return nil, "not_found", { message = "no such transfer" }
  end
  local rows
  rows, err = db:query(str_format("SELECT * FROM %s WHERE uuid = $1::uuid", tname(self, "transfers")), uuid)
  if not rows then return nil, "store_failed", { message = err } end
  if not rows[1] then return nil, "not_found", { message = "no such transfer" } end
  return to_transfer(rows[1])
end

------------------------------------------------------------------------------
-- the admin page: sessions, failed logins, sync jobs (pksync.admin)

local function admin_query(self, sql, ...)
  local db, err, detail = db_or_err(self)
  if not db then return nil, err, detail end
  local rows
  rows, err, detail = db:query(sql, ...)
  if not rows then return nil, "store_failed", { message = err, sqlstate = detail and detail.sqlstate } end
  rows.affected = nil
  return rows
end

--- Record a session by the digest of its id, valid for `minutes`.
function _M.create_admin_session(self, id_hash, client_ip, minutes)
  local rows, err, detail = admin_query(self, str_format([[INSERT INTO %s (id_hash, client_ip, expires_at)
    VALUES ($1, $2, now() + make_interval(mins => $3::int))]], tname(self, "admin_sessions")),
    id_hash, client_ip or null, minutes)
  if not rows then return nil, err, detail end
  return true
end

--- The unexpired session with this id digest (expired ones are removed).
-- @return `{id_hash, client_ip, expires_at}`, false when there is none, or nil, err, detail
function _M.find_admin_session(self, id_hash)
  local ok, err, detail = admin_query(self, str_format("DELETE FROM %s WHERE expires_at <= now()",
    tname(self, "admin_sessions")))
  if not ok then return nil, err, detail end
  local rows
  rows, err, detail = admin_query(self, str_format("SELECT id_hash, client_ip, expires_at FROM %s WHERE id_hash = $1",
    tname(self, "admin_sessions")), id_hash)
  if not rows then return nil, err, detail end
  return rows[1] or false
end

--- End a session.
function _M.delete_admin_session(self, id_hash)
  local rows, err, detail = admin_query(self, str_format("DELETE FROM %s WHERE id_hash = $1",
    tname(self, "admin_sessions")), id_hash)
  if not rows then return nil, err, detail end
  return true
end

--- Failed logins of a client address in the current window of `minutes`
-- (an older window counts as none).
-- @return `{failures, retry_after (s)}` or nil, err, detail
function _M.admin_login_failures(self, client_ip, minutes)
  local rows, err, detail = admin_query(self, str_format([[SELECT
      CASE WHEN window_start > now() - make_interval(mins => $2::int) THEN failures ELSE 0 END AS failures,
      greatest(0, ceil(extract(epoch FROM window_start + make_interval(mins => $2::int) - now())))::int
        AS retry_after
    FROM %s WHERE client_ip = $1]], tname(self, "admin_logins")), client_ip, minutes)
  if not rows then return nil, err, detail end
  return rows[1] or { failures = 0, retry_after = 0 }
end

--- Count one failed login of a client address (a new window when the old one is over).
function _M.count_admin_login_failure(self, client_ip, minutes)
  local rows, err, detail = admin_query(self, str_format([[INSERT INTO %s AS l (client_ip, failures)
    VALUES ($1, 1) ON CONFLICT (client_ip) DO UPDATE SET
      failures = CASE WHEN l.window_start > now() - make_interval(mins => $2::int) THEN l.failures + 1 ELSE 1 END,
      window_start = CASE WHEN l.window_start > now() - make_interval(mins => $2::int) THEN l.window_start
        ELSE now() END]], tname(self, "admin_logins")), client_ip, minutes)
  if not rows then return nil, err, detail end
  return true
end

--- Forget a client address's failed logins (after a good one).
function _M.clear_admin_login_failures(self, client_ip)
  local rows, err, detail = admin_query(self, str_format("DELETE FROM %s WHERE client_ip = $1",
    tname(self, "admin_logins")), client_ip)
  if not rows then return nil, err, detail end
  return true
end

local function to_job(row)
  for _, k in ipairs { "params", "progress", "report" } do
    if type(row[k]) == "string" then row[k] = json_decode(row[k]) end
  end
  return row
end

--- Queue a sync job for a connection; params is plain data (tables, strategies, dry_run).
-- @return the job or nil, err, detail
function _M.create_admin_job(self, connection_uuid, params)
  local rows, err, detail = admin_query(self, str_format(
    "INSERT INTO %s (connection_uuid, params) VALUES ($1::uuid, $2::jsonb) RETURNING *", tname(self, "admin_jobs")),
    connection_uuid, json_encode(params))
  if not rows then return nil, err, detail end
  return to_job(rows[1])
end

--- Change a job's `status`, `progress`, `report` and/or `error`.
function _M.update_admin_job(self, uuid, attrs)
  local rows, err, detail = admin_query(self, str_format([[UPDATE %s SET
      status = coalesce($2, status), progress = coalesce($3::jsonb, progress),
      report = coalesce($4::jsonb, report), error = coalesce($5, error), updated_at = now()
    WHERE uuid = $1::uuid]], tname(self, "admin_jobs")), uuid, attrs.status or null,
    attrs.progress and json_encode(attrs.progress) or null, attrs.report and json_encode(attrs.report) or null,
    attrs.error or null)
  if not rows then return nil, err, detail end
  return true
end

--- A job by uuid.
-- @return the job or nil, "not_found" (or a store error)
function _M.get_admin_job(self, uuid)
  if type(uuid) ~= "string" or not uuid:match("^%x+%-%x+%-%x+%-%x+%-%x+$") then
    return nil, "not_found", { message = "no such job" }
  end
  local rows, err, detail = admin_query(self, str_format("SELECT * FROM %s WHERE uuid = $1::uuid",
    tname(self, "admin_jobs")), uuid)
  if not rows then return nil, err, detail end
  if not rows[1] then return nil, "not_found", { message = "no such job" } end
  return to_job(rows[1])
end

return _M
