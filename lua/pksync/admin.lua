--- The admin page: its static files and its JSON API.
--
-- `handle(client, req, opts)` answers one request under the page's
-- location (`pksync.nginx.admin` runs it in a thread-pool thread). The
-- page is off (404) until an admin password is set
-- (`pksync settings --admin-password`). A login makes a session: a random
-- id in an HttpOnly, SameSite=Strict cookie (Secure over https), of which
-- the store keeps only a digest; the CSRF token is derived from the id, so
-- it needs no storage and dies with the session. Every request that
-- changes something must carry it in `X-CSRF-Token`. Failed logins are
-- counted per client address; past the limit, logins wait for the window.
--
-- A sync is a job: `handle` records it and returns its uuid as a second
-- value; the host then calls `run_job` off the request (nginx: a timer and
-- a pool thread), which writes the live progress and the report into the
-- job's row through a second client, so progress commits while the pull's
-- own transactions are open.
-- @module pksync.admin
local core = require "pksync.core"
local util = require "pksync.util"
local catalog = require "pksync.catalog"
local plan = require "pksync.plan"

local type, pairs, ipairs, tostring, tonumber, pcall, setmetatable, next =
  type, pairs, ipairs, tostring, tonumber, pcall, setmetatable, next
local str_format, str_gsub, str_match, str_sub, str_char = string.format, string.gsub, string.match, string.sub,
  string.char
local math_floor = math.floor
local io_open = io.open
local null = core.null
local json_encode, json_decode = core.json_encode, core.json_decode

local _M = {}

_M.COOKIE = "pksync_admin"
_M.SESSION_MINUTES = 480          -- a session's life
_M.LOGIN_WINDOW_MINUTES = 15      -- failed logins are counted in windows this long
_M.LOGIN_MAX_FAILURES = 5         -- per client address and window
_M.TRANSFERS_PER_PAGE = 25
local PROGRESS_EVERY_MS = 250     -- a job's progress row is written at most this often

------------------------------------------------------------------------------
-- answers

local SECURITY_HEADERS = {
  ["content-security-policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; " ..
    "base-uri 'none'; form-action 'none'",
  ["x-content-type-options"] = "nosniff",
  ["referrer-policy"] = "no-referrer",
  ["x-frame-options"] = "DENY",
  ["cache-control"] = "no-store",
}

local function answer(status, body, ctype, extra)
  local headers = { ["content-type"] = ctype }
  for k, v in pairs(SECURITY_HEADERS) do headers[k] = v end
  for k, v in pairs(extra or {}) do headers[k] = v end
  return { status = status, headers = headers, body = body }
end

local function json(status, doc, extra)
  return answer(status, json_encode(doc), "application/json; charset=utf-8", extra)
end

-- What an error code means, for codes whose detail carries no message.
local WORDS = {
  offline = "The other site could not be reached.",
  not_found = "Not found.",
  unauthorized = "The other site refused the credentials of this connection.",
  database_unavailable = "The local database is not available.",
  store_failed = "The local database refused the change.",
  invalid_response = "The other site answered something that is not a valid answer.",
  unexpected_response = "The other site answered with an unexpected status.",
  sender_not_active = "The sender's side of this connection is not active.",
  timeout = "The other site did not answer in time.",
}

--- An error in words: the detail's message, else what the code means.
local function message_of(code, detail)
  return type(detail) == "table" and type(detail.message) == "string" and detail.message
    or type(detail) == "string" and detail or WORDS[code] or tostring(code)
end

--- A failure as `{success = false, error = code, message = words}`.
local function failure(status, code, detail)
  return json(status, { success = false, error = code, message = message_of(code, detail) })
end

local function status_of(err)
  if err == "not_found" then return 404 end
  if err == "database_unavailable" then return 503 end
  if err == "store_failed" then return 500 end
  return 502
end

------------------------------------------------------------------------------
-- static files (shipped beside this module, in pksync/admin/)

local STATIC = {
  [""] = { "index.html", "text/html; charset=utf-8" },
  ["index.html"] = { "index.html", "text/html; charset=utf-8" },
  ["admin.js"] = { "admin.js", "text/javascript; charset=utf-8" },
  ["admin.css"] = { "admin.css", "text/css; charset=utf-8" },
}

local static_dir, static_cache = nil, {}

local function static_file(name)
  if static_cache[name] then return static_cache[name] end
  if not static_dir then
    local here = package.searchpath("pksync.admin", package.path)
    static_dir = here and here:gsub("admin%.lua$", "admin/")
  end
  local f = static_dir and io_open(static_dir .. name, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  static_cache[name] = data
  return data
end

------------------------------------------------------------------------------
-- request parsing

local function unescape(s)
  s = str_gsub(s, "+", " ")
  return (str_gsub(s, "%%(%x%x)", function(h) return str_char(tonumber(h, 16)) end))
end

local function parse_query(q)
  local out = {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    out[unescape(k)] = unescape(v)
  end
  return out
end

local function cookie_value(header, name)
  for pair in (header or ""):gmatch("[^;]+") do
    local k, v = pair:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
    if k == name then return v end
  end
  return nil
end

local function json_body(req)
  if not req.body or req.body == "" then return {} end
  local doc = json_decode(req.body)
  if type(doc) ~= "table" then return nil end
  return doc
end

local UUID = "^%x+%-%x+%-%x+%-%x+%-%x+$"

------------------------------------------------------------------------------
-- sessions

local function session_id_hash(sid) return core.token_hash("pksync-admin-session|" .. sid) end
local function csrf_of(sid) return core.sha256_hex("pksync-admin-csrf|" .. sid) end

local function cookie(ctx, value, max_age)
  return str_format("%s=%s; Path=%s; Max-Age=%d; HttpOnly; SameSite=Strict%s", _M.COOKIE, value,
    ctx.location, max_age, ctx.https and "; Secure" or "")
end

--- The request's session id when its session is alive, else nil.
local function current_session(client, ctx)
  local sid = cookie_value(ctx.req.headers and ctx.req.headers.cookie, _M.COOKIE)
  if not sid or not sid:match("^[%w_-]+$") or #sid > 100 then return nil end
  local s, err, detail = client:find_admin_session(session_id_hash(sid))
  if s == nil then return nil, err, detail end
  return s and sid or nil
end

local function login(client, ctx, body)
  local ip = ctx.req.remote_addr or "unknown"
  local f, err, detail = client:admin_login_failures(ip, _M.LOGIN_WINDOW_MINUTES)
  if not f then return failure(status_of(err), err, detail) end
  if f.failures >= _M.LOGIN_MAX_FAILURES then
    return json(429, { success = false, error = "too_many_attempts", retry_after = f.retry_after,
      message = str_format("Too many failed logins from this address; try again in %d minutes.",
        math_floor((f.retry_after + 59) / 60)) }, { ["retry-after"] = tostring(f.retry_after) })
  end
  local ok = client:check_admin_password(body.password)
  if ok ~= true then
    client:count_admin_login_failure(ip, _M.LOGIN_WINDOW_MINUTES)
    client:log("warn", "admin page: failed login from %s", ip)
    return failure(401, "wrong_password", "Wrong password.")
  end
  client:clear_admin_login_failures(ip)
  local sid = core.token_generate()
  local created
  created, err, detail = client:create_admin_session(session_id_hash(sid), ip, ctx.session_minutes)
  if not created then return failure(status_of(err), err, detail) end
  client:log("info", "admin page: login from %s", ip)
  return json(200, { success = true, csrf = csrf_of(sid) }, { ["set-cookie"] = cookie(ctx, sid, ctx.session_minutes * 60) })
end

local function logout(client, ctx)
  if ctx.sid then client:delete_admin_session(session_id_hash(ctx.sid)) end
  return json(200, { success = true }, { ["set-cookie"] = cookie(ctx, "", 0) })
end

------------------------------------------------------------------------------
-- views of store rows for the page (no secret, hashes cut to 8 characters)

local SECRET_COLUMNS = { auth_token_hash = true, download_password_hash = true }

local function conn_view(c)
  local v = {}
  for k, val in pairs(c) do
    if not SECRET_COLUMNS[k] then v[k] = val end
  end
  v.token_hash_prefix = type(c.auth_token_hash) == "string" and str_sub(c.auth_token_hash, 1, 8) or null
  v.download_password_set = type(c.download_password_hash) == "string"
  return v
end

local function array(t) return setmetatable(t, core.array_mt) end

------------------------------------------------------------------------------
-- API handlers: fn(client, ctx, body) -> answer[, job uuid]

local function overview(client)
  local s, err, detail = client:get_settings()
  if not s then return failure(status_of(err), err, detail) end
  local all
  all, err, detail = client:list_connections()
  if not all then return failure(status_of(err), err, detail) end
  local counts = { sender = {}, receiver = {} }
  for _, c in ipairs(all) do
    local by = counts[c.direction]
    by[c.status] = (by[c.status] or 0) + 1
  end
  return json(200, { success = true, site_url = client.site_url or s.site_url or null,
    settings = { enabled = s.enabled, incoming_mode = s.incoming_mode, password_set = s.password_set },
    counts = counts, total = #all })
end

local SETTINGS_FIELDS = { enabled = true, incoming_mode = true, incoming_password = true }

local function change_settings(client, ctx, body)
  local change = {}
  for k, v in pairs(body) do
    if not SETTINGS_FIELDS[k] then return failure(400, "invalid_request", "Unknown setting " .. tostring(k) .. ".") end
    change[k] = v
  end
  local ok, s, err, detail = pcall(client.set_settings, client, change)
  if not ok then return failure(400, "invalid_request", (tostring(s):gsub("^set_settings: ", ""))) end
  if not s then return failure(status_of(err), err, detail) end
  return overview(client)
end

local function list_connections(client, ctx)
  local q = ctx.query
  local list, err, detail = client:list_connections {
    direction = q.direction ~= "" and q.direction or nil, status = q.status ~= "" and q.status or nil }
  if not list then return failure(status_of(err), err, detail) end
  local out = {}
  for i, c in ipairs(list) do out[i] = conn_view(c) end
  return json(200, { success = true, connections = array(out) })
end

-- Fields a new sender may set from the page, by the type the JSON carries.
local CREATE_FIELDS = {
  name = "string", site_url = "string", prefix = "string", password = "string",
  allowed_tables = "table", excluded_tables = "table", ip_whitelist = "table", auto_sync_tables = "table",
  expires_at = "string", max_downloads = "number", max_records_total = "number",
  max_records_per_request = "number", rate_limit_requests_per_minute = "number",
  allowed_hours_start = "number", allowed_hours_end = "number", download_password = "string",
  auto_sync_enabled = "boolean", auto_sync_interval_minutes = "number", default_conflict_strategy = "string",
}

--- The create fields of a request body: empty values dropped, types checked.
local function create_attrs(body)
  local attrs = { direction = "sender" }
  for k, v in pairs(body) do
    local want = CREATE_FIELDS[k]
    if not want then return nil, "Unknown field " .. tostring(k) .. "." end
    if v ~= null and v ~= "" and not (type(v) == "table" and next(v) == nil) then
      if type(v) ~= want then return nil, str_format("Field %s must be a %s.", k, want) end
      if want == "number" and v ~= math_floor(v) then return nil, "Field " .. k .. " must be a whole number." end
      attrs[k] = v
    end
  end
  return attrs
end

local function registration_of(conn)
  local note = type(conn.metadata) == "table" and conn.metadata.remote_notification
  return note or null
end

local function create_connection(client, ctx, body)
  local attrs, why = create_attrs(body)
  if not attrs then return failure(400, "invalid_request", why) end
  local ok, conn, raw, detail = pcall(client.create_connection, client, attrs)
  if not ok then return failure(400, "invalid_request", (tostring(conn):gsub("^create_connection: ", ""))) end
  if not conn then return failure(raw == "already_exists" and 409 or status_of(raw), raw, detail) end
  return json(200, { success = true, connection = conn_view(conn), token = raw,
    registration = registration_of(conn) })
end

local function with_connection(fn)
  return function(client, ctx, body)
    local conn, err, detail = client:get_connection(ctx.id)
    if not conn then return failure(status_of(err), err, detail) end
    return fn(client, ctx, body, conn)
  end
end

local function reason_of(body)
  return type(body.reason) == "string" and body.reason ~= "" and body.reason or nil
end

--- A lifecycle change; `remote` is the peer's answer in a word.
local function transition(method, with_reason)
  return with_connection(function(client, _, body, conn)
    local updated, remote, detail = client[method](client, conn.uuid, with_reason and reason_of(body) or nil)
    if not updated then return failure(status_of(remote), remote, detail) end
    return json(200, { success = true, connection = conn_view(updated), remote = remote })
  end)
end

local function delete_connection(client, ctx)
  local ok, remote, detail = client:delete_connection(ctx.id)
  if not ok then return failure(status_of(remote), remote, detail) end
  return json(200, { success = true, deleted = true, remote = remote })
end

local regenerate = with_connection(function(client, _, body, conn)
  -- the token is the sender's to give: a receiver's new hash would match nothing
  if conn.direction ~= "sender" then
    return failure(400, "not_a_sender", "Only the sending side gives out tokens; regenerate it there.")
  end
  local password = type(body.password) == "string" and body.password ~= "" and body.password or nil
  local updated, raw, detail = client:regenerate_token(conn.uuid, { password = password })
  if not updated then return failure(status_of(raw), raw, detail) end
  return json(200, { success = true, connection = conn_view(updated), token = raw,
    registration = registration_of(updated) })
end)

--- A live look at the remote side: the site's status and what it says of
-- this connection.
local check = with_connection(function(client, _, _, conn)
  local prefix = not util.is_null(conn.prefix) and conn.prefix or nil
  local site, serr, sdetail = client:check_remote_status(conn.site_url, { prefix = prefix, timeout = 10000 })
  local out = { success = true }
  out.site = site or { error = serr, message = message_of(serr, sdetail) }
  local state, err, detail
  if conn.direction == "sender" then
    state, err, detail = client:verify_connection(conn, { timeout = 10000 })
  else
    state, err, detail = client:query_sender_status(conn, { timeout = 10000 })
  end
  out.connection = state or message_of(err, detail)
  out.reachable = state ~= nil and state ~= "offline"
  return json(200, out)
end)

--- The sender's tables beside the local ones (rows, size, checksum state)
-- and each table's parents (the sender's and the local foreign keys).
local tables = with_connection(function(client, _, _, conn)
  if conn.direction ~= "receiver" then
    return failure(400, "not_a_receiver", "This site sends on this connection; sync from the receiving site.")
  end
  local list, err, detail = client:fetch_sender_tables(conn, { timeout = 20000 })
  if not list then return failure(status_of(err), err, detail) end
  local db
  db, err, detail = client:database()
  if not db then return failure(status_of(err), err, detail) end
  local deps = catalog.dependencies(db, client.schema) or {}
  local out = {}
  for i, t in ipairs(list) do
    local state, loc = client:table_state(t.name, t)
    local parents, seen = {}, {}
    for _, src in ipairs { t.depends_on or {}, deps[t.name] or {} } do
      for _, p in ipairs(src) do
        if not seen[p] and p ~= t.name then seen[p] = true parents[#parents + 1] = p end
      end
    end
    out[i] = { name = t.name, remote = { row_count = t.row_count, size_bytes = t.size_bytes, checksum = t.checksum },
      ["local"] = loc or null, state = state or "unknown", parents = array(parents) }
  end
  return json(200, { success = true, tables = array(out),
    default_strategy = conn.default_conflict_strategy })
end)

--- Check the sync request: tables (names), strategies (name -> strategy), dry_run.
local function sync_params(body)
  if type(body.tables) ~= "table" or not body.tables[1] then return nil, "Choose at least one table." end
  local names = {}
  for i, n in ipairs(body.tables) do
    if type(n) ~= "string" or not util.valid_ident(n) then return nil, "Table names must be identifiers." end
    names[i] = n
  end
  local strategies = {}
  for k, v in pairs(type(body.strategies) == "table" and body.strategies or {}) do
    -- custom needs a resolve hook, which a page cannot give
    if type(k) ~= "string" or not plan.STRATEGIES[v] or v == "custom" then
      return nil, "A strategy is skip, overwrite, merge or append."
    end
    strategies[k] = v
  end
  return { tables = array(names), strategies = strategies, dry_run = body.dry_run == true }
end

local start_sync = with_connection(function(client, _, body, conn)
  if conn.direction ~= "receiver" then
    return failure(400, "not_a_receiver", "This site sends on this connection; sync from the receiving site.")
  end
  local params, why = sync_params(body)
  if not params then return failure(400, "invalid_request", why) end
  local job, err, detail = client:create_admin_job(conn.uuid, params)
  if not job then return failure(status_of(err), err, detail) end
  return json(202, { success = true, job = job }), job.uuid
end)

local function get_job(client, ctx)
  local job, err, detail = client:get_admin_job(ctx.id)
  if not job then return failure(status_of(err), err, detail) end
  return json(200, { success = true, job = job })
end

local TRANSFER_DIRECTIONS = { send = true, receive = true }
local TRANSFER_STATUSES = { pending = true, in_progress = true, completed = true, failed = true, cancelled = true }

local function list_transfers(client, ctx)
  local q = ctx.query
  local page = math_floor(tonumber(q.page) or 1)
  if page < 1 then page = 1 end
  local per = _M.TRANSFERS_PER_PAGE
  local filter = { limit = per + 1, offset = (page - 1) * per,
    direction = TRANSFER_DIRECTIONS[q.direction] and q.direction or nil,
    status = TRANSFER_STATUSES[q.status] and q.status or nil,
    connection_uuid = (q.connection or ""):match(UUID) and q.connection or nil }
  local list, err, detail = client:list_transfers(filter)
  if not list then return failure(status_of(err), err, detail) end
  local has_more = #list > per
  list[per + 1] = nil
  return json(200, { success = true, transfers = list, page = page, per_page = per, has_more = has_more })
end

local function get_transfer(client, ctx)
  local t, err, detail = client:get_transfer(ctx.id)
  if not t then return failure(status_of(err), err, detail) end
  return json(200, { success = true, transfer = t })
end

--- The scheduled sync of the receiver connections: next due, last result,
-- failures (the store's schedule view, without the sender connections).
local SCHEDULE_FIELDS = { "uuid", "name", "status", "site_url", "auto_sync_enabled", "auto_sync_tables",
  "auto_sync_interval_minutes", "next_due_at", "due", "last_auto_sync_at", "last_auto_sync_status",
  "last_auto_sync_error", "last_auto_sync_rows", "last_auto_sync_success_at", "auto_sync_failures", "rows_pulled" }

local function schedule(client)
  local state, err, detail = client:schedule_state()
  if not state then return failure(status_of(err), err, detail) end
  local out = {}
  for _, c in ipairs(state) do
    if c.direction == "receiver" then
      local row = {}
      for _, k in ipairs(SCHEDULE_FIELDS) do row[k] = c[k] end
      out[#out + 1] = row
    end
  end
  return json(200, { success = true, connections = array(out) })
end

-- method, path pattern (captures the id), handler; `open`: no session needed.
local ROUTES = {
  { "POST", "^login$", login, open = true },
  { "GET", "^session$", function(_, ctx) return json(200, { success = true, csrf = csrf_of(ctx.sid) }) end },
  { "POST", "^logout$", logout },
  { "GET", "^overview$", overview },
  { "POST", "^settings$", change_settings },
  { "GET", "^connections$", list_connections },
  { "POST", "^connections$", create_connection },
  { "POST", "^connections/([^/]+)/approve$", transition("approve_connection") },
  { "POST", "^connections/([^/]+)/suspend$", transition("suspend_connection", true) },
  { "POST", "^connections/([^/]+)/reactivate$", transition("reactivate_connection") },
  { "POST", "^connections/([^/]+)/revoke$", transition("revoke_connection", true) },
  { "POST", "^connections/([^/]+)/regenerate$", regenerate },
  { "POST", "^connections/([^/]+)/delete$", delete_connection },
  { "POST", "^connections/([^/]+)/check$", check },
  { "GET", "^connections/([^/]+)/tables$", tables },
  { "POST", "^connections/([^/]+)/sync$", start_sync },
  { "GET", "^jobs/([^/]+)$", get_job },
  { "GET", "^schedule$", schedule },
  { "GET", "^transfers$", list_transfers },
  { "GET", "^transfers/([^/]+)$", get_transfer },
}

local function route(rel, method)
  local path_matched = false
  for _, r in ipairs(ROUTES) do
    local m = str_match(rel, r[2])
    if m then
      path_matched = true
      if r[1] == method then return r, m ~= rel and m or nil end
    end
  end
  return nil, path_matched
end

local function api(client, ctx, rel)
  local r, id = route(rel, ctx.req.method)
  if not r then
    return id and failure(405, "method_not_allowed", "Method not allowed.") or failure(404, "not_found", "No such page.")
  end
  local body = json_body(ctx.req)
  if not body then return failure(400, "invalid_request", "The request body is not a JSON object.") end
  if not r.open then
    local sid, err, detail = current_session(client, ctx)
    if not sid then
      if err then return failure(status_of(err), err, detail) end
      return failure(401, "not_logged_in", "Not logged in, or the session has expired.")
    end
    ctx.sid = sid
    if ctx.req.method ~= "GET" then
      local given = ctx.req.headers and ctx.req.headers["x-csrf-token"]
      if type(given) ~= "string" or not core.secure_equals(given, csrf_of(sid)) then
        return failure(403, "bad_csrf_token", "The page's security token is missing or wrong; reload the page.")
      end
    end
  end
  ctx.id = id
  return r[3](client, ctx, body)
end

local function not_found()
  return answer(404, "Not found\n", "text/plain; charset=utf-8")
end

--- The page is on once an admin password is set; a database that is
-- not there says so, a missing store is just "off".
local function page_enabled(client)
  local s, err = client:get_settings()
  if s then return s.admin_password_set end
  if err == "database_unavailable" or err == "no_database" then return nil, err end
  return false
end

local function dispatch(client, req, opts)
  local location = opts.location or "/pksync/admin/"
  if str_sub(req.path, 1, #location) ~= location then return not_found() end
  local on, err = page_enabled(client)
  if on == nil then return failure(503, err, WORDS.database_unavailable) end
  if not on then return not_found() end
  local rel = str_sub(req.path, #location + 1)
  -- behind a proxy that ends TLS, nginx's scheme is http: secure_cookie says so
  local ctx = { req = req, location = location, https = req.scheme == "https" or opts.secure_cookie == true,
    query = parse_query(req.query),
    session_minutes = opts.session_minutes or _M.SESSION_MINUTES }
  local api_rel = str_match(rel, "^api/(.*)$")
  if api_rel then return api(client, ctx, api_rel) end
  local file = STATIC[rel]
  if not file or req.method ~= "GET" and req.method ~= "HEAD" then return not_found() end
  local data = static_file(file[1])
  if not data then return failure(500, "missing_file", "The admin page's files are not installed.") end
  return answer(200, data, file[2])
end

--- Answer one request under the admin page's location.
-- @param client a pksync client (with `db`)
-- @param req `{method=, path=, query= (raw query string), headers= (lowercase
--   names), body=, remote_addr=, scheme=}`
-- @param opts `location` (default "/pksync/admin/"), `session_minutes`,
--   `secure_cookie` (true: mark the cookie Secure even when the request came
--   as http, e.g. from a proxy that ended TLS)
-- @return `{status=, headers=, body=}`, and the uuid of a sync job to run
--   (`run_job`) when the request started one
function _M.handle(client, req, opts)
  local ok, res, job = pcall(dispatch, client, req, opts or {})
  if ok then return res, job end
  client:log("error", "admin page: %s failed: %s", util.display(req.path), tostring(res))
  return failure(500, "internal_error", "Something went wrong on this site; its error log has the details.")
end

------------------------------------------------------------------------------
-- sync jobs

--- The per-table progress a job shows, from pull_tables' events.
local function progress_entry(e)
  return { rows = e.rows or 0, row_count = e.row_count or null, done = e.done == true, seconds = e.seconds or 0,
    imported = e.imported or 0, updated = e.updated or 0, failed = e.failed or 0 }
end

--- The site's policy with the page's strategies on top: its other hooks
-- (transforms, resolve, ...) still apply, and its own strategy hook decides
-- the tables the page left open.
local function page_policy(base, strategies)
  local policy = {}
  for k, v in pairs(base or {}) do policy[k] = v end
  local own = policy.strategy
  policy.strategy = function(name, conn)
    if strategies[name] then return strategies[name] end
    if own then return own(name, conn) end
    return nil
  end
  return policy
end

local function sync_options(client, job, progress, writer)
  local strategies = job.params.strategies or {}
  local last = 0
  local opts = { tables = job.params.tables, dry_run = job.params.dry_run == true }
  if next(strategies) then opts.policy = page_policy(client.policy, strategies) end
  opts.on_progress = function(e)
    progress[e.table] = progress_entry(e)
    local t = core.monotonic_ms()
    if e.done or t - last >= PROGRESS_EVERY_MS then
      last = t
      writer:update_admin_job(job.uuid, { progress = progress })
    end
  end
  return opts
end

--- Run a queued sync job to its end (blocking: a pool thread or a timer's).
-- @param client the client that pulls (its database handle runs the import)
-- @param writer a second client on the same store, for progress and the report
-- @param uuid the job
-- @return true, or nil, err
function _M.run_job(client, writer, uuid)
  local job, err, detail = writer:get_admin_job(uuid)
  if not job then return nil, err, detail end
  if job.status ~= "queued" then return nil, "not_queued" end
  local conn
  conn, err, detail = client:get_connection(job.connection_uuid)
  if not conn then
    writer:update_admin_job(uuid, { status = "failed", error = message_of(err, detail) })
    return nil, err
  end
  local progress = {}
  for _, name in ipairs(job.params.tables) do progress[name] = { rows = 0, done = false, waiting = true } end
  writer:update_admin_job(uuid, { status = "running", progress = progress })
  local ok, report
  ok, report, err, detail = pcall(client.sync_connection, client, conn, sync_options(client, job, progress, writer))
  if not ok then
    client:log("error", "admin sync job %s failed: %s", uuid, tostring(report))
    report, err, detail = nil, "internal_error", "The sync stopped on an internal error; see the error log."
  end
  if not report then
    writer:update_admin_job(uuid, { status = "failed", progress = progress, error = message_of(err, detail) })
    return nil, err
  end
  -- tables the sync found unchanged (or that failed) had no progress events
  for _, e in ipairs(report.tables) do
    local p = progress[e.name] or {}
    p.done, p.waiting, p.action = true, nil, e.action
    p.rows = p.rows or e.transferred or 0
    progress[e.name] = p
  end
  writer:update_admin_job(uuid, { status = "done", progress = progress, report = report })
  return true
end

return _M
