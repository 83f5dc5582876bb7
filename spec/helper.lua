-- spec/helper.lua: real servers for the specs.
--
-- scripts/testenv.sh starts one throwaway PostgreSQL cluster per run and
-- exports PKSYNC_TEST_*; this helper creates databases in it and starts
-- nginx instances (with the lua module and the LuaJIT build of pksync) on
-- free loopback ports. Everything a spec starts it stops in teardown;
-- testenv.sh kills leftovers.
local socket = require "socket"

local helper = {}

local getenv = os.getenv
helper.repo = getenv("PKSYNC_REPO") or "."
helper.root = getenv("PKSYNC_TEST_ROOT") or "/tmp"
helper.pghost = getenv("PKSYNC_TEST_PGHOST")
helper.pgport = getenv("PKSYNC_TEST_PGPORT")
helper.runtime = getenv("PKSYNC_RUNTIME") or (jit and "jit" or "54")

local counter = 0
local function unique(prefix)
  counter = counter + 1
  return ("%s_%s_%d_%d"):format(prefix, helper.runtime, os.time() % 100000, counter)
end
helper.unique = unique

--- Sleep for a number of seconds (fractions allowed).
function helper.sleep(seconds) socket.sleep(seconds) end

--- Monotonic-enough wall clock in seconds.
function helper.now() return socket.gettime() end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helper.shell_quote = shell_quote

--- Run a shell command; return its stdout, and true when it exited 0.
function helper.run(cmd)
  local f = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = f:read("a") or f:read("*a")
  local ok = f:close()
  return out, ok == true or ok == 0
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end
helper.write_file = write_file

function helper.read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a") or f:read("*a")
  f:close()
  return s
end

--- libpq conninfo for a database of the test cluster.
function helper.conninfo(dbname)
  assert(helper.pghost, "run the specs through scripts/testenv.sh (make test)")
  return ("host=%s port=%s user=postgres dbname=%s"):format(helper.pghost, helper.pgport, dbname)
end

--- Run SQL through psql against any cluster; the unaligned output.
local function psql_at(host, port, dbname, sql)
  local cmd = ("psql -X -q -At -v ON_ERROR_STOP=1 -h %s -p %s -U postgres -d %s -c %s"):format(
    shell_quote(host), port, shell_quote(dbname), shell_quote(sql))
  local out, ok = helper.run(cmd)
  if not ok then error("psql failed: " .. out, 3) end
  return (out:gsub("\n$", ""))
end

--- Run SQL through psql; returns the unaligned output (raises on error).
function helper.psql(dbname, sql)
  return psql_at(helper.pghost, helper.pgport, dbname, sql)
end

--- Create a fresh database; returns its name and conninfo.
function helper.create_database(prefix)
  local name = unique(prefix or "db")
  helper.psql("postgres", ("CREATE DATABASE %s"):format(name))
  return name, helper.conninfo(name)
end

function helper.drop_database(name)
  helper.psql("postgres", ("DROP DATABASE IF EXISTS %s WITH (FORCE)"):format(name))
end

--- Output defaults that differ from each other and from PostgreSQL's (a
-- time zone with a 45-minute offset, German and SQL date styles, intervals
-- in SQL-standard and ISO 8601 form, few float digits, bytea in escape form).
helper.ODD_OUTPUT = {
  sender = { TimeZone = "Asia/Kathmandu", DateStyle = "German, DMY", IntervalStyle = "sql_standard",
    extra_float_digits = "-3", bytea_output = "escape" },
  receiver = { TimeZone = "America/St_Johns", DateStyle = "SQL, MDY", IntervalStyle = "iso_8601",
    extra_float_digits = "0", bytea_output = "escape" },
}

--- Make settings (name -> value) the defaults of every new session of dbname.
function helper.set_database_defaults(dbname, settings)
  for name, value in pairs(settings) do
    helper.psql("postgres", ("ALTER DATABASE %s SET %s = '%s'"):format(dbname, name, value))
  end
end

--- A sender connection on site (a pksync client) for a made-up peer: active
-- unless attrs.status says otherwise, no notification, no rate limit unless
-- attrs sets one. Returns conn, raw token.
function helper.sender_connection(site, attrs)
  attrs = attrs or {}
  attrs.name = attrs.name or "to-b"
  attrs.direction = "sender"
  attrs.site_url = "https://" .. helper.unique("peer") .. ".example"
  attrs.notify = false
  attrs.status = attrs.status or "active"
  if attrs.rate_limit_requests_per_minute == nil then attrs.rate_limit_requests_per_minute = 0 end
  return assert(site:create_connection(attrs))
end

--- A new database (with schema, when given) and a pksync.core pg handle on it.
-- @return dbname, conninfo, db
function helper.open_database(prefix, schema)
  local dbname, conninfo = helper.create_database(prefix)
  if schema then helper.psql(dbname, schema) end
  return dbname, conninfo, assert(require("pksync.core").pg_connect(conninfo))
end

--- Close the handle (if any) and drop the database of helper.open_database.
function helper.close_database(dbname, db)
  if db then db:close() end
  helper.drop_database(dbname)
end

--- A free TCP port on 127.0.0.1.
function helper.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- Wait until something accepts TCP connections on port (or time out).
function helper.wait_port(port, timeout)
  local deadline = helper.now() + (timeout or 10)
  while helper.now() < deadline do
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    if ok then return true end
    socket.sleep(0.05)
  end
  return false
end

local NGINX_TEMPLATE = [[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
%s
worker_processes %d;
daemon on;
pid logs/nginx.pid;
error_log logs/error.log %s;
thread_pool pksync threads=%d;
%s
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  lua_package_path '%s/lua/?.lua;%s/lua/?/init.lua;%s/spec/?.lua;;';
  lua_package_cpath '%s/build/jit/?.so;;';
  lua_shared_dict pksync_test 4m;
%s
  server {
    listen 127.0.0.1:%d%s;
%s
  }
}
]]

--- Start nginx. opts: name, server (location blocks), http (extra http
-- directives), main (extra main directives), workers, threads, env (table
-- of VAR=value exported to the workers), tls ({cert = PEM file, key = PEM
-- file}: the listener speaks https). Returns an object with port, url
-- (https:// with tls), prefix, stop() and error_log().
function helper.start_nginx(opts)
  opts = opts or {}
  local name = unique("nginx-" .. (opts.name or "srv"))
  local prefix = helper.root .. "/" .. name
  for _, d in ipairs { "", "/conf", "/logs", "/tmp" } do
    assert(os.execute("mkdir -p " .. shell_quote(prefix .. d)))
  end
  local port = opts.port or helper.free_port()
  local main = opts.main or ""
  for k, v in pairs(opts.env or {}) do
    main = main .. ("\nenv %s=%s;"):format(k, v)
  end
  local user = ""
  if helper.run("id -u"):match("^0") then user = "user root root;" end
  local repo = helper.repo
  local ssl, server = "", opts.server or ""
  if opts.tls then
    ssl = " ssl"
    server = ("    ssl_certificate %s;\n    ssl_certificate_key %s;\n%s"):format(
      assert(opts.tls.cert, "tls.cert"), assert(opts.tls.key, "tls.key"), server)
  end
  local conf = NGINX_TEMPLATE:format(user, opts.workers or 1, opts.log_level or "warn",
    opts.threads or 4, main, repo, repo, repo, repo, opts.http or "", port, ssl, server)
  write_file(prefix .. "/conf/nginx.conf", conf)
  local out, ok = helper.run(("nginx -p %s -c conf/nginx.conf"):format(shell_quote(prefix)))
  if not ok then error("nginx failed to start: " .. out .. "\n" .. conf) end
  assert(helper.wait_port(port, 10), "nginx did not listen on " .. port)
  local srv = { port = port, prefix = prefix, url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. port }
  function srv.error_log() return helper.read_file(prefix .. "/logs/error.log") or "" end
  function srv.stop()
    helper.run(("nginx -p %s -c conf/nginx.conf -s stop"):format(shell_quote(prefix)))
    local deadline = helper.now() + 5
    while helper.read_file(prefix .. "/logs/nginx.pid") and helper.now() < deadline do
      socket.sleep(0.02)
    end
  end
  return srv
end

--- A plain HTTP request through luasocket (independent of pksync's client).
-- @return status, body, headers
function helper.http(method, url, body, headers)
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local chunks = {}
  headers = headers or {}
  if body then
    headers["content-length"] = tostring(#body)
    headers["content-type"] = headers["content-type"] or "application/json"
  end
  local _, status, resp_headers = http.request {
    method = method, url = url, headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  }
  return status, table.concat(chunks), resp_headers
end

--- The result of a command run whose output went to BASE.out, BASE.err
-- and its exit code to BASE.rc: {out, err, code, json()}.
function helper.command_result(base)
  local r = { out = helper.read_file(base .. ".out") or "", err = helper.read_file(base .. ".err") or "",
              code = tonumber(helper.read_file(base .. ".rc")) }
  function r.json()
    local doc, err = require("pksync").json.decode(r.out)
    assert(doc ~= nil, "not JSON: " .. tostring(err) .. "\n" .. r.out .. r.err)
    return doc
  end
  return r
end

--- Assert a command_result's exit code, showing its output when it differs.
function helper.expect_exit(r, code)
  assert(r.code == code, ("exit %s, wanted %d\nstdout: %s\nstderr: %s"):format(tostring(r.code), code, r.out, r.err))
  return r
end

--- Start the scripted peer (spec/fixtures/peer.lua) in nginx.
-- The returned server has scenario(path, spec), requests(), reset().
function helper.start_peer(opts)
  local cjson = require "cjson"
  opts = opts or {}
  opts.name = opts.name or "peer"
  opts.server = [[
    location /__control/ { content_by_lua_block { require("fixtures.peer").control() } }
    location / { content_by_lua_block { require("fixtures.peer").serve() } }
]]
  local srv = helper.start_nginx(opts)
  function srv.scenario(path, spec)
    spec.path = path
    local status, body = helper.http("POST", srv.url .. "/__control/scenario", cjson.encode(spec))
    assert(status == 200, "peer scenario failed: " .. tostring(body))
  end
  function srv.requests()
    local _, body = helper.http("GET", srv.url .. "/__control/requests")
    return cjson.decode(body)
  end
  function srv.reset()
    helper.http("POST", srv.url .. "/__control/reset", "{}")
  end
  return srv
end

------------------------------------------------------------------------------
-- additions for the fault, security and load specs

--- The ids of a process's children (from /proc, no procps needed).
function helper.child_pids(pid)
  local out = {}
  for dir in helper.run("ls /proc"):gmatch("%d+") do
    local stat = helper.read_file("/proc/" .. dir .. "/stat")
    -- "pid (comm) state ppid ...": comm may hold spaces and parentheses
    local ppid = stat and stat:match("^%d+ %(.*%) %S+ (%d+)")
    if ppid == tostring(pid) then out[#out + 1] = dir end
  end
  return out
end

--- The master's and workers' ids of an nginx started by start_nginx.
function helper.nginx_pids(srv)
  local master = (helper.read_file(srv.prefix .. "/logs/nginx.pid") or ""):match("%d+")
  if not master then return {} end
  local pids = { master }
  for _, pid in ipairs(helper.child_pids(master)) do pids[#pids + 1] = pid end
  return pids
end

--- Kill an nginx started by start_nginx with SIGKILL, master and workers
-- (by their ids), as a crash would. Its pid file is removed once they are
-- gone, so no cleanup signals a process that reused the id.
function helper.kill_nginx(srv)
  local pids = helper.nginx_pids(srv)
  if #pids == 0 then return false end
  -- the master first, so it cannot start replacements for its workers
  helper.run("kill -9 " .. table.concat(pids, " "))
  local deadline = helper.now() + 5
  while helper.now() < deadline do
    local alive = false
    for _, pid in ipairs(pids) do
      local stat = helper.read_file("/proc/" .. pid .. "/stat")
      if stat and stat:match("^%d+ %(.*%) (%S)") ~= "Z" then alive = true end
    end
    if not alive then
      os.remove(srv.prefix .. "/logs/nginx.pid")
      return true
    end
    socket.sleep(0.02)
  end
  return false
end

--- md5 over a table's rows in a fixed text form (equal when the data is,
-- whatever each database's default output settings).
function helper.fingerprint(dbname, tbl, where)
  return helper.psql(dbname, ("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; " ..
    "SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; " ..
    "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM %s t%s")
    :format(tbl, where and (" WHERE " .. where) or ""))
end

--- Start a second throwaway PostgreSQL cluster (initdb + pg_ctl, as the
-- `postgres` user when root), on a private socket directory and a free
-- port. Returns {host, port, conninfo(db), psql(db, sql),
-- create_database(prefix), restart(), stop()}.
function helper.start_cluster(opts)
  opts = opts or {}
  local pgbin = helper.run("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1"):gsub("%s+$", "")
  assert(pgbin ~= "", "PostgreSQL server binaries not found")
  local dir = helper.root .. "/" .. unique("cluster")
  assert(os.execute("mkdir -p " .. shell_quote(dir .. "/sock")))
  local as_pg = ""
  if helper.run("id -u"):match("^0") then
    assert(os.execute("chown -R postgres:postgres " .. shell_quote(dir)))
    as_pg = "runuser -u postgres -- "
  end
  local port = helper.free_port()
  local out, ok = helper.run(("%s%s/initdb -D %s -U postgres --auth=trust -E UTF8 --locale=C --no-sync"):format(
    as_pg, pgbin, shell_quote(dir .. "/data")))
  if not ok then error("initdb failed: " .. out) end
  local ctl = ("%s%s/pg_ctl -D %s -l %s -w -t 60"):format(as_pg, pgbin, shell_quote(dir .. "/data"),
    shell_quote(dir .. "/server.log"))
  local options = ("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off " ..
    "-c full_page_writes=off -c max_connections=50"):format(port, dir .. "/sock")
  out, ok = helper.run(ctl .. " -o " .. shell_quote(options) .. " start")
  if not ok then error("pg_ctl start failed: " .. out .. (helper.read_file(dir .. "/server.log") or "")) end
  local c = { host = dir .. "/sock", port = port, dir = dir }
  function c.conninfo(db)
    return ("host=%s port=%d user=postgres dbname=%s"):format(c.host, port, db or "postgres")
  end
  function c.psql(db, sql)
    return psql_at(c.host, port, db, sql)
  end
  function c.create_database(prefix)
    local name = unique(prefix or "db")
    c.psql("postgres", "CREATE DATABASE " .. name)
    return name, c.conninfo(name)
  end
  --- pg_ctl restart -m fast: every session is terminated; returns when the
  -- server accepts connections again.
  function c.restart()
    local o, good = helper.run(ctl .. " -m fast restart -o " .. shell_quote(options))
    if not good then error("pg_ctl restart failed: " .. o) end
    return true
  end
  function c.stop()
    helper.run(ctl .. " -m immediate stop")
    helper.run("rm -rf " .. shell_quote(dir))
  end
  return c
end

return helper
