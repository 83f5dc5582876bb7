--- pksync: the PhoenixKit Sync cross-site protocol for Lua.
--
--     local pksync = require "pksync"
--     local client = pksync.new{ site_url = "https://me.example" }
--     local tables, err = client:fetch_sender_tables(conn)
--
-- The client object gathers the methods of the modules listed in
-- `MODULES`; each module holds one concern (notifier, store, server, ...).
-- @module pksync
local core = require "pksync.core"
local util = require "pksync.util"
local store_ddl = require "pksync.store_ddl"
local transport = require "pksync.transport"

local type, pairs, ipairs, error, pcall, setmetatable, tostring =
  type, pairs, ipairs, error, pcall, setmetatable, tostring
local str_format, str_match = string.format, string.match

local _M = {
  _VERSION = core.version,
  --- JSON null / SQL NULL sentinel (equals cjson.null and ngx.null).
  null = core.null,
  --- Make an exact decimal from its JSON number text.
  decimal = core.decimal,
  --- True for exact decimals made by `decimal` or by the JSON decoder.
  is_decimal = core.is_decimal,
  --- Metatable marking a table as a JSON array (so `{}` encodes as `[]`).
  array_mt = core.array_mt,
  --- Exact JSON: `json.decode(s)`, `json.encode(v [, {sort_keys=true}])`.
  json = { decode = core.json_decode, encode = core.json_encode },
  --- Policies: `policy.load(table_or_path)`.
  policy = require "pksync.policy",
  --- Tokens: `generate()`, `hash(token)`, `equals(a, b)` (constant time).
  token = { generate = core.token_generate, hash = core.token_hash, equals = core.secure_equals },
}

--- Mark t (default: a new table) as a JSON array.
function _M.array(t)
  return setmetatable(t or {}, core.array_mt)
end

local Client = {}
local client_mt = { __index = Client, __name = "pksync.client" }

-- Each module returns a table of methods; a later module may not
-- silently replace an earlier one's method.
local MODULES = { "pksync.notifier", "pksync.store", "pksync.server", "pksync.pull", "pksync.sync",
                  "pksync.schedule" }
for _, name in ipairs(MODULES) do
  for k, fn in pairs(require(name)) do
    if type(fn) == "function" and k:sub(1, 1) ~= "_" then
      if Client[k] then error("pksync: method " .. k .. " defined twice") end
      Client[k] = fn
    end
  end
end

local DEFAULTS = {
  prefix = "/phoenix_kit",
  timeout = 30000,
  connect_timeout = 10000,
  pull_timeout = 60000,
  max_body = 256 * 1024 * 1024,
  insecure = false,
  schema = "public",
  require_tls = true,
  lock_timeout = 60000,
}

local OPTION_TYPES = {
  site_url = "string", prefix = "string", timeout = "number", connect_timeout = "number",
  pull_timeout = "number", ca_file = "string", insecure = "boolean", logger = "function",
  db = "string", max_body = "number", schema = "string", store_tables = "table",
  max_request_body = "number", policy = "table", extensions = "boolean",
  require_tls = "boolean", lock_timeout = "number", digest_max_rows = "number",
}

local function check_options(opts)
  for k, v in pairs(opts) do
    local want = OPTION_TYPES[k]
    if not want then error(str_format("pksync.new: unknown option %q", tostring(k)), 3) end
    if type(v) ~= want then
      error(str_format("pksync.new: option %s must be a %s, got %s", k, want, type(v)), 3)
    end
  end
  if opts.policy then
    local ok, err = _M.policy.load(opts.policy)
    if not ok then error("pksync.new: " .. err, 3) end
  end
  if opts.site_url and not str_match(opts.site_url, "^https?://[^/]") then
    error("pksync.new: site_url must be an http(s) URL", 3)
  end
  for _, k in ipairs { "timeout", "connect_timeout", "pull_timeout", "max_body" } do
    if opts[k] and opts[k] <= 0 then error("pksync.new: " .. k .. " must be positive", 3) end
  end
end

--- Create a client.
-- @tparam table opts `site_url` (our public URL), `prefix` ("/phoenix_kit"),
--   `timeout` (ms, 30000), `connect_timeout` (ms, 10000), `pull_timeout`
--   (ms, 60000), `ca_file`, `insecure` (false), `logger(level, msg)`,
--   `db` (libpq conninfo of the local database), `max_body` (bytes),
--   `require_tls` (true: never send a token or hash over plain http except
--   to loopback), `lock_timeout` (ms an import waits for a table lock, 60000),
--   `policy` (hooks), `schema` ("public"), `store_tables`, `extensions`,
--   `max_request_body` (bytes, serving side), `digest_max_rows` (rows one
--   table-digest request may scan, 100000).
-- @return the client; raises on invalid options
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("pksync.new: options must be a table", 2) end
  check_options(opts)
  local self = {}
  for k, v in pairs(DEFAULTS) do self[k] = v end
  for k, v in pairs(opts) do self[k] = v end
  self.prefix = util.normalize_prefix(self.prefix)
  self.store_tables = store_ddl.table_names(opts.store_tables)
  self._peer_features = {}
  return setmetatable(self, client_mt)
end

-- The client owns its handles and caches; the modules reach them only
-- through the methods below.

local FEATURE_TTL_MS = 60000

--- One HTTP handle from the client's options (every handle the client makes).
local function new_http(self)
  return core.http_new {
    timeout = self.timeout, connect_timeout = self.connect_timeout,
    ca_file = self.ca_file, insecure = self.insecure, max_body = self.max_body,
    user_agent = transport.USER_AGENT,
  }
end

--- The handle kept in `field`, made on first use and reused (keep-alive).
local function kept_http(self, field)
  local h = self[field]
  if not h then
    h = new_http(self)
    self[field] = h
  end
  return h
end

--- The client's HTTP handle.
function Client:http()
  return kept_http(self, "_http")
end

--- A second HTTP handle, for the importer's prefetch thread only (it
-- fetches the next page while the first handle's page is imported).
function Client:prefetch_http()
  return kept_http(self, "_prefetch_http")
end

--- The pksync features a peer offers (GET status: `pksync.features`), as a
-- set; cached a minute per site and prefix. A plain PhoenixKit peer, or
-- one that cannot be reached, offers none.
function Client:peer_features(conn)
  local prefix = conn.prefix
  if util.is_null(prefix) then prefix = nil end
  local key = conn.site_url .. "|" .. tostring(prefix)
  local cached = self._peer_features[key]
  if cached and core.monotonic_ms() - cached.at < FEATURE_TTL_MS then return cached.set end
  local set = {}
  local st = self:check_remote_status(conn.site_url, { prefix = prefix })
  if st and type(st.pksync) == "table" and type(st.pksync.features) == "table" then
    for _, f in ipairs(st.pksync.features) do set[f] = true end
  end
  self._peer_features[key] = { at = core.monotonic_ms(), set = set }
  return set
end

--- The client's database handle (connected on first use).
-- @return handle, or nil, err when there is no `db` option or no connection
function Client:database()
  local db = self._db
  if db and db:is_open() then return db end
  if not self.db then return nil, "no_database", { message = "pksync.new was given no db" } end
  if db then db:close() end
  local err
  db, err = core.pg_connect(self.db)
  if not db then
    return nil, "database_unavailable", { message = err }
  end
  -- Every value this session reads (store timestamps, local rows handed to
  -- hooks) prints exactly and the same way whatever the server's defaults.
  local ok, serr = db:exec(core.pg_exact_output.session)
  if not ok then
    db:close()
    return nil, "database_unavailable", { message = serr }
  end
  self._db = db
  return db
end

--- Log through the user's logger; a failing logger never breaks a call.
-- Messages must already be free of secrets (see util.redact).
function Client:log(level, fmt, ...)
  local logger = self.logger
  if not logger then return end
  local ok, msg = pcall(str_format, fmt, ...)
  if not ok then msg = fmt end
  pcall(logger, level, msg)
end

--- True when the database handle was open and has died since (the
-- server restarted): the next `database()` call reconnects.
function Client:database_lost()
  return self._db ~= nil and not self._db:is_open()
end

--- Close the HTTP and database handles and forget cached peer facts (the
-- client may be used again: everything reopens on demand).
function Client:close()
  if self._http then self._http:close() self._http = nil end
  if self._prefetch_http then self._prefetch_http:close() self._prefetch_http = nil end
  if self._db then self._db:close() self._db = nil end
  self._peer_features = {}
end

_M.Client = Client
return _M
