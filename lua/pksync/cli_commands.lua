--- Commands of the `pksync` tool that read or change one thing: status,
-- connections, the sender's tables, schemas and rows, settings, serve.
-- Each takes the context built by pksync.cli (`ctx.args`, `ctx.opts`,
-- `ctx:client()`, `ctx:check(...)`, output methods) and returns an exit code.
-- @module pksync.cli_commands
local pksync = require "pksync"
local util = require "pksync.util"
local store = require "pksync.store"
local output = require "pksync.cli_output"
local serve = require "pksync.cli_serve"

local type, tostring, tonumber, ipairs, pairs, pcall, next = type, tostring, tonumber, ipairs, pairs, pcall, next
local math_floor = math.floor
local str_format, tbl_concat = string.format, table.concat
local null = pksync.null
local rawget, G = rawget, _G
local io_read = io.read

local _M = {}

local EXIT_OK, EXIT_FAILED, EXIT_OFFLINE = 0, 1, 3

------------------------------------------------------------------------------
-- shared helpers

--- True for an http(s) URL with a host.
function _M.is_url(s)
  return type(s) == "string" and s:match("^https?://[^/%s]+[^%s]*$") ~= nil
end

local function yes_no(b) return b and "yes" or "no" end

local function text(v)
  if v == nil or v == null then return nil end
  return output.cell(v, 60)
end

-- Fields that must never leave the process: token hashes, password
-- hashes and the token lookup key.
local function secret_field(k)
  k = tostring(k)
  return k:find("hash", 1, true) or k:find("password", 1, true) or k:find("token", 1, true)
      or k:find("lookup", 1, true)
end

--- A connection without its secrets, for output.
function _M.public_conn(conn)
  local out = {}
  for k, v in pairs(conn) do
    if not secret_field(k) then out[k] = v end
  end
  return out
end

local function conn_label(conn)
  return str_format("%q (%s)", output.cell(conn.name, 40), conn.uuid)
end

------------------------------------------------------------------------------
-- our site URL, kept in the store's settings

--- The site_url setting, or nil.
function _M.stored_site_url(client)
  local s = client:get_settings()
  if s and type(s.site_url) == "string" and s.site_url ~= "" then return s.site_url end
  return nil
end

local function store_site_url(ctx, client, url)
  ctx:check("storing the site URL", client:set_settings { site_url = url })
end

------------------------------------------------------------------------------
-- CONN

local function same_url(a, b)
  return type(a) == "string" and util.base_url(a) == util.base_url(b)
end

--- The connection a reference names: its uuid, its exact name or its site URL.
-- @param want a direction that settles a reference matching two connections
function _M.resolve(ctx, ref, want)
  local client = ctx:store()
  local all = ctx:check("listing connections", client:list_connections())
  local matches = {}
  for _, c in ipairs(all) do
    if c.uuid == ref:lower() then return c end
    if c.name == ref or same_url(c.site_url, ref) then matches[#matches + 1] = c end
  end
  if #matches > 1 and want then
    local kept = {}
    for _, c in ipairs(matches) do
      if c.direction == want then kept[#kept + 1] = c end
    end
    if #kept > 0 then matches = kept end
  end
  local what = "finding connection " .. output.cell(ref, 60)
  if #matches == 0 then ctx:fail(EXIT_FAILED, what, "not_found", "no connection has this uuid, name or site URL") end
  if #matches > 1 then
    ctx:fail(EXIT_FAILED, what, "ambiguous", #matches .. " connections match; name it by uuid")
  end
  return matches[1]
end

--- The receiver connection named by CONN (and our URL made known).
function _M.receiver(ctx)
  local conn = ctx:connection(ctx.args.CONN, "receiver")
  if conn.direction ~= "receiver" then
    ctx:fail(EXIT_FAILED, "using connection " .. conn_label(conn), "not_a_receiver",
      "this site sends on it; run the command on the receiving site")
  end
  ctx:site_url()
  return conn
end

--- Ask the sender for the connection's status before data calls (which
-- also activates a pending connection there), so an offline, unknown or
-- suspended connection fails early with a clear reason.
-- @return "active"; fails (exit 3 offline, else 1) otherwise
function _M.check_sender(ctx, conn)
  local what = "asking " .. conn.site_url .. " for the connection's status"
  local st = ctx:check(what, ctx:client():query_sender_status(conn))
  if st == "offline" then ctx:fail(EXIT_OFFLINE, what, "offline", "the sender did not answer") end
  if st == "not_found" then ctx:fail(EXIT_FAILED, what, "not_found", "the sender does not know this connection") end
  if st ~= "active" then ctx:fail(EXIT_FAILED, what, "not_active", "the sender reports it " .. output.cell(st)) end
  return st
end

local function data_conn(ctx)
  local conn = _M.receiver(ctx)
  _M.check_sender(ctx, conn)
  return conn
end

local function table_arg(ctx)
  local name = ctx.args.TABLE
  if not util.valid_ident(name) then ctx:usage("'" .. output.cell(name) .. "' is not a table name") end
  return name
end

------------------------------------------------------------------------------
-- status

--- pksync status URL [--prefix P]
function _M.status(ctx)
  local url = ctx.args.URL
  if not _M.is_url(url) then ctx:usage("URL must be an http(s) URL") end
  local st = ctx:check("asking " .. url .. " for its status",
    ctx:client():check_remote_status(url, { prefix = ctx.opts.prefix }))
  st.site_url = url
  ctx:emit(st)
  local version = type(st.pksync) == "table" and st.pksync.version or nil
  if version and type(st.pksync.features) == "table" then
    version = tostring(version) .. " (" .. tbl_concat(st.pksync.features, ", ") .. ")"
  end
  ctx:lines(output.pairs_lines {
    { "site", url }, { "enabled", yes_no(st.enabled) }, { "incoming mode", text(st.incoming_mode) or "-" },
    { "password", st.password_required and "required" or "not required" },
    { "pksync", version and text(version) or nil } })
  return EXIT_OK
end

------------------------------------------------------------------------------
-- connections

local DIRECTIONS = { sender = true, receiver = true }
local STATUSES = { pending = true, active = true, suspended = true, revoked = true, expired = true }

--- pksync connections list [--direction D] [--status S]
function _M.list(ctx)
  local d, s = ctx.opts.direction, ctx.opts.status
  if d and not DIRECTIONS[d] then ctx:usage("--direction must be sender or receiver") end
  if s and not STATUSES[s] then ctx:usage("--status must be pending, active, suspended, revoked or expired") end
  local list = ctx:check("listing connections", ctx:store():list_connections { direction = d, status = s })
  local schedule = {}
  for _, st in ipairs(ctx:check("reading the schedule", ctx:store():schedule_state())) do schedule[st.uuid] = st end
  local docs, rows = pksync.array(), {}
  for i, c in ipairs(list) do
    local st = schedule[c.uuid] or {}
    docs[i] = _M.public_conn(c)
    docs[i].next_due_at = st.next_due_at
    rows[i] = { c.uuid, output.cell(c.name, 30), c.direction, c.status, output.cell(c.site_url, 50),
      c.direction ~= "receiver" and "-" or c.auto_sync_enabled and ("every " .. c.auto_sync_interval_minutes .. "m")
        or "off", output.next_due(st) }
  end
  ctx:emit(docs)
  if #rows == 0 then ctx:say("no connections") return EXIT_OK end
  ctx:lines(output.table_lines({ { "UUID" }, { "NAME" }, { "DIRECTION" }, { "STATUS" }, { "SITE URL" },
    { "AUTO SYNC" }, { "NEXT DUE" } }, rows))
  return EXIT_OK
end

local function add_attrs(ctx)
  local o = ctx.opts
  if not o.name or o.name == "" then ctx:usage("missing --name") end
  if not DIRECTIONS[o.direction] then ctx:usage("--direction must be sender or receiver") end
  if not _M.is_url(o.url) then ctx:usage("--url must be the other site's http(s) URL") end
  if o.direction == "receiver" and not o.token then ctx:usage("a receiver needs --token (the sender's raw token)") end
  local attrs = { name = o.name, direction = o.direction, site_url = o.url, auth_token = o.token,
    password = o.password, prefix = o.prefix, notify = not o["no-notify"] }
  for _, k in ipairs { "allowed", "excluded" } do
    local v = o[k .. "-tables"]
    if v then
      local list = output.split_list(v)
      for _, t in ipairs(list) do
        if not util.valid_ident(t) then ctx:usage("'" .. output.cell(t) .. "' is not a table name") end
      end
      attrs[k .. "_tables"] = list
    end
  end
  return attrs
end

local function registration(conn)
  local note = type(conn.metadata) == "table" and conn.metadata.remote_notification
  if type(note) ~= "table" then return nil end
  return { status = note.notification_status, success = note.notification_success,
    message = note.notification_message, remote_connection_uuid = note.remote_connection_uuid,
    http_status = note.http_status }
end

local function add_lines(conn, reg, raw)
  local lines = { str_format("created %s connection %s", conn.direction, conn_label(conn)) }
  local items = { { "uuid", conn.uuid }, { "status", conn.status }, { "site", text(conn.site_url) } }
  if reg then
    local msg = text(reg.message)
    items[#items + 1] = { "registration", tostring(reg.status) .. (msg and (" (" .. msg .. ")") or "") }
  end
  for _, l in ipairs(output.pairs_lines(items, "  ")) do lines[#lines + 1] = l end
  if raw then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "RAW TOKEN (shown only now; it is not stored and cannot be shown again):"
    lines[#lines + 1] = "  " .. raw
  end
  return lines
end

--- The exit code for a registration outcome: the connection exists
-- locally either way, but a sender its receiver does not know is not ready.
local function registration_code(reg)
  if not reg or reg.success or reg.status == "skipped" then return EXIT_OK end
  -- no HTTP status at all: the receiver never answered
  if reg.http_status == nil or reg.http_status == pksync.null then return EXIT_OFFLINE end
  return EXIT_FAILED
end

--- pksync connections add --name N --direction D --url URL [...]
function _M.add(ctx)
  local attrs = add_attrs(ctx)
  if attrs.direction == "sender" and attrs.notify then ctx:site_url() end
  local client = ctx:store()
  local conn, raw, detail = client:create_connection(attrs)
  if not conn then ctx:check("creating the connection", nil, raw, detail) end
  if attrs.direction ~= "sender" then raw = nil end  -- a receiver's token is the sender's: never echoed
  local reg = registration(conn)
  ctx:emit { connection = _M.public_conn(conn), registration = reg, raw_token = raw }
  if ctx.quiet then
    if not ctx.json then ctx.stdout:write(conn.uuid, "\n", raw and (raw .. "\n") or "") end
  else
    ctx:lines(add_lines(conn, reg, raw))
  end
  local code = registration_code(reg)
  if code ~= EXIT_OK then
    ctx.stderr:write("pksync: registering on ", conn.site_url, ": ", tostring(reg.status), " (",
      output.cell(reg.message, 100), ")\n")
  end
  return code
end

--- pksync connections approve|suspend|reactivate|revoke|delete CONN [--reason R]
function _M.lifecycle(ctx)
  local verb = ctx.command.verb
  local conn = ctx:connection(ctx.args.CONN)
  -- the peer is told, and it knows us by our URL
  if verb == "delete" or conn.direction == "sender" then ctx:site_url() end
  local client = ctx:store()
  local what = verb .. " connection " .. conn_label(conn)
  local status, remote
  if verb == "delete" then
    local ok, r, detail = client:delete_connection(conn.uuid)
    if not ok then ctx:check(what, nil, r, detail) end
    status, remote = "deleted", r
  else
    local new, r, detail = client[verb .. "_connection"](client, conn.uuid, ctx.opts.reason)
    if not new then ctx:check(what, nil, r, detail) end
    status, remote = new.status, r
  end
  ctx:emit { uuid = conn.uuid, name = conn.name, direction = conn.direction, status = status,
    remote = remote, action = verb }
  if not ctx.quiet then
    ctx:say(str_format("connection %s is now %s; peer: %s", conn_label(conn), status, output.cell(remote)))
  end
  return EXIT_OK
end

------------------------------------------------------------------------------
-- the sender's tables, schemas and rows

--- pksync tables CONN
function _M.tables(ctx)
  local conn = data_conn(ctx)
  local list = ctx:check("listing the tables of " .. conn.site_url, ctx:client():fetch_sender_tables(conn))
  ctx:emit(list)
  local rows = {}
  for i, t in ipairs(list) do
    local deps = type(t.depends_on) == "table" and tbl_concat(t.depends_on, ",") or ""
    local sum = t.checksum ~= null and t.checksum ~= nil and output.cell(t.checksum, 16) or "-"
    rows[i] = { output.cell(t.name, 40), output.int(t.row_count), output.size(t.size_bytes), sum, deps }
  end
  ctx:lines(output.table_lines({ { "TABLE" }, { "ROWS", right = true }, { "SIZE", right = true },
    { "CHECKSUM" }, { "DEPENDS ON" } }, rows))
  return EXIT_OK
end

local function column_type(c)
  local t = output.cell(c.data_type, 30)
  local len = c.character_maximum_length
  if type(len) == "number" then t = t .. "(" .. math_floor(len) .. ")" end
  return t
end

local function nullable(v)
  if v == true or v == "YES" or v == "yes" then return "yes" end
  return "no"
end

--- pksync schema CONN TABLE
function _M.schema(ctx)
  local name = table_arg(ctx)
  local conn = data_conn(ctx)
  local schema = ctx:check("reading the schema of " .. name, ctx:client():fetch_table_schema(conn, name))
  ctx:emit(schema)
  local rows = {}
  for i, c in ipairs(schema.columns) do
    rows[i] = { output.cell(c.column_name, 40), column_type(c), nullable(c.is_nullable),
      text(c.column_default) or "" }
  end
  ctx:lines(output.table_lines({ { "COLUMN" }, { "TYPE" }, { "NULL" }, { "DEFAULT" } }, rows))
  if type(schema.primary_key) == "table" then ctx:say("primary key: " .. tbl_concat(schema.primary_key, ", ")) end
  return EXIT_OK
end

local function count_opt(ctx, name, min)
  local v = ctx.opts[name]
  if v == nil then return nil end
  local n = tonumber(v)
  if not n or n ~= math_floor(n) or n < min then
    ctx:usage(str_format("--%s needs a whole number >= %d", name, min))
  end
  return n
end

--- Column order for a preview: the sender's schema when it answers,
-- else the keys of the records in alphabetical order.
local function preview_columns(ctx, conn, name, records)
  local schema = ctx:client():fetch_table_schema(conn, name)
  local cols = {}
  if schema then
    for i, c in ipairs(schema.columns) do cols[i] = c.column_name end
    return cols
  end
  local seen = {}
  for _, r in ipairs(records) do
    for k in pairs(r) do seen[k] = true end
  end
  return output.sorted_keys(seen)
end

--- pksync preview CONN TABLE [--limit N] [--offset N]
function _M.preview(ctx)
  local name = table_arg(ctx)
  local limit, offset = count_opt(ctx, "limit", 1), count_opt(ctx, "offset", 0)
  local conn = data_conn(ctx)
  local records = ctx:check("reading rows of " .. name,
    ctx:client():fetch_table_records(conn, name, { limit = limit, offset = offset }))
  ctx:emit(records)
  if ctx.json then return EXIT_OK end
  if #records == 0 then ctx:say("no rows") return EXIT_OK end
  local cols = preview_columns(ctx, conn, name, records)
  local columns, rows = {}, {}
  for i, c in ipairs(cols) do columns[i] = { output.cell(c, 30) } end
  for i, r in ipairs(records) do
    local row = {}
    for j, c in ipairs(cols) do row[j] = output.cell(r[c], 30) end
    rows[i] = row
  end
  ctx:lines(output.table_lines(columns, rows))
  return EXIT_OK
end

------------------------------------------------------------------------------
-- settings

local function settings_change(ctx)
  local o = ctx.opts
  if o.enable and o.disable then ctx:usage("--enable and --disable exclude each other") end
  local mode = o["incoming-mode"]
  if mode and not store.INCOMING_MODES[mode] then
    ctx:usage("--incoming-mode must be auto_accept, require_approval, require_password or deny_all")
  end
  if o["site-url-set"] and not _M.is_url(o["site-url-set"]) then ctx:usage("--site-url-set must be an http(s) URL") end
  local change = {}
  if o.enable then change.enabled = true elseif o.disable then change.enabled = false end
  change.incoming_mode = mode
  change.incoming_password = o["incoming-password"]
  change.admin_password = o["admin-password"]
  if change.admin_password == "-" then
    -- from stdin, so the password stays out of the process list and shell history
    change.admin_password = (io_read("*l") or ""):gsub("\r$", "")
    if change.admin_password == "" then ctx:usage("--admin-password -: no password on stdin") end
  end
  return change
end

--- pksync settings [--enable|--disable] [--incoming-mode M] [--incoming-password P] [--site-url-set URL]
-- [--admin-password P]
function _M.settings(ctx)
  local change = settings_change(ctx)
  local client = ctx:store()
  if next(change) then ctx:check("changing settings", client:set_settings(change)) end
  if ctx.opts["site-url-set"] then store_site_url(ctx, client, ctx.opts["site-url-set"]) end
  local s = ctx:check("reading settings", client:get_settings())
  local doc = { enabled = s.enabled, incoming_mode = s.incoming_mode, password_set = s.password_set,
    admin_password_set = s.admin_password_set, site_url = s.site_url or _M.stored_site_url(client) or null }
  ctx:emit(doc)
  ctx:lines(output.pairs_lines {
    { "enabled", yes_no(doc.enabled) }, { "incoming mode", text(doc.incoming_mode) or "-" },
    { "password", doc.password_set and "set" or "not set" },
    { "admin password", doc.admin_password_set and "set" or "not set" },
    { "site URL", doc.site_url ~= null and text(doc.site_url) or "(not set)" } })
  return EXIT_OK
end

------------------------------------------------------------------------------
-- serve

local function serve_opts(ctx)
  local o = ctx.opts
  local listen = o.listen or "127.0.0.1:8080"
  if not listen:match("^[%w%.%[%]:_-]+$") then ctx:usage("--listen must be ADDRESS:PORT or PORT") end
  local threads = tonumber(o.threads or 8)
  if not threads or threads ~= math_floor(threads) or threads < 1 or threads > 512 then
    ctx:usage("--threads must be a whole number from 1 to 512")
  end
  local prefix = util.normalize_prefix(o.prefix)
  if not prefix:match("^[%w/_%.%-]*$") then ctx:usage("--prefix may hold letters, digits, / _ . - only") end
  if o.dir and not o.start then ctx:usage("--dir goes with --start") end
  return listen, math_floor(threads), prefix
end

--- Our URL for the served site, when one is known (serving works without).
local function serve_site_url(ctx)
  if ctx.opts["site-url"] then return ctx.opts["site-url"] end
  local ok, url = pcall(function() return _M.stored_site_url(ctx:store()) end)
  if not ok then ctx:note("the database did not answer; the configuration names no site_url") end
  return ok and url or nil
end

--- pksync serve [--listen A:P] [--threads N] [--prefix P] [--start [--dir DIR]]
function _M.serve(ctx)
  local listen, threads, prefix = serve_opts(ctx)
  local cpath, warning = serve.lua_cpath(rawget(G, "jit") ~= nil)
  if warning then ctx:note(warning) end
  local conf, stripped = serve.config { listen = listen, threads = threads, prefix = prefix,
    db = ctx.opts.db or "", site_url = serve_site_url(ctx), lua_path = serve.lua_path(), lua_cpath = cpath,
    root = serve.is_root(), keep_password = ctx.opts.start }
  if not ctx.opts.start then
    if stripped then ctx:note("the password in --db is left out: nginx's workers read PGPASSWORD") end
    if ctx.json then ctx:emit { config = conf } else ctx.stdout:write(conf) end
    return EXIT_OK
  end
  local dir = ctx.opts.dir or ctx:check("making a directory for nginx", serve.temp_dir(), "mktemp_failed")
  local path, err = serve.write(dir, conf)
  if not path then ctx:fail(EXIT_FAILED, "writing the nginx configuration", "write_failed", err) end
  ctx:emit { dir = dir, config_file = path, listen = listen, path = prefix .. "/sync/api/" }
  ctx:note(str_format("nginx serves %s/sync/api/ on %s (config %s); Ctrl-C stops it", prefix, listen, path))
  local code = serve.run(dir)
  if code ~= 0 then ctx:fail(EXIT_FAILED, "running nginx", "exit status " .. code, "its messages are above") end
  return EXIT_OK
end

return _M
