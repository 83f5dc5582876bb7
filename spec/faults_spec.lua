-- Fault injection against real servers: a sender that dies, stalls,
-- trickles or answers garbage; a PostgreSQL that restarts under an import;
-- locks, bad rows and a local table that changed shape.
--
-- Every failure must end with a clear error value and a consistent
-- database: the rows committed are exactly the rows reported imported,
-- they are a prefix of the sender's table (no duplicates, nothing
-- half-written), the pull returns nil, err and its transfer row is
-- `failed`; and a retry completes the work (compared in SQL).
local helper = require "helper"
local pksync = require "pksync"
local core = require "pksync.core"

local API = "/phoenix_kit/sync/api/"

local function sender_server(conninfo, url, extra)
  return ([[
    location /phoenix_kit/sync/api/ {
      %s
      content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q } }
    }]]):format(extra or "", conninfo, url)
end

describe("faults against a real pksync sender", function()
  local a, b = {}, {}
  local recv
  local logs = {}

  local function sql_a(q) return helper.psql(a.dbname, q) end
  local function sql_b(q) return helper.psql(b.dbname, q) end

  local function start_sender(port, extra)
    port = port or helper.free_port()
    return helper.start_nginx { name = "fault-sender", port = port,
      server = sender_server(a.conninfo, "http://127.0.0.1:" .. port, extra) }
  end

  local function latest_transfer(client, tbl)
    return assert(client:list_transfers { table_name = tbl, direction = "receive", limit = 1 })[1]
  end

  --- The failure contract: a clear error, committed = reported, a prefix
  -- of the sender's rows in key order, and a failed transfer row.
  local function assert_failed_cleanly(client, dbname, tbl, none, err, detail)
    assert.is_nil(none)
    assert.is_string(err)
    assert.is_true(#err > 0)
    assert.is_table(detail)
    local r = assert(detail.result, "detail.result holds what was committed")
    local n = tonumber(helper.psql(dbname, "SELECT count(*) FROM " .. tbl))
    assert.equals(n, r.records_imported)
    if n > 0 then
      local max = helper.psql(dbname, "SELECT max(id) FROM " .. tbl)
      assert.equals(helper.fingerprint(a.dbname, tbl, "id <= " .. max), helper.fingerprint(dbname, tbl))
    end
    local t = latest_transfer(client, tbl)
    assert.equals("failed", t.status)
    assert.equals(err, t.error_message)
    assert.equals(n, t.records_created)
    return n
  end

  lazy_setup(function()
    a.dbname, a.conninfo = helper.create_database("faults_a")
    b.dbname, b.conninfo = helper.create_database("faults_b")
    sql_a([[
      CREATE TABLE big (id int PRIMARY KEY, v text, n numeric(12,2), ts timestamptz);
      INSERT INTO big SELECT g, repeat(md5(g::text), 12), g * 1.5, '2025-01-01'::timestamptz + g * interval '1 min'
        FROM generate_series(1, 20000) g;
      CREATE TABLE conv (id int PRIMARY KEY, qty text, c int);
      INSERT INTO conv SELECT g, CASE WHEN g = 7777 THEN 'abc' ELSE g::text END,
        CASE WHEN g = 12345 THEN -1 ELSE g END FROM generate_series(1, 20000) g;
      CREATE TABLE shape (id int PRIMARY KEY, a int, b text, c text);
      INSERT INTO shape SELECT g, g * 10, CASE WHEN g % 500 = 0 THEN 'n/a' ELSE (g * 3)::text END, 'c' || g
        FROM generate_series(1, 3000) g;
      CREATE TABLE locked (id int PRIMARY KEY, v text);
      INSERT INTO locked SELECT g, 'v' || g FROM generate_series(1, 6000) g;
      CREATE TABLE resumable (id int PRIMARY KEY, v text);
      INSERT INTO resumable SELECT g, 'r' || g FROM generate_series(1, 12000) g;]])
    sql_b([[
      CREATE TABLE big (id int PRIMARY KEY, v text, n numeric(12,2), ts timestamptz);
      CREATE TABLE conv (id int PRIMARY KEY, qty integer, c int CHECK (c >= 0));
      CREATE TABLE shape (id int PRIMARY KEY, a int, b text, c text);
      CREATE TABLE locked (id int PRIMARY KEY, v text);
      CREATE TABLE resumable (id int PRIMARY KEY, v text);]])
    a.port = helper.free_port()
    a.url = "http://127.0.0.1:" .. a.port
    local site = pksync.new { db = a.conninfo, site_url = a.url }
    assert(site:migrate())
    assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
    local _, raw = assert(site:create_connection { name = "A to B", direction = "sender", status = "active",
      site_url = "https://b.example", notify = false, rate_limit_requests_per_minute = 0,
      max_records_per_request = 10000 })
    site:close()
    a.raw = raw
    a.srv = start_sender(a.port)
    b.client = pksync.new { db = b.conninfo, site_url = "https://b.example",
      logger = function(level, msg) logs[#logs + 1] = level .. " " .. msg end }
    assert(b.client:migrate())
    recv = assert(b.client:create_connection { name = "From A", direction = "receiver", site_url = a.url,
      auth_token = raw })
  end)

  lazy_teardown(function()
    if a.srv then a.srv.stop() end
    b.client:close()
    helper.drop_database(a.dbname)
    helper.drop_database(b.dbname)
  end)

  it("the sender is killed (SIGKILL) while a page streams: committed pages only, resume completes", function()
    sql_b("TRUNCATE big")
    -- a rate-limited sender, so a page takes about a second on the wire
    local slow = start_sender(nil, "limit_rate 1m;")
    local conn = { uuid = recv.uuid, site_url = slow.url, auth_token_hash = recv.auth_token_hash }
    local pids = table.concat(helper.nginx_pids(slow), " ")
    assert.matches("^%d+ %d+", pids)      -- the master and its worker
    local armed = false
    local none, err, detail = b.client:pull_table_data(conn, "big", { page_size = 2500, timeout = 20000,
      on_progress = function(ev)
        if ev.pages == 2 and not armed then
          armed = true
          -- from outside, while the next page is on the wire
          os.execute(("(sleep 0.6; kill -9 %s) >/dev/null 2>&1 &"):format(pids))
        end
      end })
    assert.is_true(armed)
    -- the kill landed while a body was on the wire (libcurl: "transfer closed with
    -- outstanding read data remaining" or a reset), not between two requests
    assert.are_not.equal("offline", err)
    assert.is_true(helper.kill_nginx(slow))   -- nothing of it is left
    assert.matches("warn pull of big failed: " .. err:gsub("%p", "%%%0"), table.concat(logs, "\n"))
    local committed = assert_failed_cleanly(b.client, b.dbname, "big", none, err, detail)
    assert.is_true(committed >= 5000 and committed < 20000, tostring(committed))
    assert.equals(0, committed % 2500)
    -- the same port again, full speed, and resume from the recorded cursor
    local again = start_sender(slow.port)
    local r = assert(b.client:pull_table_data(conn, "big", { page_size = 2500, resume = true }))
    again.stop()
    assert.equals(20000 - committed, r.records_imported)
    assert.equals(0, r.records_skipped)
    assert.equals(math.ceil((20000 - committed) / 2500), r.pages)
    assert.equals(helper.fingerprint(a.dbname, "big"), helper.fingerprint(b.dbname, "big"))
    local t = latest_transfer(b.client, "big")
    assert.equals("completed", t.status)
    assert.equals(20000, t.records_created)
  end)

  describe("with a second PostgreSQL cluster", function()
    local cluster
    lazy_setup(function() cluster = helper.start_cluster() end)
    lazy_teardown(function() if cluster then cluster.stop() end end)

    it("PostgreSQL restarts during an import: an error, then the same client reconnects and completes", function()
      local dbname, conninfo = cluster.create_database("restart")
      cluster.psql(dbname, "CREATE TABLE big (id int PRIMARY KEY, v text, n numeric(12,2), ts timestamptz)")
      local client = pksync.new { db = conninfo, site_url = "https://b.example" }
      assert(client:migrate())
      local conn = assert(client:create_connection { name = "From A", direction = "receiver", site_url = a.url,
        auth_token = a.raw })
      local restarted = false
      local none, err, detail = client:pull_table_data(conn, "big", { page_size = 2000,
        on_progress = function(ev)
          if ev.pages == 2 and not restarted then restarted = assert(cluster.restart()) end
        end })
      assert.is_true(restarted)
      assert.is_nil(none)
      assert.equals("database_error", err)
      assert.is_string(detail.message)
      local r = detail.result
      assert.equals(4000, r.records_imported)
      local n = cluster.psql(dbname, "SELECT count(*) FROM big")
      assert.equals("4000", n)
      assert.equals("1|4000", cluster.psql(dbname, "SELECT min(id) || '|' || max(id) FROM big"))
      local t = assert(client:list_transfers { table_name = "big", limit = 1 })[1]
      assert.equals("failed", t.status)
      assert.equals("database_error", t.error_message)
      -- a new pull on the same client object: it reconnects and completes
      local done = assert(client:pull_table_data(conn, "big", { page_size = 5000 }))
      assert.equals(16000, done.records_imported)
      assert.equals(4000, done.records_skipped)
      local sum = "SET TimeZone = 'UTC'; SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM big t"
      assert.equals(sql_a(sum), cluster.psql(dbname, sum))
      client:close()
    end)

    it("the sender's PostgreSQL restarts between pulls: its next answers are not 500s", function()
      local srv
      local ok, perr = pcall(function()
        local dbname, conninfo = cluster.create_database("sender")
        cluster.psql(dbname, "CREATE TABLE moved (id int PRIMARY KEY, v text); " ..
          "INSERT INTO moved SELECT g, 'm' || g FROM generate_series(1, 3000) g")
        sql_b("CREATE TABLE IF NOT EXISTS moved (id int PRIMARY KEY, v text); TRUNCATE moved")
        local port = helper.free_port()
        local url = "http://127.0.0.1:" .. port
        local site = pksync.new { db = conninfo, site_url = url }
        assert(site:migrate())
        assert(site:set_settings { enabled = true })
        local sc = assert(site:create_connection { name = "s", direction = "sender", status = "active", notify = false,
          site_url = "https://b.example", rate_limit_requests_per_minute = 0 })
        site:close()
        srv = helper.start_nginx { name = "restarting-sender", port = port, threads = 2,
          server = sender_server(conninfo, url) }
        local conn = { site_url = url, auth_token_hash = sc.auth_token_hash }
        -- warm both pool threads' database connections
        for _ = 1, 3 do assert(b.client:pull_table_data(conn, "moved", { page_size = 1000 })) end
        assert(cluster.restart())
        for i = 1, 4 do
          local r, err, detail = b.client:pull_table_data(conn, "moved", { page_size = 1000,
            conflict_strategy = "overwrite" })
          assert(r, ("pull %d after the restart: %s %s"):format(i, tostring(err), tostring(detail and detail.message)))
          assert.equals(3000, r.records_unchanged)   -- the same rows as before the restart
        end
        local sum = "SELECT count(*) || ':' || md5(string_agg(id || v, ',' ORDER BY id)) FROM moved"
        assert.equals(cluster.psql(dbname, sum), sql_b(sum))
      end)
      if srv then srv.stop() end
      assert(ok, perr)
    end)
  end)

  it("a lock held beyond lock_timeout: nil, \"lock_timeout\" quickly, nothing committed; retry completes", function()
    sql_b("TRUNCATE locked")
    local locker = assert(core.pg_connect(b.conninfo))
    assert(locker:exec("BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE"))
    local t0 = helper.now()
    local none, err, detail = b.client:pull_table_data(recv, "locked", { lock_timeout = 500 })
    local elapsed = helper.now() - t0
    assert.is_nil(none)
    assert.equals("lock_timeout", err)
    assert.is_true(elapsed < 3, ("took %.2f s"):format(elapsed))
    assert.equals(0, detail.result.records_imported)
    -- the client-wide option does the same
    local strict = pksync.new { db = b.conninfo, site_url = "https://b.example", lock_timeout = 500 }
    t0 = helper.now()
    local none2, err2 = strict:pull_table_data(recv, "locked")
    assert.is_nil(none2)
    assert.equals("lock_timeout", err2)
    assert.is_true(helper.now() - t0 < 3)
    strict:close()
    assert.equals(0, locker:query("SELECT count(*) AS n FROM locked")[1].n)
    assert(locker:exec("COMMIT"))
    local t = latest_transfer(b.client, "locked")
    assert.equals("failed", t.status)
    assert.equals("lock_timeout", t.error_message)
    -- the timeout was the import's own: the shared session keeps its setting
    local db = assert(b.client:database())
    local before = db:query("SHOW lock_timeout")[1].lock_timeout
    local r = assert(b.client:pull_table_data(recv, "locked", { lock_timeout = 500 }))
    assert.equals(6000, r.records_imported)
    assert.equals(helper.fingerprint(a.dbname, "locked"), helper.fingerprint(b.dbname, "locked"))
    assert.equals(before, db:query("SHOW lock_timeout")[1].lock_timeout)
    assert.equals("0", before)

    -- a lock taken between pages: the pages before it stay, reported as such
    sql_b("TRUNCATE locked")
    local taken = false
    none, err, detail = b.client:pull_table_data(recv, "locked", { lock_timeout = 500, page_size = 1500,
      on_progress = function(ev)
        if ev.pages == 1 and not taken then
          assert(locker:exec("BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE"))
          taken = true
        end
      end })
    assert.is_true(taken)
    assert.is_nil(none)
    assert.equals("lock_timeout", err)
    assert.equals(1500, detail.result.records_imported)
    assert.equals(1500, locker:query("SELECT count(*) AS n FROM locked")[1].n)
    assert(locker:exec("COMMIT"))
    locker:close()
    assert_failed_cleanly(b.client, b.dbname, "locked", none, err, detail)
    r = assert(b.client:pull_table_data(recv, "locked", { resume = true, page_size = 1500 }))
    assert.equals(4500, r.records_imported)
    assert.equals(helper.fingerprint(a.dbname, "locked"), helper.fingerprint(b.dbname, "locked"))
  end)

  it("one row PostgreSQL rejects (a type, a CHECK) in 20,000 fails alone with a useful sample", function()
    -- remote qty is text, local qty is integer: 'abc' cannot convert; c = -1 breaks a CHECK
    sql_b("TRUNCATE conv")
    local same = "SELECT count(*) || ':' || md5(string_agg(id || '/' || qty || '/' || c, ',' ORDER BY id)) " ..
      "FROM conv WHERE id NOT IN (7777, 12345)"
    local r = assert(b.client:pull_table_data(recv, "conv", { page_size = 10000 }))
    assert.equals(20000, r.records_transferred)
    assert.equals(19998, r.records_imported)
    assert.equals(2, r.records_failed)
    assert.matches("integer", r.error_sample)
    assert.matches("abc", r.error_sample)
    assert.equals("19998", sql_b("SELECT count(*) FROM conv"))
    assert.equals("0", sql_b("SELECT count(*) FROM conv WHERE id IN (7777, 12345)"))
    assert.equals(sql_a(same), sql_b(same))
    -- through the staging path (overwrite onto the full table): split until the bad rows stand alone
    r = assert(b.client:pull_table_data(recv, "conv", { conflict_strategy = "overwrite", page_size = 10000 }))
    assert.equals(19998, r.records_unchanged)
    assert.equals(0, r.records_updated)
    assert.equals(0, r.records_imported)
    assert.equals(2, r.records_failed)
    assert.is_string(r.error_sample)
    assert.equals("completed", latest_transfer(b.client, "conv").status)
    assert.equals(sql_a(same), sql_b(same))
    local t = latest_transfer(b.client, "conv")
    assert.equals(2, t.records_failed)
    assert.is_string(t.metadata.error_sample)
  end)

  it("the local table changed shape: added, dropped and retyped columns", function()
    sql_b("TRUNCATE shape")
    assert(b.client:pull_table_data(recv, "shape"))
    assert.equals(helper.fingerprint(a.dbname, "shape"), helper.fingerprint(b.dbname, "shape"))
    -- the sender gains rows; the receiver's table changes shape
    sql_a("INSERT INTO shape SELECT g, g * 10, (g * 3)::text, 'c' || g FROM generate_series(3001, 3200) g")
    sql_b([[ALTER TABLE shape ADD COLUMN d text NOT NULL DEFAULT 'local default';
      ALTER TABLE shape DROP COLUMN c;
      ALTER TABLE shape ALTER COLUMN a TYPE text;
      ALTER TABLE shape ALTER COLUMN b TYPE integer USING (CASE WHEN b ~ '^[0-9]+$' THEN b::integer END);]])
    local r = assert(b.client:pull_table_data(recv, "shape", { conflict_strategy = "overwrite", page_size = 1000 }))
    assert.same({ "c" }, r.unknown_columns)
    assert.equals(3200, r.records_transferred)
    assert.equals(200, r.records_imported)
    assert.equals(3000 - 6, r.records_updated + r.records_unchanged)
    assert.equals(6, r.records_failed)              -- b = 'n/a' cannot become an integer
    assert.matches("integer", r.error_sample)
    assert.matches("n/a", r.error_sample)
    -- the added column kept its default everywhere, new rows included
    assert.equals("3200", sql_b("SELECT count(*) FROM shape WHERE d = 'local default'"))
    -- int -> text: every value arrived, as text
    local a_rows = "SELECT md5(string_agg(id || '/' || a::text || '/' || b, ',' ORDER BY id)) FROM shape WHERE b <> 'n/a'"
    local b_rows = "SELECT md5(string_agg(id || '/' || a || '/' || b::text, ',' ORDER BY id)) FROM shape WHERE b IS NOT NULL"
    assert.equals(sql_a(a_rows), sql_b(b_rows))
    assert.equals("text", sql_b("SELECT pg_typeof(a)::text FROM shape LIMIT 1"))
    -- the rows that could not convert are the old local ones, untouched
    assert.equals("6", sql_b("SELECT count(*) FROM shape WHERE b IS NULL AND id % 500 = 0"))
    -- a dropped column never reaches SQL: nothing was added back
    assert.equals("0", sql_b("SELECT count(*) FROM information_schema.columns WHERE table_name = 'shape' " ..
      "AND column_name = 'c'"))
  end)

  it("resume after an interruption ends with exactly the sender's rows", function()
    sql_b("TRUNCATE resumable")
    local none, err, detail = b.client:pull_table_data(recv, "resumable", { page_size = 1000,
      on_progress = function(ev) if ev.pages == 4 then error("operator pressed ^C") end end })
    assert.equals("callback_failed", err)
    assert.matches("operator pressed", detail.message)
    local committed = assert_failed_cleanly(b.client, b.dbname, "resumable", none, err, detail)
    assert.equals(4000, committed)
    local first = latest_transfer(b.client, "resumable")
    local r = assert(b.client:pull_table_data(recv, "resumable", { page_size = 1000, resume = true }))
    assert.equals(8000, r.records_imported)
    assert.equals(0, r.records_skipped)             -- nothing fetched twice
    assert.equals(8, r.pages)
    assert.equals(helper.fingerprint(a.dbname, "resumable"), helper.fingerprint(b.dbname, "resumable"))
    local t = latest_transfer(b.client, "resumable")
    assert.equals(first.uuid, t.uuid)               -- the same transfer, continued
    assert.equals("completed", t.status)
    assert.equals(12000, t.records_transferred)
    assert.equals(12000, t.records_created)
    -- resume after a completed pull starts afresh
    r = assert(b.client:pull_table_data(recv, "resumable", { page_size = 5000, resume = true }))
    assert.equals(12000, r.records_skipped)
    assert.are_not.equal(first.uuid, r.transfer_uuid)
  end)
end)

describe("faults from a scripted peer", function()
  local dbname, conninfo, peer, client, conn
  local N = 500

  local function sql(q) return helper.psql(dbname, q) end

  local function rows_json(n, first)
    local rows = {}
    for i = first or 1, n do rows[#rows + 1] = ('{"id":%d,"label":"label %d %s"}'):format(i, i, ("x"):rep(60)) end
    return "[" .. table.concat(rows, ",") .. "]"
  end
  local GOOD = '{"success":true,"table":"wire","data":' .. rows_json(N) .. '}'

  local function serve(pull, row_count)
    peer.reset()
    peer.scenario(API .. "table-schema", { status = 200, body = { success = true, schema = { table_name = "wire",
      columns = { { column_name = "id", data_type = "bigint" }, { column_name = "label", data_type = "text" } } } } })
    peer.scenario(API .. "list-tables", { status = 200, raw = '{"success":true,"tables":[{"name":"wire",' ..
      '"row_count":' .. (row_count or N) .. ',"size_bytes":1,"checksum":null,"depends_on":[]}]}' })
    peer.scenario(API .. "pull-data", pull)
  end

  local function latest_transfer()
    return assert(client:list_transfers { table_name = "wire", limit = 1 })[1]
  end

  local function assert_like_expected()
    assert.equals("0", sql("SELECT count(*) FROM (SELECT * FROM wire EXCEPT SELECT * FROM wire_expected " ..
      "UNION ALL SELECT * FROM wire_expected EXCEPT SELECT * FROM wire) d"))
    assert.equals(tostring(N), sql("SELECT count(*) FROM wire"))
  end

  --- nothing committed, the error recorded; then the fixed sender's rows arrive
  local function assert_nothing_then_retry(none, err, detail)
    assert.is_nil(none)
    assert.is_string(err)
    assert.is_table(detail)
    assert.equals(0, detail.result.records_imported)
    assert.equals("0", sql("SELECT count(*) FROM wire"))
    local t = latest_transfer()
    assert.equals("failed", t.status)
    assert.equals(err, t.error_message)
    serve({ status = 200, raw = GOOD })
    local r = assert(client:pull_table_data(conn, "wire"))
    assert.equals(N, r.records_imported)
    assert.equals("completed", latest_transfer().status)
    assert_like_expected()
  end

  lazy_setup(function()
    dbname, conninfo = helper.create_database("faults_peer")
    sql(([[CREATE TABLE wire (id bigint PRIMARY KEY, label text);
      CREATE TABLE wire_expected AS SELECT g::bigint AS id, 'label ' || g || ' ' || repeat('x', 60) AS label
        FROM generate_series(1, %d) g;]]):format(N))
    peer = helper.start_peer()
    client = pksync.new { db = conninfo, site_url = "https://me.example" }
    assert(client:migrate())
    conn = { site_url = peer.url, auth_token_hash = ("c"):rep(64) }
  end)

  lazy_teardown(function()
    peer.stop()
    client:close()
    helper.drop_database(dbname)
  end)

  before_each(function() sql("TRUNCATE wire") end)

  it("a body cut short of its Content-Length", function()
    serve({ status = 200, mode = "close_mid_body", raw = GOOD })
    local none, err, detail = client:pull_table_data(conn, "wire", { batch_rows = 50 })
    assert.is_true(detail.result.records_transferred == 0)
    assert_nothing_then_retry(none, err, detail)
  end)

  it("a connection closed mid-body without a proper end (chunked, then 444)", function()
    serve({ status = 200, mode = "chunked_cut", raw = GOOD })
    local none, err, detail = client:pull_table_data(conn, "wire", { batch_rows = 50 })
    assert_nothing_then_retry(none, err, detail)
  end)

  it("a sender slower than the timeout", function()
    serve({ status = 200, delay = 3, raw = GOOD })
    local t0 = helper.now()
    local none, err, detail = client:pull_table_data(conn, "wire", { timeout = 1000 })
    assert.is_true(helper.now() - t0 < 2.5)
    assert.equals("offline", err)
    assert.equals("timeout", detail.reason)
    assert_nothing_then_retry(none, err, detail)
  end)

  it("a sender that trickles bytes forever", function()
    serve({ status = 200, mode = "trickle", raw = GOOD })
    local t0 = helper.now()
    local none, err, detail = client:pull_table_data(conn, "wire", { timeout = 1500 })
    assert.is_true(helper.now() - t0 < 3.5)
    assert.equals("offline", err)
    assert.equals("timeout", detail.reason)
    assert_nothing_then_retry(none, err, detail)
  end)

  local bad = {
    { "a 500 with HTML", { status = 500, raw = "<html><body>Internal Server Error</body></html>" },
      "unexpected_response" },
    { "a 502", { status = 502, raw = "<html>Bad Gateway</html>" }, "unexpected_response" },
    { "a 503", { status = 503, body = { success = false, error = "DB Sync module is disabled" } }, "disabled" },
    { "HTML with 200", { status = 200, raw = "<!DOCTYPE html><html><body>Welcome</body></html>" },
      "invalid_response" },
    { "data an object", { status = 200, raw = '{"success":true,"data":{"id":1,"label":"x"}}' }, "invalid_response" },
    { "data a string", { status = 200, raw = '{"success":true,"data":"[{\\"id\\":1}]"}' }, "invalid_response" },
    { "success missing", { status = 200, raw = '{"table":"wire","data":' .. rows_json(10) .. '}' },
      "invalid_response" },
    { "success a string", { status = 200, raw = '{"success":"true","data":' .. rows_json(10) .. '}' },
      "invalid_response" },
    { "the body an array", { status = 200, raw = rows_json(10) }, "invalid_response" },
    { "an empty body", { status = 200, raw = "" }, "invalid_response" },
    { "success false", { status = 200, body = { success = false, error = "Failed to pull data" } },
      "Failed to pull data" },
    { "a 503 with an empty body", { status = 503, raw = "" }, "disabled" },
    { "a 429 with an empty body", { status = 429, raw = "" }, "rate_limited" },
  }
  for _, case in ipairs(bad) do
    it("a wrong answer (" .. case[1] .. ") -> " .. case[3] .. ", nothing committed", function()
      serve(case[2])
      local none, err, detail = client:pull_table_data(conn, "wire")
      assert.equals(case[3], err)
      assert_nothing_then_retry(none, err, detail)
    end)
  end

  it("rows that are arrays, strings, numbers fail one by one with a sample; the objects import", function()
    serve({ status = 200, raw = '{"success":true,"data":[[1,"a"],"row",42,true,null,{"id":6,"label":"six"},' ..
      '{"id":7,"label":"seven"}]}' }, 7)
    local r = assert(client:pull_table_data(conn, "wire"))
    assert.equals(7, r.records_transferred)
    assert.equals(2, r.records_imported)
    assert.equals(5, r.records_failed)
    assert.matches("not a JSON object", r.error_sample)
    assert.equals("6,7", sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM wire"))
    assert.equals(5, latest_transfer().records_failed)
  end)

  it("a body over the client's max_body, with and without Content-Length", function()
    local small = pksync.new { db = conninfo, site_url = "https://me.example", max_body = 16 * 1024 }
    local saved = client
    client = small
    local ok, e = pcall(function()
      assert.is_true(#GOOD > 32 * 1024)
      for _, mode in ipairs { "plain", "chunked" } do
        sql("TRUNCATE wire")
        serve({ status = 200, raw = GOOD, mode = mode ~= "plain" and mode or nil })
        local none, err, detail = client:pull_table_data(conn, "wire")
        assert.equals("response_too_large", err, mode)
        assert.matches("max_body", detail.message)
        assert.is_nil(none)
        assert.equals("0", sql("SELECT count(*) FROM wire"))
        assert.equals("failed", latest_transfer().status)
      end
    end)
    client = saved
    small:close()
    assert(ok, e)
    -- the same answer fits the default cap
    serve({ status = 200, raw = GOOD, mode = "chunked" })
    assert.equals(N, assert(client:pull_table_data(conn, "wire")).records_imported)
    assert_like_expected()
  end)

  it("a gzip body that expands past max_body is capped on its decoded bytes", function()
    local function gzip_b64(text)
      local path = helper.root .. "/" .. helper.unique("body") .. ".json"
      helper.write_file(path, text)
      local out, ok = helper.run("gzip -9 -c " .. helper.shell_quote(path) .. " | base64 -w0")
      assert(ok, out)
      return (out:gsub("%s+$", ""))
    end
    local capped = pksync.new { db = conninfo, site_url = "https://me.example", max_body = 1024 * 1024 }
    local saved = client
    client = capped
    local ok, e = pcall(function()
      -- a small gzip body decodes and imports (the client asks for gzip)
      serve({ status = 200, mode = "gzip", gzip_b64 = gzip_b64(GOOD) })
      local r = assert(client:pull_table_data(conn, "wire"))
      assert.equals(N, r.records_imported)
      local asked
      for _, req in ipairs(peer.requests()) do
        if req.path == API .. "pull-data" then asked = req.headers["accept-encoding"] end
      end
      assert.matches("gzip", asked)
      -- 3 MB of rows in well under 1 MB on the wire
      sql("TRUNCATE wire")
      local bomb = '{"success":true,"table":"wire","data":' .. rows_json(40000) .. '}'
      assert.is_true(#bomb > 3 * 1024 * 1024)
      local packed = gzip_b64(bomb)
      assert.is_true(#packed * 3 / 4 < 1024 * 1024, "compressed size " .. #packed)
      serve({ status = 200, mode = "gzip", gzip_b64 = packed }, 40000)
      local none, err, detail = client:pull_table_data(conn, "wire")
      assert.equals("response_too_large", err)
      assert.matches("max_body", detail.message)
      assert_nothing_then_retry(none, err, detail)
    end)
    client = saved
    capped:close()
    assert(ok, e)
  end)
end)
