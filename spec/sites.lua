-- spec/sites.lua: two linked pksync sites for the runner, policy and CLI
-- specs. A serves the sample shop (examples/sample_*.sql) from nginx; B has
-- the same schema, empty, and a receiver connection to A.
local helper = require "helper"
local pksync = require "pksync"

local _M = {}

local function sample_sql(name)
  return assert(helper.read_file(helper.repo .. "/examples/" .. name))
end

--- Start nginx serving the pksync API of database `conninfo`. opts: name,
-- port (default a free one), tls ({cert, key}: https), policy_file.
-- Returns the helper.start_nginx server; its url is the site's URL.
function _M.serve(conninfo, opts)
  opts = opts or {}
  local port = opts.port or helper.free_port()
  local url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. port
  local policy = opts.policy_file and (", policy_file = %q"):format(opts.policy_file) or ""
  return helper.start_nginx { name = opts.name or "site", port = port, tls = opts.tls, server = ([[
    location /phoenix_kit/sync/api/ {
      content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q %s } }
    }]]):format(conninfo, url, policy) }
end

--- Start nginx serving both the pksync API and the admin page (at
-- /pksync/admin/) of database `conninfo`; opts as `serve` (name, port).
-- The returned server also has `admin` (the page's URL).
function _M.serve_with_admin(conninfo, opts)
  opts = opts or {}
  local port = opts.port or helper.free_port()
  local url = "http://127.0.0.1:" .. port
  local srv = helper.start_nginx { name = opts.name or "site", port = port, server = ([[
    location /phoenix_kit/sync/api/ {
      content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q } }
    }
    location /pksync/admin/ {
      content_by_lua_block {
        require("pksync.nginx").admin { db = %q, site_url = %q, location = "/pksync/admin/" }
      }
    }]]):format(conninfo, url, conninfo, url) }
  srv.admin = url .. "/pksync/admin/"
  return srv
end

--- Two sites on loopback, each serving the API and the admin page: A
-- holds the sample shop, B its empty schema; both enabled, B approves
-- incoming connections by hand. No connection exists yet. Each site is
-- `{dbname, conninfo, url, srv, client, sql}`; stop with `stop_admin_pair`.
function _M.start_admin_pair()
  local pair = {}
  for _, name in ipairs { "a", "b" } do
    local site = {}
    site.dbname, site.conninfo = helper.create_database("admin_" .. name)
    helper.psql(site.dbname, sample_sql("sample_schema.sql"))
    if name == "a" then helper.psql(site.dbname, sample_sql("sample_data.sql")) end
    site.srv = _M.serve_with_admin(site.conninfo, { name = "admin-" .. name })
    site.url = site.srv.url
    site.client = pksync.new { db = site.conninfo, site_url = site.url }
    assert(site.client:migrate())
    assert(site.client:set_settings { enabled = true,
      incoming_mode = name == "a" and "auto_accept" or "require_approval" })
    site.sql = function(q) return helper.psql(site.dbname, q) end
    pair[name] = site
  end
  return pair.a, pair.b
end

function _M.stop_admin_pair(a, b)
  for _, site in ipairs { a, b } do
    site.srv.stop()
    site.client:close()
    helper.drop_database(site.dbname)
  end
end

--- Start the pair. opts.a_policy: a policy file served by A's nginx;
-- opts.tls: A serves https with this {cert, key} (helper.start_nginx);
-- opts.b_options: more pksync.new options for B's client (e.g. ca_file).
function _M.start(opts)
  opts = opts or {}
  local a, b = {}, {}
  a.dbname, a.conninfo = helper.create_database("site_a")
  b.dbname, b.conninfo = helper.create_database("site_b")
  helper.psql(a.dbname, sample_sql("sample_schema.sql"))
  helper.psql(a.dbname, sample_sql("sample_data.sql"))
  helper.psql(b.dbname, sample_sql("sample_schema.sql"))
  a.port = helper.free_port()
  a.url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. a.port
  local site = pksync.new { db = a.conninfo, site_url = a.url }
  assert(site:migrate())
  assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
  local sender, raw = assert(site:create_connection { name = "A to B", direction = "sender",
    site_url = "https://b.example", notify = false, rate_limit_requests_per_minute = 0 })
  site:close()
  a.srv = _M.serve(a.conninfo, { name = "site-a", port = a.port, tls = opts.tls, policy_file = opts.a_policy })
  a.client = pksync.new { db = a.conninfo, site_url = a.url }
  a.sender = sender
  local b_options = { db = b.conninfo, site_url = "https://b.example" }
  for k, v in pairs(opts.b_options or {}) do b_options[k] = v end
  b.client = pksync.new(b_options)
  assert(b.client:migrate())
  b.conn = assert(b.client:create_connection { name = "From A", direction = "receiver", site_url = a.url,
    auth_token = raw })
  a.sql = function(q) return helper.psql(a.dbname, q) end
  b.sql = function(q) return helper.psql(b.dbname, q) end
  return a, b
end

function _M.stop(a, b)
  if a.srv then a.srv.stop() end
  a.client:close()
  b.client:close()
  helper.drop_database(a.dbname)
  helper.drop_database(b.dbname)
end

_M.TABLES = { "customers", "products", "orders", "order_items", "reviews" }

--- md5 over a table's rows in a fixed text form: equal on both sides when
-- the data is.
function _M.fingerprint(site, tbl)
  return site.sql(("SET TimeZone = 'UTC'; SET extra_float_digits = 3; " ..
    "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM %s t"):format(tbl))
end

return _M
