-- scripts/load.lua N: a bounded load test (`make load`, LOAD_RECEIVERS=N).
--
-- One nginx sender (a pksync site, 2 workers, a thread pool) serves a table
-- of 50,000 rows; N receivers, each a separate Lua process with its own
-- database, pull it concurrently with pull_table_data and a page size that
-- makes many requests. Reported: requests/s, rows/s, page latency p50/p99
-- (the time between two on_progress events of a receiver: one request and
-- its import), errors. Afterwards: nginx still answers GET status,
-- PostgreSQL still accepts connections, every receiver holds exactly the
-- sender's rows (count and md5, in SQL), and the sender's counters add up.
-- Everything started is stopped; the exit status is 0 only when all holds.
--
-- Run through scripts/testenv.sh (the throwaway PostgreSQL cluster):
--   scripts/testenv.sh lua5.4 scripts/load.lua 8 [--rows 50000] [--page-size 500]
--     [--workers 2] [--threads 8] [--json]
-- spec/load_spec.lua runs a small version through M.run.
local repo = os.getenv("PKSYNC_REPO") or "."
local runtime = jit and "jit" or "54"
package.path = repo .. "/lua/?.lua;" .. repo .. "/lua/?/init.lua;" .. repo .. "/spec/?.lua;" .. package.path

local M = {}

local INTERPRETER = { ["54"] = "lua5.4", jit = "luajit" }

local function build_dir(rt)
  return os.getenv(rt == "jit" and "PKSYNC_BUILD_JIT" or "PKSYNC_BUILD_54") or (repo .. "/build/" .. rt)
end

local DDL = [[
CREATE TABLE load_items (id bigint PRIMARY KEY, sku text NOT NULL, name text, price numeric(12,2),
  qty integer, active boolean, created_at timestamptz, tags text[], payload jsonb)]]

local FILL = [[
INSERT INTO load_items SELECT g, 'SKU-' || lpad(g::text, 8, '0'), 'Item ' || g || ' ' || md5(g::text),
  (g %% 10000) * 1.25, g %% 97, g %% 3 <> 0, '2025-01-01 00:00:00+00'::timestamptz + g * interval '37 seconds',
  ARRAY['t' || (g %% 7), 'tag, "q"' || (g %% 3)], jsonb_build_object('n', g, 'big', 9007199254740993 + g, 'ok', g %% 2 = 0)
FROM generate_series(1, %d) g]]

local SUM = "SET TimeZone = 'UTC'; SET extra_float_digits = 3; " ..
  "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY id), '')) FROM load_items t"

------------------------------------------------------------------------------
-- receiver process: one pull, one JSON line on stdout

local function receiver(spec_json)
  local pksync = require "pksync"
  local core = require "pksync.core"
  local spec = pksync.json.decode(spec_json)
  local out = { ok = false, latencies = pksync.array() }
  local client = pksync.new { db = spec.conninfo, site_url = "https://receiver.example", timeout = 60000 }
  local conn = { site_url = spec.url, auth_token_hash = spec.hash }
  local t0 = core.monotonic_ms()
  local last = t0
  local ok, r, err, detail = pcall(client.pull_table_data, client, conn, "load_items", {
    page_size = spec.page_size,
    on_progress = function()
      local t = core.monotonic_ms()
      out.latencies[#out.latencies + 1] = t - last
      last = t
    end })
  out.seconds = (core.monotonic_ms() - t0) / 1000
  if not ok then
    out.err = "raised: " .. tostring(r)
  elseif not r then
    out.err = tostring(err) .. (detail and detail.message and (": " .. tostring(detail.message)) or "")
  else
    out.ok = true
    out.rows, out.pages, out.imported, out.failed = r.records_transferred, r.pages, r.records_imported,
      r.records_failed
  end
  client:close()
  io.write(pksync.json.encode(out), "\n")
  return out.ok
end

------------------------------------------------------------------------------
-- the run

local function percentile(sorted, q)
  if #sorted == 0 then return 0 end
  local i = math.ceil(q * #sorted)
  if i < 1 then i = 1 end
  return sorted[i]
end

--- Run the load test.
-- @param opts receivers (8), rows (50000), page_size (500), workers (2),
--   threads (8), runtime ("54" or "jit": the receivers' interpreter and
--   build), keep (leave databases and nginx for the caller: report.cleanup()),
--   say (function(line) for progress)
-- @return report {receivers, rows, page_size, results, errors, requests,
--   pages, seconds, rps, rows_per_second, p50_ms, p99_ms, max_ms, checks =
--   {status, postgres, matches, counters}, sender, receivers_db, cleanup}
function M.run(opts)
  opts = opts or {}
  local helper = require "helper"
  local pksync = require "pksync"
  local json = pksync.json
  local say = opts.say or function() end
  local n, rows = opts.receivers or 8, opts.rows or 50000
  local page_size, workers, threads = opts.page_size or 500, opts.workers or 2, opts.threads or 8
  local rt = opts.runtime or runtime
  local report = { receivers = n, rows = rows, page_size = page_size, workers = workers, threads = threads,
                   results = {}, errors = 0, checks = {} }
  local started = {}

  local function cleanup()
    if started.srv then started.srv.stop() end
    for _, db in ipairs(started.dbs or {}) do pcall(helper.drop_database, db) end
  end
  report.cleanup = cleanup

  local ok, perr = pcall(function()
    -- the sender
    say(("load: %d receivers x %d rows, page_size %d, nginx %d workers x %d threads"):format(
      n, rows, page_size, workers, threads))
    local sdb, sconn = helper.create_database("load_sender")
    started.dbs = { sdb }
    report.sender = sdb
    helper.psql(sdb, DDL .. "; " .. FILL:format(rows))
    local port = helper.free_port()
    local url = "http://127.0.0.1:" .. port
    local site = pksync.new { db = sconn, site_url = url }
    assert(site:migrate())
    assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
    local hashes = {}
    for i = 1, n do
      local c = assert(site:create_connection { name = "load " .. i, direction = "sender", status = "active",
        site_url = ("https://receiver-%d.example"):format(i), notify = false,
        rate_limit_requests_per_minute = 0, max_records_per_request = 10000 })
      hashes[i] = c.auth_token_hash
    end
    site:close()
    started.srv = helper.start_nginx { name = "load-sender", port = port, workers = workers, threads = threads,
      server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q } }
      }]]):format(sconn, url) }

    -- the receivers: separate processes, each its own database
    local receivers = {}
    for i = 1, n do
      local dbname, conninfo = helper.create_database("load_recv")
      started.dbs[#started.dbs + 1] = dbname
      helper.psql(dbname, DDL)
      receivers[i] = { db = dbname, spec = json.encode { conninfo = conninfo, url = url, hash = hashes[i],
        page_size = page_size } }
    end
    report.receiver_dbs = {}
    -- the interpreter the suite runs with (a sanitizer or valgrind wrapper), else the plain one
    local lua = os.getenv(rt == "jit" and "PKSYNC_LUAJIT" or "PKSYNC_LUA54") or INTERPRETER[rt]
    local cpath = build_dir(rt) .. "/?.so;" .. package.cpath
    local t0 = helper.now()
    for i, r in ipairs(receivers) do
      report.receiver_dbs[i] = r.db
      local cmd = ("cd %s && LUA_CPATH=%s timeout 600 %s scripts/load.lua --receiver %s 2>&1"):format(
        helper.shell_quote(repo), helper.shell_quote(cpath), lua, helper.shell_quote(r.spec))
      r.pipe = assert(io.popen(cmd, "r"))
    end
    local latencies = {}
    local pages, imported = 0, 0
    for i, r in ipairs(receivers) do
      local text = r.pipe:read("a") or r.pipe:read("*a") or ""
      r.pipe:close()
      local res = json.decode(text:match("[^\n]*\n?$") or "") or json.decode(text)
      if type(res) ~= "table" then res = { ok = false, err = "receiver output: " .. text:sub(1, 300) } end
      report.results[i] = res
      if not res.ok then
        report.errors = report.errors + 1
        say(("  receiver %d failed: %s"):format(i, tostring(res.err)))
      else
        pages = pages + res.pages
        imported = imported + res.imported
        for _, l in ipairs(res.latencies or {}) do latencies[#latencies + 1] = l end
      end
    end
    report.seconds = helper.now() - t0
    table.sort(latencies)
    report.pages = pages
    -- each pull also asks for GET status, table-schema and list-tables
    report.requests = pages + 3 * (n - report.errors)
    report.rps = report.requests / report.seconds
    report.rows_per_second = imported / report.seconds
    report.p50_ms = percentile(latencies, 0.50)
    report.p99_ms = percentile(latencies, 0.99)
    report.max_ms = latencies[#latencies] or 0

    -- afterwards: the servers still answer, and the data is exact
    local status, body = helper.http("GET", url .. "/phoenix_kit/sync/api/status")
    report.checks.status = status == 200 and type(json.decode(body or "")) == "table"
    local pg_ok = select(2, pcall(helper.psql, "postgres", "SELECT 1")) == "1"
    report.checks.postgres = pg_ok
    local want = helper.psql(sdb, SUM)
    report.expected = want
    local matches = 0
    for i, r in ipairs(receivers) do
      local got = helper.psql(r.db, SUM)
      report.results[i].sum = got
      if got == want then matches = matches + 1 end
    end
    report.checks.matches = matches
    -- the sender's book-keeping under concurrency: one download and every row per connection
    local counters = helper.psql(sdb, ("SELECT count(*) FROM pksync_connections WHERE downloads_used = 1 " ..
      "AND records_downloaded = %d"):format(rows))
    report.checks.counters = tonumber(counters)
  end)
  if not ok then
    report.failure = tostring(perr)
    report.errors = report.errors + 1
  end
  if not opts.keep then cleanup() end
  report.passed = ok and report.errors == 0 and report.checks.status == true and report.checks.postgres == true
    and report.checks.matches == n and report.checks.counters == n
  return report
end

local function print_report(r)
  local function line(fmt, ...) io.write(fmt:format(...), "\n") end
  if r.failure then line("  failed: %s", r.failure) end
  line("  receivers     %d ok, %d errors", r.receivers - r.errors, r.errors)
  if r.seconds then
    line("  requests      %d (%d pages) in %.2f s: %.1f requests/s, %.0f rows/s", r.requests, r.pages,
      r.seconds, r.rps, r.rows_per_second)
    line("  page latency  p50 %.1f ms, p99 %.1f ms, max %.1f ms (request + import, per page)",
      r.p50_ms, r.p99_ms, r.max_ms)
    line("  checks        GET status %s; PostgreSQL %s; %d/%d receivers match the sender (count + md5); " ..
      "counters %d/%d", r.checks.status and "200" or "FAILED", r.checks.postgres and "accepts connections" or
      "FAILED", r.checks.matches or 0, r.receivers, r.checks.counters or 0, r.receivers)
  end
  line("load: %s", r.passed and "passed" or "FAILED")
end

local function main(args)
  if args[1] == "--receiver" then
    os.exit(receiver(args[2]) and 0 or 1, true)   -- close the state: every __gc runs (LeakSanitizer)
  end
  local opts = { receivers = tonumber(args[1]) or 8, say = function(s) io.write(s, "\n") io.flush() end }
  local as_json = false
  local i = 2
  while args[i] do
    local a = args[i]
    if a == "--json" then as_json = true
    elseif a == "--rows" then i = i + 1 opts.rows = tonumber(args[i])
    elseif a == "--page-size" then i = i + 1 opts.page_size = tonumber(args[i])
    elseif a == "--workers" then i = i + 1 opts.workers = tonumber(args[i])
    elseif a == "--threads" then i = i + 1 opts.threads = tonumber(args[i])
    else io.stderr:write("load.lua: unknown argument ", a, "\n") os.exit(2) end
    i = i + 1
  end
  if not package.cpath:find("/build/", 1, true) then
    package.cpath = build_dir(runtime) .. "/?.so;" .. package.cpath
  end
  if as_json then opts.say = nil end
  local report = M.run(opts)
  if as_json then
    report.cleanup = nil
    io.write(require("pksync").json.encode(report), "\n")
  else
    print_report(report)
  end
  os.exit(report.passed and 0 or 1, true)
end

-- Run as a script (not when a spec loads it as a module).
if arg and arg[0] and arg[0]:match("load%.lua$") then main(arg) end
return M
