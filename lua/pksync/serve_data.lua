--- The data endpoints of the serving side: list-tables, table-schema,
-- table-records and pull-data (with the `paged_pull` extension), and
-- table-digest (the `table_digest` extension).
--
-- Rows leave PostgreSQL as protocol JSON straight from C
-- (`core.export_rows`); Lua only builds the query and the envelope.
-- @module pksync.serve_data
local core = require "pksync.core"
local util = require "pksync.util"
local catalog = require "pksync.catalog"
local access = require "pksync.access"
local answer = require "pksync.answer"
local policy = require "pksync.policy"
local digest = require "pksync.digest"

local type, ipairs, pairs, tostring, tonumber, select = type, ipairs, pairs, tostring, tonumber, select
local setmetatable, getmetatable = setmetatable, getmetatable
local str_format, str_match, tbl_concat = string.format, string.match, table.concat
local math_floor, math_min = math.floor, math.min
local json_encode, json_decode = core.json_encode, core.json_decode
local null = core.null

local _M = {}

local fail, reply = answer.fail, answer.reply

local MAX_FILTER_IDS = 1000
local DIGEST_ERRORS = {
  unknown_column = "Unknown column", invalid_bound = "Invalid bound", not_digestible = "Table has no primary key",
}
local CTID = "__pksync_ctid"

------------------------------------------------------------------------------
-- access

local function contains(list, name)
  if type(list) ~= "table" then return false end
  for _, v in ipairs(list) do
    if v == name then return true end
  end
  return false
end

local function is_store_table(self, name)
  for _, t in pairs(self.store_tables) do
    if t == name then return true end
  end
  return false
end

--- May this connection see this table? (excluded/allowed lists, then the
-- policy's table_allowed hook).
local function table_allowed(self, conn, name)
  if contains(conn.excluded_tables, name) then return false end
  if type(conn.allowed_tables) == "table" and #conn.allowed_tables > 0
     and not contains(conn.allowed_tables, name) then
    return false
  end
  if not policy.has(self.policy, "table_allowed") then return true end
  local ran, allowed = policy.call(self.policy, "table_allowed", conn, name)
  if not ran then self:log("error", "policy %s", allowed) return false end
  return allowed ~= false and allowed ~= nil
end

--- nil when the table may be served; else the error answer.
local function table_access(self, db, conn, name)
  if is_store_table(self, name) then return fail(404, "Table not found") end
  if not table_allowed(self, conn, name) then
    return fail(403, "This connection is not authorised to access that table")
  end
  if not util.valid_ident(name) then return fail(404, "Table not found") end
  local exists = catalog.table_exists(db, self.schema, name)
  if exists == nil then return fail(500, "Store unavailable") end
  if not exists then return fail(404, "Table not found") end
  return nil
end

--- Columns the policy never lets leave this site, as a set.
local function redacted(self, conn, name)
  local ran, cols = policy.call(self.policy, "redact", conn, name)
  if not ran then self:log("error", "policy %s", cols) return nil end
  local set = {}
  if type(cols) == "table" then
    for _, c in ipairs(cols) do
      -- only what can be a column name: the C side reads names up to a NUL
      if type(c) == "string" and not c:find("\0", 1, true) then set[c] = true end
    end
  end
  return set
end

--- The common prologue: fields, auth and limits, table access.
local function open_request(self, req, body, fields, joined)
  local bad = answer.require_fields(body, fields, joined)
  if bad then return nil, bad end
  local conn
  conn, bad = access.authorize(self, req, body, fail)
  if not conn then return nil, bad end
  local db = self:database()
  if not db then return nil, fail(500, "Store unavailable") end
  if body.table_name then
    bad = table_access(self, db, conn, body.table_name)
    if bad then return nil, bad end
  end
  return conn, db
end

local function qualified(self, name)
  return util.quote_ident(self.schema) .. "." .. util.quote_ident(name)
end

------------------------------------------------------------------------------
-- list-tables / table-schema

function _M.list_tables(self, req, settings, body)
  local conn, db = open_request(self, req, body, { "auth_token_hash" })
  if not conn then return db end
  local names = catalog.base_tables(db, self.schema)
  local deps = names and catalog.dependencies(db, self.schema)
  if not deps then return fail(500, "Failed to list tables") end
  local tables = setmetatable({}, core.array_mt)
  for _, name in ipairs(names) do
    if not is_store_table(self, name) and table_allowed(self, conn, name) then
      local stats = catalog.table_stats(db, self.schema, name)
      if not stats then return fail(500, "Failed to list tables") end
      stats.name = name
      stats.depends_on = deps[name] or setmetatable({}, core.array_mt)
      tables[#tables + 1] = stats
    end
  end
  self:mark_connected(conn.uuid)
  return reply(200, { success = true, tables = tables })
end

function _M.table_schema(self, req, settings, body)
  local conn, db = open_request(self, req, body, { "auth_token_hash", "table_name" }, true)
  if not conn then return db end
  local hidden = redacted(self, conn, body.table_name)
  local cols = catalog.columns(db, self.schema, body.table_name)
  local pk = catalog.primary_key(db, self.schema, body.table_name)
  if not hidden or not cols or not pk then return fail(500, "Failed to read schema") end
  local columns, keys = setmetatable({}, core.array_mt), setmetatable({}, core.array_mt)
  for _, c in ipairs(cols) do
    if not hidden[c.column_name] then columns[#columns + 1] = c end
  end
  for _, k in ipairs(pk) do keys[#keys + 1] = k.name end
  return reply(200, { success = true, schema = {
    table_name = body.table_name, columns = columns, primary_key = keys } })
end

------------------------------------------------------------------------------
-- row queries

--- A small query builder: fragments with bound parameters.
local function new_query()
  return { where = {}, params = {} }
end

local function bind(q, value)
  q.params[#q.params + 1] = value
  return "$" .. #q.params
end

--- An integer from a JSON number or a string of digits, clamped; else default.
local function bounded_int(v, default, lo, hi)
  local n
  if type(v) == "number" and v == math_floor(v) then n = v
  elseif type(v) == "string" and str_match(v, "^%-?%d+$") then n = tonumber(v) end
  if not n then return default end
  if n < lo then return lo end
  if n > hi then return hi end
  return n
end

local function is_int_value(v)
  return (type(v) == "number" and v == math_floor(v)) or
    (core.is_decimal(v) and str_match(tostring(v), "^%-?%d+$") ~= nil)
end

local function key_kind(pk)
  local t = pk[1].type
  if catalog.INTEGER_TYPES[t] then return "int" end
  if t == "uuid" then return "uuid" end
  if t == "text" or str_match(t, "^character varying") then return "text" end
  return nil
end

local function filter_error(code)
  local messages = {
    invalid_filter = "Invalid filter",
    unsupported_key_type = "Filter not supported for this key type",
    filter_needs_single_key = "Filter needs a single-column primary key",
  }
  return fail(400, messages[code], { error_code = code })
end

local function present(v) return v ~= nil and v ~= null end

--- Check the ids one by one for the key's kind; returns the JSON array text.
local function ids_param(ids, kind)
  if type(ids) ~= "table" or #ids < 1 or #ids > MAX_FILTER_IDS then return nil end
  local out = setmetatable({}, core.array_mt)
  for i, id in ipairs(ids) do
    if kind == "int" then
      if not is_int_value(id) then return nil end
    elseif kind == "uuid" then
      if type(id) ~= "string" or not str_match(id, "^%x+%-%x+%-%x+%-%x+%-%x+$") or #id ~= 36 then return nil end
    elseif type(id) == "number" or core.is_decimal(id) then
      id = tostring(id)
    elseif type(id) ~= "string" or #id > 255 or id == "" or id:find("\0", 1, true) then
      return nil
    end
    out[i] = id
  end
  return json_encode(out)
end

local KIND_ARRAY = { int = "bigint[]", uuid = "uuid[]", text = "text[]" }

--- PhoenixKit's row filters (`ids` or `id_start`/`id_end`), added to q.
-- @return true when a filter applies, false when none; or nil, answer
local function add_filter(q, body, pk)
  local has_ids = present(body.ids)
  local has_range = present(body.id_start) or present(body.id_end)
  if not has_ids and not has_range then return false end
  if has_ids and has_range then return nil, filter_error("invalid_filter") end
  if #pk ~= 1 then return nil, filter_error("filter_needs_single_key") end
  local kind = key_kind(pk)
  if not kind then return nil, filter_error("unsupported_key_type") end
  local col = "t." .. util.quote_ident(pk[1].name)
  if has_ids then
    local ids = ids_param(body.ids, kind)
    if not ids then return nil, filter_error("invalid_filter") end
    q.where[#q.where + 1] = str_format("%s = ANY(ARRAY(SELECT jsonb_array_elements_text(%s::jsonb))::%s)",
      col, bind(q, ids), KIND_ARRAY[kind])
    return true
  end
  if kind ~= "int" then return nil, filter_error("invalid_filter") end
  for field, op in pairs { id_start = ">=", id_end = "<=" } do
    local v = body[field]
    if present(v) then
      if not is_int_value(v) then return nil, filter_error("invalid_filter") end
      q.where[#q.where + 1] = str_format("%s %s %s::bigint", col, op, bind(q, tostring(v):gsub("%.0$", "")))
    end
  end
  return true
end

local function order_by(pk)
  if #pk == 0 then return " ORDER BY t.ctid" end
  local cols = {}
  for i, k in ipairs(pk) do cols[i] = "t." .. util.quote_ident(k.name) end
  return " ORDER BY " .. tbl_concat(cols, ", ")
end

local function where_sql(q)
  return #q.where > 0 and (" WHERE " .. tbl_concat(q.where, " AND ")) or ""
end

local function uuid_format(body)
  return body.uuid_format == "text" and "text" or "binary"
end

function _M.table_records(self, req, settings, body)
  local conn, db = open_request(self, req, body, { "auth_token_hash", "table_name" }, true)
  if not conn then return db end
  if self.extensions == false then body.uuid_format = nil end
  local hidden = redacted(self, conn, body.table_name)
  local pk = catalog.primary_key(db, self.schema, body.table_name)
  if not hidden or not pk then return fail(500, "Failed to get records") end
  local q = new_query()
  local filtered, bad = add_filter(q, body, pk)
  if filtered == nil then return bad end
  local limit = bounded_int(body.limit, 10, 1, 100)
  local offset = bounded_int(body.offset, 0, 0, 1000000000)
  local sql = str_format("SELECT t.* FROM %s t%s%s LIMIT %s OFFSET %s", qualified(self, body.table_name),
    where_sql(q), order_by(pk), bind(q, limit), bind(q, offset))
  local rows_json, err = core.export_rows(db, sql, q.params, { uuid = uuid_format(body), omit = hidden })
  if not rows_json then return fail(500, "Failed to get records: " .. tostring(err)) end
  return { status = 200, headers = { ["content-type"] = "application/json; charset=utf-8" },
           body = '{"success":true,"records":' .. rows_json .. "}" }
end

------------------------------------------------------------------------------
-- pull-data

--- Cursor: base64 of {"k": [key texts...], "t": transfer uuid}. Opaque to
-- clients; checked on the way back in (shape, key count, transfer owner).
local function encode_cursor(last_key, transfer_uuid)
  return core.base64_encode(json_encode({ k = setmetatable(last_key, core.array_mt), t = transfer_uuid or null }))
end

local function decode_cursor(after, nkeys)
  if not present(after) then return false end
  if type(after) ~= "string" or #after > 8192 then return nil end
  local text = core.base64_decode(after)
  local c = text and json_decode(text, { max_depth = 4 })
  if type(c) ~= "table" or type(c.k) ~= "table" or #c.k ~= nkeys then return nil end
  for _, v in ipairs(c.k) do
    if type(v) ~= "string" then return nil end
  end
  if c.t ~= nil and c.t ~= null and (type(c.t) ~= "string" or not str_match(c.t, "^[%x%-]+$")) then return nil end
  return c
end

--- The keyset condition "(k1, k2) > (v1, v2)" for a cursor.
local function add_keyset(q, pk, cursor)
  if #pk == 0 then
    q.where[#q.where + 1] = "t.ctid > " .. bind(q, cursor.k[1]) .. "::tid"
    return
  end
  local cols, vals = {}, {}
  for i, k in ipairs(pk) do
    cols[i] = "t." .. util.quote_ident(k.name)
    -- the type name comes from the catalog (format_type), not from the request
    vals[i] = bind(q, cursor.k[i]) .. "::" .. k.type
  end
  q.where[#q.where + 1] = str_format("(%s) > (%s)", tbl_concat(cols, ", "), tbl_concat(vals, ", "))
end

--- The table_digest extension's key range (key_after, key_upto], added to
-- q: the rows of one range of a table-digest answer.
-- @return true when a range applies, false when none; or nil, answer
local function add_key_range(self, db, q, body)
  if body.key_after == nil and body.key_upto == nil then return false end
  local facts, err = digest.describe(db, self.schema, body.table_name)
  if not facts then
    if err == "not_digestible" then return nil, fail(400, DIGEST_ERRORS[err], { error_code = err }) end
    return nil, fail(500, "Failed to pull data")
  end
  local where = digest.range_conditions(facts.keys, body.key_after, body.key_upto, q.params)
  if not where then return nil, fail(400, DIGEST_ERRORS.invalid_bound, { error_code = "invalid_bound" }) end
  for _, c in ipairs(where) do q.where[#q.where + 1] = c end
  return true
end

local function pull_query(self, db, body, pk, page, cursor)
  local q = new_query()
  local filtered, bad = add_filter(q, body, pk)
  if filtered == nil then return nil, bad end
  local ranged
  ranged, bad = add_key_range(self, db, q, body)
  if ranged == nil then return nil, bad end
  if cursor then add_keyset(q, pk, cursor) end
  local select = #pk == 0 and ("t.ctid AS " .. CTID .. ", t.*") or "t.*"
  local sql = str_format("SELECT %s FROM %s t%s%s LIMIT %s", select, qualified(self, body.table_name),
    where_sql(q), order_by(pk), bind(q, page + 1))
  return sql, q.params, filtered, ranged
end

local function strategy_of(body)
  local s = body.conflict_strategy
  if type(s) == "string" and #s <= 20 then return s end
  return "skip"
end

--- Counters on the connection and the send transfer of this pull.
local function record_pull(self, conn, req, body, page_info)
  local starting = page_info.cursor == false
  self:count_served_page(conn.uuid, { count = page_info.count, bytes = page_info.bytes, starting = starting })
  local status = page_info.has_more and "in_progress" or "completed"
  if starting then
    local t = self:create_transfer { direction = "send", connection_uuid = conn.uuid,
      remote_site_url = conn.site_url, table_name = body.table_name, records_requested = page_info.page,
      records_transferred = page_info.count, bytes_transferred = page_info.bytes,
      conflict_strategy = strategy_of(body), status = status, started_at = "now",
      completed_at = not page_info.has_more and "now" or nil, requester_ip = req.remote_addr }
    return t and t.uuid
  end
  local tid = page_info.cursor.t
  if type(tid) ~= "string" then return nil end
  self:add_to_send_transfer(tid, conn.uuid, { count = page_info.count, requested = page_info.page,
    bytes = page_info.bytes, status = status })
  return tid
end

--- The pull-data answer. The paging fields come before the rows, so a
-- client can ask for the next page while this one is still arriving.
local function pull_envelope(name, rows_json, info, filtered, ranged)
  local parts = { '{"success":true,"table":', json_encode(name),
    ',"has_more":', info.has_more and "true" or "false",
    ',"next_after":', info.next_after and json_encode(info.next_after) or "null" }
  if info.has_more then parts[#parts + 1] = ',"truncated":true' end
  if filtered then parts[#parts + 1] = ',"filtered":true' end
  if ranged then parts[#parts + 1] = ',"ranged":true' end
  parts[#parts + 1] = ',"data":'
  parts[#parts + 1] = rows_json
  parts[#parts + 1] = "}"
  return tbl_concat(parts)
end

function _M.pull_data(self, req, settings, body)
  local conn, db = open_request(self, req, body, { "auth_token_hash", "table_name" })
  if not conn then return db end
  if self.extensions == false then
    -- behave as a plain PhoenixKit sender: no paging, PhoenixKit's uuid form
    body.limit, body.after, body.uuid_format, body.key_after, body.key_upto = nil, nil, nil, nil, nil
  end
  local hidden = redacted(self, conn, body.table_name)
  local pk = catalog.primary_key(db, self.schema, body.table_name)
  if not hidden or not pk then return fail(500, "Failed to pull data") end
  local cursor = decode_cursor(body.after, #pk == 0 and 1 or #pk)
  if cursor == nil then return fail(400, "Invalid cursor", { error_code = "invalid_cursor" }) end
  local page, bad = access.pull_budget(conn, cursor == false, fail)
  if not page then return bad end
  if type(body.limit) == "number" and body.limit >= 1 then page = math_min(page, math_floor(body.limit)) end
  local sql, params, filtered, ranged = pull_query(self, db, body, pk, page, cursor)
  if not sql then return params end
  local keys = {}
  for i, k in ipairs(pk) do keys[i] = k.name end
  if #pk == 0 then keys[1] = CTID hidden[CTID] = true end
  local rows_json, count, has_more, last_key = core.export_rows(db, sql, params,
    { limit = page, key_columns = keys, omit = hidden, uuid = uuid_format(body) })
  local sqlstate = not rows_json and type(has_more) == "table" and has_more.sqlstate
  if cursor and (sqlstate == "22P02" or sqlstate == "22003") then
    -- a cursor whose key values do not fit the key's type: forged or stale
    return fail(400, "Invalid cursor", { error_code = "invalid_cursor" })
  end
  if ranged and not rows_json and digest.is_bad_bound(has_more) then
    return fail(400, DIGEST_ERRORS.invalid_bound, { error_code = "invalid_bound" })
  end
  if not rows_json then
    self:log("error", "pull-data of %s failed: %s", body.table_name, tostring(count))
    return fail(500, "Failed to pull data")
  end
  local info = { count = count, has_more = has_more, bytes = #rows_json, page = page, cursor = cursor }
  local tid = record_pull(self, conn, req, body, info)
  if has_more and last_key then info.next_after = encode_cursor(last_key, tid) end
  return { status = 200, headers = { ["content-type"] = "application/json; charset=utf-8" },
           body = pull_envelope(body.table_name, rows_json, info, filtered, ranged) }
end


------------------------------------------------------------------------------
-- table-digest

--- The columns to hash: names, none of them redacted (a digest of a
-- hidden column would tell its values apart).
local function digest_columns(body, hidden)
  local cols = body.columns
  if type(cols) ~= "table" or #cols == 0 or #cols > 1600 then return nil end
  for _, c in ipairs(cols) do
    if type(c) ~= "string" or hidden[c] then return nil end
  end
  return cols
end

function _M.table_digest(self, req, settings, body)
  if self.extensions == false then return fail(404, "Not found") end
  local conn, db = open_request(self, req, body, { "auth_token_hash", "table_name" })
  if not conn then return db end
  local hidden = redacted(self, conn, body.table_name)
  if not hidden then return fail(500, "Failed to digest") end
  local cols = digest_columns(body, hidden)
  if not cols then return fail(400, "Unknown column", { error_code = "unknown_column" }) end
  local range_rows = type(body.range_rows) == "number" and body.range_rows >= 1 and body.range_rows or nil
  -- a client may scan less than the server allows (a first sample)
  local max_rows = self.digest_max_rows or digest.DEFAULT_MAX_ROWS
  if type(body.scan_rows) == "number" and body.scan_rows >= 1 then max_rows = math_min(max_rows, body.scan_rows) end
  local facts, err, detail = digest.describe(db, self.schema, body.table_name)
  local res = facts
  if facts then
    res, err, detail = digest.ranges(db, facts, { columns = cols, after = body.after, upto = body.upto,
      range_rows = range_rows, max_rows = max_rows })
  end
  if not res then
    if DIGEST_ERRORS[err] then return fail(400, DIGEST_ERRORS[err], { error_code = err }) end
    self:log("error", "table-digest of %s failed: %s", body.table_name, tostring(detail and detail.message or err))
    return fail(500, "Failed to digest")
  end
  return reply(200, { success = true, table = body.table_name, key = res.key, ranges = res.ranges,
                      has_more = res.has_more })
end

return _M
