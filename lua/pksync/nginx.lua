--- pksync inside nginx (ngx_lua): serve the sync API and make client calls
-- without blocking the event loop.
--
-- libpq and libcurl calls block. A blocked nginx worker stalls every
-- request it holds, so all pksync work runs in an nginx thread pool through
-- `ngx.run_worker_thread`. Each pool thread has its own Lua VM, in which
-- this module keeps one client per configuration: that client's database
-- connection and HTTP keep-alive survive between requests of that thread.
--
--     thread_pool pksync threads=4;
--     location /phoenix_kit/sync/api/ {
--       content_by_lua_block {
--         require("pksync.nginx").serve { db = "postgresql:///site", site_url = "https://me.example" }
--       }
--     }
-- @module pksync.nginx
local pksync = require "pksync"

local type, pairs, ipairs, tostring, tonumber, error, pcall = type, pairs, ipairs, tostring, tonumber, error, pcall
local io_open = io.open

local _M = {}

local DEFAULT_POOL = "pksync"
local DEFAULT_MAX_REQUEST_BODY = 1024 * 1024

-- Keys of a config that are the adapter's own, not pksync.new options.
local ADAPTER_KEYS = { thread_pool = true, policy_file = true,
                       poll_ms = true, retry_base_ms = true, metrics_dict = true, -- the schedule's and metrics'
                       location = true, session_minutes = true, secure_cookie = true } -- the admin page's

------------------------------------------------------------------------------
-- worker-thread side (runs in a pool thread's own Lua VM)

local clients = {}   -- config fingerprint -> client, per thread VM (connections, not request state)

local function fingerprint(config)
  return pksync.json.encode(config, { sort_keys = true })
end

--- A policy file, loaded as everywhere else: in its own environment (its
-- globals stay out of the thread's state), unknown hook names refused.
local function load_policy(path)
  local policy, err = pksync.policy.load(path)
  if not policy then error("pksync.nginx: " .. err, 0) end
  return policy
end

local function thread_client(config, role)
  local key = fingerprint(config) .. (role or "")
  local client = clients[key]
  if client then return client end
  local opts = {}
  for k, v in pairs(config) do
    if not ADAPTER_KEYS[k] then opts[k] = v end
  end
  if config.policy_file then opts.policy = load_policy(config.policy_file) end
  client = pksync.new(opts)
  clients[key] = client
  return client
end

--- The cached client with a logger that collects this call's lines (ngx.log
-- is not available in pool threads; the lines go back to nginx).
local function client_for_call(config)
  local client = thread_client(config)
  local logs = {}
  client.logger = function(level, msg) logs[#logs + 1] = { level, msg } end
  return client, logs
end

--- (pool thread) Answer one request; returns status, headers, body, logs
-- and the endpoint's name (nil for a path that names none).
function _M.thread_handle(config, req)
  local client, logs = client_for_call(config)
  local res = client:handle(req)
  client.logger = nil
  return res.status, res.headers, res.body, logs, client:endpoint_name(req.path)
end

--- (pool thread) Run one client method; returns logs and its results.
function _M.thread_call(config, method, ...)
  local client, logs = client_for_call(config)
  local fn = client[method]
  if type(fn) ~= "function" then error("pksync.nginx.call: no client method " .. tostring(method)) end
  local a, b, c, d = fn(client, ...)
  client.logger = nil
  return logs, a, b, c, d
end

--- (pool thread) One round of the scheduled sync; returns logs and a
-- summary `{connections = {{uuid, name, outcome, error, rows}...}, counts}`
-- or nil, err, message.
function _M.thread_schedule(config)
  local client, logs = client_for_call(config)
  local ok, round, err, detail = pcall(client.run_due_connections, client, { retry_base_ms = config.retry_base_ms })
  client.logger = nil
  if not ok then return logs, nil, "internal_error", tostring(round) end
  if not round then return logs, nil, err, type(detail) == "table" and detail.message or nil end
  local summary = { connections = {}, counts = round.counts }
  for i, e in ipairs(round.connections) do
    summary.connections[i] = { uuid = e.uuid, name = e.name, outcome = e.outcome, error = e.error, rows = e.rows }
  end
  return logs, summary
end

--- (pool thread) The metrics page; returns logs, text or nil, err, message.
function _M.thread_metrics(config, requests)
  local client, logs = client_for_call(config)
  local text, err, detail = client:schedule_metrics { requests = requests }
  client.logger = nil
  return logs, text, err, type(detail) == "table" and detail.message or nil
end

--- (pool thread) Answer one request of the admin page; returns status,
-- headers, body, logs and the uuid of a sync job to start, if any.
function _M.thread_admin(config, req)
  local client, logs = client_for_call(config)
  local res, job = require("pksync.admin").handle(client, req,
    { location = config.location, session_minutes = config.session_minutes, secure_cookie = config.secure_cookie })
  client.logger = nil
  return res.status, res.headers, res.body, logs, job
end

--- (pool thread) Run an admin sync job to its end; its progress goes
-- through a second client of this thread (its own database session), so it
-- commits while the pull's transactions are open. Returns logs.
function _M.thread_admin_job(config, uuid)
  local client, logs = client_for_call(config)
  local writer = thread_client(config, "|admin-job-writer")
  local ok, err = require("pksync.admin").run_job(client, writer, uuid)
  if not ok then logs[#logs + 1] = { "warn", "admin sync job " .. uuid .. ": " .. tostring(err) } end
  client.logger = nil
  return logs
end

------------------------------------------------------------------------------
-- event-loop side

local LEVELS

local function emit_logs(logs)
  local ngx = ngx
  LEVELS = LEVELS or { error = ngx.ERR, warn = ngx.WARN, info = ngx.INFO, debug = ngx.DEBUG }
  for _, l in ipairs(logs or {}) do
    ngx.log(LEVELS[l[1]] or ngx.NOTICE, "pksync: ", l[2])
  end
end

local function send(status, headers, body)
  local ngx = ngx
  ngx.status = status
  for k, v in pairs(headers or {}) do ngx.header[k] = v end
  ngx.print(body)
  return ngx.exit(status)
end

local function json_error(status, message)
  return send(status, { ["content-type"] = "application/json; charset=utf-8" },
    pksync.json.encode { success = false, error = message })
end

local function read_file(path)
  local f = io_open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

--- The request as client:handle takes it, or nil when the body is too large.
local function read_request(max_body)
  local ngx = ngx
  local length = tonumber(ngx.var.http_content_length or "")
  if length and length > max_body then return nil end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    local file = ngx.req.get_body_file()
    body = file and read_file(file) or ""
  end
  if #body > max_body then return nil end
  local headers = {}
  for k, v in pairs(ngx.req.get_headers(100)) do
    headers[k] = type(v) == "table" and v[#v] or v
  end
  return { method = ngx.req.get_method(), path = ngx.var.uri, headers = headers, body = body,
           remote_addr = ngx.var.remote_addr }
end

--- Count a served request in the `metrics_dict` shared dict (every worker's
-- counts in one place), when the config names one.
local function count_request(config, endpoint, status)
  local name = config.metrics_dict
  if not name then return end
  local dict = ngx.shared[name]
  if not dict then return end
  dict:incr("requests|" .. (endpoint or "unknown") .. "|" .. tostring(status), 1, 0)
end

--- The counts of count_request as {{endpoint, status, n}...}, or nil.
local function request_counts(config)
  local ngx = ngx
  local dict = config.metrics_dict and ngx.shared[config.metrics_dict]
  if not dict then return nil end
  local out = {}
  for _, key in ipairs(dict:get_keys(0)) do
    local endpoint, status = key:match("^requests|([^|]+)|(%d+)$")
    if endpoint then out[#out + 1] = { endpoint = endpoint, status = status, count = dict:get(key) or 0 } end
  end
  return out
end

--- Serve the sync API for this request (content_by_lua*).
-- @param config pksync.new options that can cross into a thread (strings,
--   numbers, booleans, tables of those), plus `thread_pool` (default
--   "pksync"), `policy_file` (a Lua policy file, loaded in each thread) and
--   `metrics_dict` (a lua_shared_dict counting requests by endpoint and
--   status for `metrics`)
function _M.serve(config)
  local ngx = ngx
  local max_body = config.max_request_body or DEFAULT_MAX_REQUEST_BODY
  local req = read_request(max_body)
  if not req then return json_error(413, "Request body too large") end
  local ok, status, headers, body, logs, endpoint = ngx.run_worker_thread(config.thread_pool or DEFAULT_POOL,
    "pksync.nginx", "thread_handle", config, req)
  if not ok then
    ngx.log(ngx.ERR, "pksync: worker thread failed: ", tostring(status))
    count_request(config, nil, 500)
    return json_error(500, "Internal server error")
  end
  emit_logs(logs)
  count_request(config, endpoint, status)
  return send(status, headers, body)
end

local DEFAULT_POLL_MS = 60000

--- Run the scheduled sync in this worker (init_worker_by_lua*): every
-- `poll_ms` (default 60000, and once at start) a pool thread runs every due
-- connection once, as `pksync sync --due` does. Each worker may do so:
-- the store's claim lets exactly one runner sync a connection.
--   init_worker_by_lua_block {
--     require("pksync.nginx").schedule { db = "postgresql:///site", site_url = "https://me.example" }
--   }
-- @param config as `serve`, plus `poll_ms` and `retry_base_ms` (first
--   retry delay of an offline sender, doubled per failure; 60000)
-- @return true or nil, err (the timer could not be made)
function _M.schedule(config)
  local ngx = ngx
  local busy = false   -- this worker's round still running: skip the tick
  local function tick(premature)
    if premature or busy then return end
    busy = true
    local ok, logs, summary, err, message = ngx.run_worker_thread(config.thread_pool or DEFAULT_POOL,
      "pksync.nginx", "thread_schedule", config)
    busy = false
    if not ok then
      ngx.log(ngx.ERR, "pksync: scheduled sync thread failed: ", tostring(logs))
      return
    end
    emit_logs(logs)
    if not summary then
      ngx.log(ngx.ERR, "pksync: scheduled sync failed: ", tostring(err), message and (" (" .. message .. ")") or "")
    end
  end
  local ok, err = ngx.timer.every((config.poll_ms or DEFAULT_POLL_MS) / 1000, tick)
  if not ok then return nil, err end
  ngx.timer.at(0, tick)
  return true
end

--- Serve the scheduled sync's metrics in Prometheus' text format
-- (content_by_lua*), at a location of the user's choosing; with
-- `metrics_dict` (the same as `serve`'s), also the requests served.
--   location = /metrics { content_by_lua_block { require("pksync.nginx").metrics { db = "..." } } }
function _M.metrics(config)
  local ngx = ngx
  local ok, logs, text, err, message = ngx.run_worker_thread(config.thread_pool or DEFAULT_POOL,
    "pksync.nginx", "thread_metrics", config, request_counts(config))
  if not ok then
    ngx.log(ngx.ERR, "pksync: worker thread failed: ", tostring(logs))
    return send(500, { ["content-type"] = "text/plain" }, "metrics unavailable\n")
  end
  emit_logs(logs)
  if not text then
    ngx.log(ngx.ERR, "pksync: metrics failed: ", tostring(err), message and (" (" .. message .. ")") or "")
    return send(503, { ["content-type"] = "text/plain" }, "metrics unavailable\n")
  end
  return send(200, { ["content-type"] = "text/plain; version=0.0.4; charset=utf-8" }, text)
end

local function run_admin_job(premature, config, uuid)
  if premature then return end
  local ok, logs = ngx.run_worker_thread(config.thread_pool or DEFAULT_POOL,
    "pksync.nginx", "thread_admin_job", config, uuid)
  if not ok then
    ngx.log(ngx.ERR, "pksync: admin sync job thread failed: ", tostring(logs))
    return
  end
  emit_logs(logs)
end

--- Serve the admin page and its JSON API for this request (content_by_lua*).
--     location /pksync/admin/ {
--       content_by_lua_block {
--         require("pksync.nginx").admin { db = "postgresql:///site", site_url = "https://me.example",
--                                         location = "/pksync/admin/" }
--       }
--     }
-- Off (404) until `pksync settings --admin-password` has set a password.
-- A sync started from the page runs in a pool thread started by a timer.
-- @param config as for `serve`, plus `location` (the nginx location, with
--   its trailing slash; default "/pksync/admin/"), `session_minutes` and
--   `secure_cookie` (a Secure cookie behind a proxy that ends TLS)
function _M.admin(config)
  local ngx = ngx
  local req = read_request(config.max_request_body or DEFAULT_MAX_REQUEST_BODY)
  if not req then return json_error(413, "Request body too large") end
  req.scheme, req.query = ngx.var.scheme, ngx.var.args
  local ok, status, headers, body, logs, job = ngx.run_worker_thread(config.thread_pool or DEFAULT_POOL,
    "pksync.nginx", "thread_admin", config, req)
  if not ok then
    ngx.log(ngx.ERR, "pksync: worker thread failed: ", tostring(status))
    return json_error(500, "Internal server error")
  end
  emit_logs(logs)
  if job then
    local started, err = ngx.timer.at(0, run_admin_job, config, job)
    if not started then ngx.log(ngx.ERR, "pksync: cannot start the admin sync job: ", tostring(err)) end
  end
  return send(status, headers, body)
end

--- Call a client method off the event loop (handlers and timers).
--   local st = require("pksync.nginx").call(config, "query_sender_status", conn)
-- Arguments and results must be plain data (no functions).
-- @return the method's results, or nil, "thread_error", {message=} when the
--   thread could not run it
function _M.call(config, method, ...)
  local ngx = ngx
  local ok, logs, a, b, c, d = ngx.run_worker_thread(config.thread_pool or DEFAULT_POOL,
    "pksync.nginx", "thread_call", config, method, ...)
  if not ok then return nil, "thread_error", { message = tostring(logs) } end
  emit_logs(logs)
  return a, b, c, d
end

return _M
