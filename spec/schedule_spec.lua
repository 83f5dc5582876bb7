-- Scheduled sync (pksync.schedule, the store's due rule and claim, and
-- `pksync sync --due/--watch`, `pksync schedule`) against two real sites:
-- A serves the sample shop from nginx, B has a receiver connection to it.
-- Time is controlled through the store: tests set the last-run and
-- next-due timestamps instead of waiting for an interval.
local helper = require "helper"
local sites = require "sites"
local pksync = require "pksync"

local LUA = helper.runtime == "jit" and "luajit" or "lua5.4"
local BIN = helper.repo .. "/bin/pksync"

--- Run the CLI on B (in the background with opts.background: returns the
-- file names instead of waiting, and `<base>.pid` holds the runner's pid).
local function cli(b, args, opts)
  opts = opts or {}
  local base = helper.root .. "/" .. helper.unique("sched")
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = helper.shell_quote(a) end
  local cmd = ("cd %s && env -u PKSYNC_PROGRESS %s %s --db %s --site-url https://b.example %s >%s.out 2>%s.err"):format(
    helper.shell_quote(helper.repo), LUA, helper.shell_quote(BIN), helper.shell_quote(b.conninfo),
    table.concat(quoted, " "), base, base)
  if opts.background then
    -- sh's $$ becomes the runner's pid through exec (env execs the interpreter)
    local inner = cmd:gsub("&& env ", "&& echo $$ >" .. base .. ".pid && exec env ", 1)
    os.execute("(sh -c " .. helper.shell_quote(inner) .. "; echo $? >" .. base .. ".rc) >/dev/null 2>&1 &")
    return { base = base }
  end
  os.execute("(" .. cmd .. "); echo $? >" .. base .. ".rc")
  local r = helper.command_result(base)
  return r
end

local expect = helper.expect_exit

--- Wait for a file to exist (a background process reached a point).
local function wait_file(path, seconds)
  local deadline = helper.now() + (seconds or 20)
  while helper.now() < deadline do
    if helper.read_file(path) then return true end
    helper.sleep(0.02)
  end
  return false
end

local function wait_exit(bg, seconds)
  assert(wait_file(bg.base .. ".rc", seconds or 60), "the background run did not end")
  helper.sleep(0.05)
  return { code = tonumber(helper.read_file(bg.base .. ".rc")), out = helper.read_file(bg.base .. ".out") or "",
           err = helper.read_file(bg.base .. ".err") or "" }
end

--- A minimal parser of Prometheus' text exposition format: families
-- (HELP, TYPE) and samples with labels; raises on a malformed line.
local function parse_prometheus(text)
  local families, samples = {}, {}
  for line in text:gmatch("([^\n]*)\n") do
    if line:match("^# HELP ") then
      local name, help = line:match("^# HELP ([%a_:][%w_:]*) (.*)$")
      assert(name, "bad HELP line: " .. line)
      families[name] = families[name] or {}
      families[name].help = help
    elseif line:match("^# TYPE ") then
      local name, kind = line:match("^# TYPE ([%a_:][%w_:]*) (%a+)$")
      assert(name, "bad TYPE line: " .. line)
      assert(({ counter = true, gauge = true, histogram = true, summary = true, untyped = true })[kind], line)
      families[name] = families[name] or {}
      families[name].type = kind
    elseif line ~= "" and not line:match("^#") then
      local name, rest = line:match("^([%a_:][%w_:]*)(.*)$")
      assert(name, "bad sample line: " .. line)
      local labels = {}
      if rest:sub(1, 1) == "{" then
        local i = 2
        while rest:sub(i, i) ~= "}" do
          local key, after = rest:match("^([%a_][%w_]*)=\"()", i)
          assert(key, "bad label in: " .. line)
          local value, j = {}, after
          while true do
            local c = rest:sub(j, j)
            assert(c ~= "", "unterminated label value in: " .. line)
            if c == "\\" then
              local n = rest:sub(j + 1, j + 1)
              value[#value + 1] = (n == "n") and "\n" or n
              j = j + 2
            elseif c == '"' then
              j = j + 1
              break
            else
              value[#value + 1] = c
              j = j + 1
            end
          end
          labels[key] = table.concat(value)
          if rest:sub(j, j) == "," then j = j + 1 end
          i = j
        end
        rest = rest:sub(i + 1)
      end
      local value = rest:match("^ (%S+)$")
      assert(value, "bad sample value in: " .. line)
      local number = tonumber(value) or ({ NaN = 0 / 0, ["+Inf"] = math.huge, ["-Inf"] = -math.huge })[value]
      assert(number, "not a number in: " .. line)
      assert(families[name] and families[name].type, "sample before its TYPE: " .. line)
      samples[#samples + 1] = { name = name, labels = labels, value = number }
    end
  end
  return families, samples
end

--- The one sample of `name` whose labels include `want`.
local function sample(samples, name, want)
  local found
  for _, s in ipairs(samples) do
    local match = s.name == name
    for k, v in pairs(want or {}) do match = match and s.labels[k] == v end
    if match then
      assert(found == nil, "two samples match " .. name)
      found = s
    end
  end
  return found
end

describe("scheduled sync", function()
  local a, b

  lazy_setup(function()
    a, b = sites.start()
    -- pages of 100 rows, so a stop can land between pages
    assert(a.client:update_connection(a.sender.uuid, { max_records_per_request = 100 }))
  end)
  lazy_teardown(function() sites.stop(a, b) end)

  local function set(conn, assignments)
    b.sql(("UPDATE pksync_connections SET %s WHERE uuid = '%s'"):format(assignments, conn.uuid))
  end
  local function field(conn, expr)
    return b.sql(("SELECT %s FROM pksync_connections WHERE uuid = '%s'"):format(expr, conn.uuid))
  end
  local function is_due(conn)
    for _, c in ipairs(assert(b.client:due_connections())) do
      if c.uuid == conn.uuid then return true end
    end
    return false
  end

  describe("the due rule", function()
    it("needs auto_sync_enabled, an active receiver, and an interval since the last run", function()
      assert.is_false(is_due(b.conn))                       -- auto-sync is off by default
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_enabled = true }))
      set(b.conn, "status = 'pending'")
      assert.is_false(is_due(b.conn))                       -- not active
      set(b.conn, "status = 'active'")
      assert.is_true(is_due(b.conn))                        -- never run: due now
      set(b.conn, "last_auto_sync_at = now() - interval '59 minutes'")
      assert.is_false(is_due(b.conn))                       -- the default interval is 60 minutes
      set(b.conn, "last_auto_sync_at = now() - interval '61 minutes'")
      assert.is_true(is_due(b.conn))
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_interval_minutes = 90 }))
      assert.is_false(is_due(b.conn))
      set(b.conn, "last_auto_sync_at = now() - interval '2 minutes'")
      assert.is_false(is_due(b.conn))
      -- an explicit next due time wins over the interval (backoff, "run now")
      assert(b.client:update_connection(b.conn.uuid, { next_auto_sync_at = "2000-01-01T00:00:00Z" }))
      assert.is_true(is_due(b.conn))
      set(b.conn, "next_auto_sync_at = now() + interval '1 minute', last_auto_sync_at = now() - interval '1 day'")
      assert.is_false(is_due(b.conn))
      set(b.conn, "next_auto_sync_at = NULL, last_auto_sync_at = NULL, status = 'suspended'")
      assert.is_false(is_due(b.conn))
      set(b.conn, "status = 'active'")
      assert.is_true(is_due(b.conn))
    end)

    it("never makes a sender connection due", function()
      assert(a.client:update_connection(a.sender.uuid, { auto_sync_enabled = true }))
      a.sql("UPDATE pksync_connections SET status = 'active'")
      assert.same({}, { table.unpack(assert(a.client:due_connections())) })
      assert(a.client:update_connection(a.sender.uuid, { auto_sync_enabled = false }))
    end)

    it("is what `pksync schedule` and `connections list` show", function()
      local r = expect(cli(b, { "schedule" }), 0)
      assert.matches("From A%s+every 90m%s+now%s+never run%s+0", r.out)
      local doc = expect(cli(b, { "schedule", "--json" }), 0).json()
      assert.equals(1, #doc)
      assert.equals(b.conn.uuid, doc[1].uuid)
      assert.is_true(doc[1].due)
      assert.equals(0, doc[1].auto_sync_failures)
      r = expect(cli(b, { "connections", "list" }), 0)
      assert.matches("AUTO SYNC%s+NEXT DUE", r.out)
      assert.matches("every 90m%s+now", r.out)
    end)
  end)

  it("`pksync schedule CONN` changes the auto-sync settings", function()
    expect(cli(b, { "schedule", "From A", "--disable" }), 0)
    assert.equals("false", field(b.conn, "auto_sync_enabled::text"))
    assert.is_false(is_due(b.conn))
    local r = expect(cli(b, { "schedule", "From A", "--enable", "--every", "90", "--tables", "customers, products",
      "--now" }), 0)
    assert.matches("From A%s+every 90m%s+now", r.out)
    assert.equals("true|90|{customers,products}|true", field(b.conn, "auto_sync_enabled || '|' || " ..
      "auto_sync_interval_minutes || '|' || auto_sync_tables::text || '|' || (next_auto_sync_at <= now())"))
    expect(cli(b, { "schedule", "From A", "--tables", "" }), 0)
    assert.equals("{}", field(b.conn, "auto_sync_tables::text"))
    expect(cli(b, { "schedule", "--enable" }), 2)
    expect(cli(b, { "schedule", "From A", "--every", "0" }), 2)
    expect(cli(b, { "schedule", "From A", "--tables", "bad-name" }), 2)
    set(b.conn, "next_auto_sync_at = NULL")
  end)

  describe("running", function()
    it("syncs a due connection once, only its auto_sync_tables, and records the run", function()
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_tables = { "customers", "products" } }))
      set(b.conn, "auto_sync_failures = 2")
      local round = assert(b.client:run_due_connections())
      assert.equals(1, #round.connections)
      local e = round.connections[1]
      assert.equals("ok", e.outcome, tostring(e.error))
      assert.equals(700, e.rows)
      assert.equals(0, e.failures)
      local pulled = {}
      for _, t in ipairs(e.report.tables) do pulled[#pulled + 1] = t.name end
      table.sort(pulled)
      assert.same({ "customers", "products" }, pulled)
      assert.equals(sites.fingerprint(a, "customers"), sites.fingerprint(b, "customers"))
      assert.equals("0", b.sql("SELECT count(*) FROM orders"))
      -- every pulled table is a transfer with its counts
      assert.equals("2", b.sql(("SELECT count(*) FROM pksync_transfers WHERE connection_uuid = '%s' " ..
        "AND status = 'completed' AND records_transferred > 0"):format(b.conn.uuid)))
      assert.equals("ok|0|700|true|true", field(b.conn, "last_auto_sync_status || '|' || auto_sync_failures || '|' || " ..
        "last_auto_sync_rows || '|' || (last_auto_sync_success_at IS NOT NULL) || '|' || (next_auto_sync_at IS NULL)"))
      -- done: not due again until the interval has passed
      assert.is_false(is_due(b.conn))
      assert.equals(0, #assert(b.client:run_due_connections()).connections)
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_tables = {} }))
    end)

    it("backs off an offline sender, capped at the interval, and keeps the connection active", function()
      local dead = assert(b.client:create_connection { name = "Dead", direction = "receiver",
        site_url = "http://127.0.0.1:" .. helper.free_port(), auth_token = pksync.token.generate(),
        status = "active", auto_sync_enabled = true, auto_sync_interval_minutes = 10 })
      local delay = "extract(epoch FROM next_auto_sync_at - last_auto_sync_at)::int"
      local function run_dead()
        local round = assert(b.client:run_due_connections { retry_base_ms = 30000 })
        for _, e in ipairs(round.connections) do
          if e.uuid == dead.uuid then return e end
        end
      end
      local e = run_dead()
      assert.equals("offline", e.outcome)
      assert.equals(1, e.failures)
      assert.equals("30", field(dead, delay))
      assert.is_false(is_due(dead))
      set(dead, "next_auto_sync_at = now() - interval '1 second'")  -- the retry time has come
      assert.equals(2, run_dead().failures)
      assert.equals("60", field(dead, delay))
      set(dead, "next_auto_sync_at = now(), auto_sync_failures = 7")
      assert.equals("offline", run_dead().outcome)
      assert.equals("600", field(dead, delay))                    -- 30 s * 2^7 capped at 10 minutes
      assert.equals("active|8", field(dead, "status || '|' || auto_sync_failures"))
      -- exit 3 from the command when the only due sender is offline
      set(dead, "next_auto_sync_at = now()")
      local r = expect(cli(b, { "sync", "--due" }), 3)
      assert.matches("offline%s+Dead", r.out)
      assert(b.client:delete_connection(dead.uuid, { notify = false }))
    end)

    it("exits 0 when nothing is due, prints one JSON report for all", function()
      local r = expect(cli(b, { "sync", "--due" }), 0)
      assert.matches("nothing due", r.out)
      local doc = expect(cli(b, { "sync", "--due", "--json" }), 0).json()
      assert.same({}, { table.unpack(doc.connections) })
      expect(cli(b, { "sync", "--due", b.conn.uuid }), 2)
      expect(cli(b, { "sync", "--due", "--watch" }), 2)
      expect(cli(b, { "sync" }), 2)
    end)

    it("exits 4 when rows failed, and reports each connection in the JSON", function()
      b.sql("DELETE FROM customers")
      b.sql("ALTER TABLE customers ADD CONSTRAINT no_first CHECK (id <> 1)")
      set(b.conn, "next_auto_sync_at = now()")
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_tables = { "customers" } }))
      local doc = expect(cli(b, { "sync", "--due", "--json" }), 4).json()
      assert.equals(1, #doc.connections)
      assert.equals("partial", doc.connections[1].outcome)
      assert.equals(1, doc.connections[1].report.totals.failed)
      b.sql("ALTER TABLE customers DROP CONSTRAINT no_first")
      assert.equals("partial|0", field(b.conn, "last_auto_sync_status || '|' || auto_sync_failures"))
      set(b.conn, "next_auto_sync_at = now()")
      expect(cli(b, { "sync", "--due" }), 0)
      assert.equals(sites.fingerprint(a, "customers"), sites.fingerprint(b, "customers"))
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_tables = {} }))
    end)
  end)

  describe("policies", function()
    it("a connection's own policy_file wins over the site's policy", function()
      local dir = helper.root .. "/" .. helper.unique("policy")
      assert(os.execute("mkdir -p " .. dir))
      helper.write_file(dir .. "/own.lua", [[
return { tables = function() return { "products" } end, strategy = function() return "overwrite" end }]])
      helper.write_file(dir .. "/site.lua", [[return { tables = function() return { "customers" } end }]])
      a.sql("UPDATE products SET price = price + 5, updated_at = now() WHERE id = 5")
      assert(b.client:update_connection(b.conn.uuid, { metadata = { policy_file = dir .. "/own.lua" } }))
      set(b.conn, "next_auto_sync_at = now()")
      local round = assert(b.client:run_due_connections { policy = dir .. "/site.lua" })
      local e = round.connections[1]
      assert.equals("ok", e.outcome, tostring(e.error))
      assert.equals(1, #e.report.tables)
      assert.equals("products", e.report.tables[1].name)
      assert.equals("overwrite", e.report.tables[1].strategy)
      assert.equals(sites.fingerprint(a, "products"), sites.fingerprint(b, "products"))
      -- without its own file, the site's policy decides
      assert(b.client:update_connection(b.conn.uuid, { metadata = {} }))
      set(b.conn, "next_auto_sync_at = now()")
      round = assert(b.client:run_due_connections { policy = dir .. "/site.lua" })
      assert.equals("customers", round.connections[1].report.tables[1].name)
      -- a policy that cannot load fails the run, and it is retried later
      assert(b.client:update_connection(b.conn.uuid, { metadata = { policy_file = dir .. "/missing.lua" } }))
      set(b.conn, "next_auto_sync_at = now()")
      round = assert(b.client:run_due_connections())
      assert.equals("failed", round.connections[1].outcome)
      assert.matches("^invalid_policy", round.connections[1].error)
      assert.equals("1", field(b.conn, "auto_sync_failures"))
      assert(b.client:update_connection(b.conn.uuid, { metadata = {} }))
      set(b.conn, "next_auto_sync_at = NULL, auto_sync_failures = 0")
    end)
  end)

  describe("one runner per connection", function()
    -- a policy whose progress hook writes the runner's pid (the shell's
    -- parent) once the pull has started and then waits for a file: the
    -- runner holds its claim until told to go
    local function blocking_policy(dir)
      local path = dir .. "/block.lua"
      helper.write_file(path, ([[
return { on_progress = function()
  os.execute("echo $PPID > %s/pid.tmp && mv %s/pid.tmp %s/started")
  while not io.open(%q) do os.execute("sleep 0.02") end
end }]]):format(dir, dir, dir, dir .. "/go"))
      return path
    end

    it("a second runner skips a connection the first one holds; exactly one sync", function()
      local dir = helper.root .. "/" .. helper.unique("race")
      assert(os.execute("mkdir -p " .. dir))
      b.sql("TRUNCATE reviews, order_items, orders")
      set(b.conn, "next_auto_sync_at = now()")
      local before = b.sql("SELECT count(*) FROM pksync_transfers")
      local first = cli(b, { "sync", "--due", "--json", "--policy", blocking_policy(dir) }, { background = true })
      assert(wait_file(dir .. "/started"), "the first runner did not start pulling: " ..
        (helper.read_file(first.base .. ".out") or "") .. (helper.read_file(first.base .. ".err") or ""))
      local second = expect(cli(b, { "sync", "--due", "--json" }), 0).json()
      assert.equals(1, #second.connections)
      assert.equals("skipped", second.connections[1].outcome)
      helper.write_file(dir .. "/go", "go")
      local r = wait_exit(first)
      assert.equals(0, r.code, r.err)
      local doc = pksync.json.decode(r.out)
      assert.equals("ok", doc.connections[1].outcome)
      -- the first runner pulled the three emptied tables, the second nothing
      assert.equals("3", b.sql(("SELECT count(*) - %s FROM pksync_transfers"):format(before)))
      for _, t in ipairs(sites.TABLES) do assert.equals(sites.fingerprint(a, t), sites.fingerprint(b, t), t) end
      assert.is_false(is_due(b.conn))
    end)

    it("a runner killed mid-pull holds nothing; the next run completes the connection", function()
      local dir = helper.root .. "/" .. helper.unique("kill")
      assert(os.execute("mkdir -p " .. dir))
      b.sql("TRUNCATE reviews, order_items")
      set(b.conn, "next_auto_sync_at = now()")
      local first = cli(b, { "sync", "--due", "--policy", blocking_policy(dir) }, { background = true })
      assert(wait_file(dir .. "/started"), "the runner did not start pulling: " ..
        (helper.read_file(first.base .. ".out") or "") .. (helper.read_file(first.base .. ".err") or ""))
      -- kill the runner as a crash would
      local pid = assert(helper.read_file(dir .. "/started"):match("%d+"))
      helper.run("kill -9 " .. pid)
      wait_exit(first)
      assert.is_true(is_due(b.conn))                    -- nothing recorded, nothing held
      -- the page before the kill was committed: the next run keeps it and
      -- pulls only the rest of that table (by digests), not all of it again
      local kept = {}
      for _, t in ipairs { "order_items", "reviews" } do kept[t] = tonumber(b.sql("SELECT count(*) FROM " .. t)) end
      local begun = kept.order_items > 0 and "order_items" or "reviews"
      assert.equals(100, kept[begun])
      local doc = expect(cli(b, { "sync", "--due", "--json" }), 0).json()
      assert.equals("ok", doc.connections[1].outcome)
      for _, t in ipairs(sites.TABLES) do assert.equals(sites.fingerprint(a, t), sites.fingerprint(b, t), t) end
      for _, t in ipairs(doc.connections[1].report.tables) do
        if t.name == begun then
          assert.equals("incremental", t.path)
          assert.is_true(t.imported == tonumber(a.sql("SELECT count(*) FROM " .. begun)) - 100, tostring(t.imported))
        end
      end
    end)
  end)

  describe("--watch", function()
    it("SIGTERM mid-pull finishes the page in flight, records it and exits", function()
      local dir = helper.root .. "/" .. helper.unique("term")
      assert(os.execute("mkdir -p " .. dir))
      -- the policy sends SIGTERM to the runner (the shell's parent) at the first page
      local policy = dir .. "/term.lua"
      helper.write_file(policy, [[
local sent = false
return { on_progress = function()
  if not sent then sent = true os.execute("kill -TERM $PPID") end
end }]])
      b.sql("TRUNCATE reviews, order_items, orders, customers CASCADE")
      local started = b.sql("SELECT now()")
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_tables = { "customers", "orders" } }))
      set(b.conn, "next_auto_sync_at = now()")
      local r = cli(b, { "sync", "--watch", "--poll", "100", "--policy", policy })
      expect(r, 0)
      assert.matches("stopped by SIGTERM", r.err)
      assert.matches("stopped%s+From A", r.out)
      -- whole pages only (100 rows each), one table started, the next one not
      local rows = tonumber(b.sql("SELECT count(*) FROM customers"))
      assert.is_true(rows > 0 and rows < 500 and rows % 100 == 0, tostring(rows))
      assert.equals("0", b.sql("SELECT count(*) FROM orders"))
      -- the transfer is recorded with its rows, nothing is left in progress
      assert.equals("failed|" .. rows, b.sql(("SELECT status || '|' || records_transferred FROM pksync_transfers " ..
        "WHERE connection_uuid = '%s' AND table_name = 'customers' ORDER BY inserted_at DESC LIMIT 1"):format(b.conn.uuid)))
      assert.equals("0", b.sql(("SELECT count(*) FROM pksync_transfers WHERE status = 'in_progress' " ..
        "AND inserted_at >= '%s'"):format(started)))
      assert.equals("stopped", field(b.conn, "last_auto_sync_status"))
      -- due again at once: the next run finishes the job
      assert.is_true(is_due(b.conn))
      expect(cli(b, { "sync", "--due" }), 0)
      assert.equals(sites.fingerprint(a, "customers"), sites.fingerprint(b, "customers"))
      assert.equals(sites.fingerprint(a, "orders"), sites.fingerprint(b, "orders"))
      assert(b.client:update_connection(b.conn.uuid, { auto_sync_tables = {} }))
    end)
  end)

  describe("--watch, idle", function()
    it("runs a connection when it falls due, and exits 0 on SIGTERM between rounds", function()
      local started = b.sql("SELECT now()")
      assert.is_false(is_due(b.conn))
      local bg = cli(b, { "sync", "--watch", "--poll", "100" }, { background = true })
      assert(wait_file(bg.base .. ".pid"), "the watcher did not start")
      set(b.conn, "next_auto_sync_at = now()")
      local deadline = helper.now() + 30
      while field(b.conn, ("coalesce(last_auto_sync_at > '%s', false)::text"):format(started)) ~= "true" do
        assert(helper.now() < deadline, "the watcher did not run the due connection: " ..
          (helper.read_file(bg.base .. ".err") or ""))
        helper.sleep(0.05)
      end
      helper.run("kill -TERM " .. assert(helper.read_file(bg.base .. ".pid"):match("%d+")))
      local r = wait_exit(bg)
      assert.equals(0, r.code, r.err)
      assert.matches("stopped by SIGTERM", r.err)
      assert.matches("ok%s+From A", r.out)
      assert.equals("ok", field(b.conn, "last_auto_sync_status"))
    end)
  end)

  describe("metrics", function()
    it("are Prometheus text: connections by status, per connection state", function()
      local text = assert(b.client:schedule_metrics())
      local families, samples = parse_prometheus(text)
      assert.equals("gauge", families.pksync_connections.type)
      assert.equals("counter", families.pksync_rows_pulled_total.type)
      assert.equals(1, sample(samples, "pksync_connections", { direction = "receiver", status = "active" }).value)
      local me = { connection = b.conn.uuid, name = "From A" }
      assert.equals(1, sample(samples, "pksync_auto_sync_enabled", me).value)
      assert.equals(0, sample(samples, "pksync_auto_sync_failures", me).value)
      local since = sample(samples, "pksync_seconds_since_last_success", me).value
      assert.is_true(since >= 0 and since < 3600, tostring(since))
      assert.equals(1, sample(samples, "pksync_last_sync_outcome", { connection = b.conn.uuid, outcome = "ok" }).value)
      local pulled = tonumber(b.sql(("SELECT sum(records_transferred) FROM pksync_transfers " ..
        "WHERE connection_uuid = '%s' AND direction = 'receive'"):format(b.conn.uuid)))
      assert.equals(pulled, sample(samples, "pksync_rows_pulled_total", me).value)
      assert.is_true(sample(samples, "pksync_seconds_until_due", me).value > 0)
    end)

    it("escape label values", function()
      assert(b.client:update_connection(b.conn.uuid, { name = 'From "A"\\\nnew line' }))
      local _, samples = parse_prometheus(assert(b.client:schedule_metrics()))
      assert.equals(1, sample(samples, "pksync_auto_sync_enabled", { name = 'From "A"\\\nnew line' }).value)
      assert(b.client:update_connection(b.conn.uuid, { name = "From A" }))
    end)
  end)

  describe("in nginx", function()
    it("two workers run a due connection exactly once, and serve the metrics", function()
      b.sql("TRUNCATE reviews")
      set(b.conn, "next_auto_sync_at = now()")
      local started = b.sql("SELECT now()")
      local config = ("{ db = %q, site_url = 'https://b.example', poll_ms = 100, metrics_dict = 'pksync_test' }")
        :format(b.conninfo)
      local srv = helper.start_nginx { name = "sched", workers = 2, http = ([[
  init_worker_by_lua_block { assert(require("pksync.nginx").schedule %s) }]]):format(config), server = ([[
    location = /metrics { content_by_lua_block { require("pksync.nginx").metrics %s } }
    location /phoenix_kit/sync/api/ { content_by_lua_block { require("pksync.nginx").serve %s } }]]):format(
        config, config) }
      local ok, err = pcall(function()
        local deadline = helper.now() + 30
        while field(b.conn, ("coalesce(last_auto_sync_at > '%s', false)::text"):format(started)) ~= "true" do
          assert(helper.now() < deadline, "no scheduled run in nginx:\n" .. srv.error_log())
          helper.sleep(0.05)
        end
        -- later ticks of both workers find nothing due
        local ticks = helper.now() + 0.5
        while helper.now() < ticks do helper.sleep(0.05) end
        assert.equals("ok", field(b.conn, "last_auto_sync_status"))
        assert.equals("1", b.sql(("SELECT count(*) FROM pksync_transfers WHERE table_name = 'reviews' " ..
          "AND inserted_at >= '%s'"):format(started)))
        assert.equals(sites.fingerprint(a, "reviews"), sites.fingerprint(b, "reviews"))
        for _ = 1, 2 do assert.equals(200, (helper.http("GET", srv.url .. "/phoenix_kit/sync/api/status"))) end
        assert.equals(404, (helper.http("GET", srv.url .. "/phoenix_kit/sync/api/no-such-endpoint")))
        local status, body, headers = helper.http("GET", srv.url .. "/metrics")
        assert.equals(200, status)
        assert.matches("^text/plain; version=0.0.4", headers["content-type"])
        local _, samples = parse_prometheus(body)
        assert.equals(1, sample(samples, "pksync_last_sync_outcome", { connection = b.conn.uuid, outcome = "ok" }).value)
        -- requests counted by every worker in the shared dict; unknown paths share one label
        assert.equals(2, sample(samples, "pksync_requests_total", { endpoint = "status", status = "200" }).value)
        assert.equals(1, sample(samples, "pksync_requests_total", { endpoint = "unknown", status = "404" }).value)
        assert.not_matches("%[error%]", srv.error_log())
      end)
      srv.stop()
      assert(ok, err)
    end)
  end)

  describe("a sender that stopped the connection", function()
    it("revoked: the local connection takes that status and is not due any more", function()
      set(b.conn, "next_auto_sync_at = now()")
      a.sql("UPDATE pksync_connections SET status = 'revoked'")
      local doc = expect(cli(b, { "sync", "--due", "--json" }), 1).json()
      assert.equals("revoked", doc.connections[1].outcome)
      assert.equals("revoked|Revoked by the remote site", field(b.conn, "status || '|' || revoked_reason"))
      assert.is_false(is_due(b.conn))
      a.sql("UPDATE pksync_connections SET status = 'active'")
      set(b.conn, "status = 'active', revoked_at = NULL, revoked_reason = NULL")
    end)

    it("deleted (not_found): the local connection is suspended with the reason", function()
      set(b.conn, "next_auto_sync_at = now()")
      assert(a.client:delete_connection(a.sender.uuid, { notify = false }))
      local round = assert(b.client:run_due_connections())
      assert.equals("not_found", round.connections[1].outcome)
      assert.equals("suspended|Remote site reports connection not found",
        field(b.conn, "status || '|' || suspended_reason"))
      assert.is_false(is_due(b.conn))
      assert.equals(0, #assert(b.client:run_due_connections()).connections)
    end)
  end)
end)
