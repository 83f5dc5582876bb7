-- Hostile input and credentials, against real servers: two pksync sites in
-- nginx (A serves, B receives), a scripted hostile sender, PostgreSQL.
--
-- Nothing a peer, a request or a policy hook says reaches SQL as text;
-- credentials are compared in constant time and never logged; refused
-- connections are refused through real nginx; the rate limit holds under a
-- concurrent burst; credentials never travel over plain http.
local helper = require "helper"
local pksync = require "pksync"
local core = require "pksync.core"
local util = require "pksync.util"

local json = pksync.json
local API = "/phoenix_kit/sync/api/"

local INCOMING_PW = "B-incoming-Pa55word-7f3kQ"
local DL_PW = "download-Pa55-q9zZ-81"

local SCHEMA = [[
CREATE TABLE users (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, name text);
CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id), title text);
CREATE TABLE texty (id text PRIMARY KEY, v text);
CREATE TABLE secrets (id int PRIMARY KEY, v text);
CREATE TABLE nopk (x int, y text);
CREATE TABLE victims (id int PRIMARY KEY, v text);
CREATE TABLE targets (id bigint PRIMARY KEY, name text);
]]
local DATA = [[
INSERT INTO users SELECT g, 'u' || g || '@example.com', 'User ' || g FROM generate_series(1, 30) g;
INSERT INTO posts SELECT g, 1 + g % 30, 'Post ' || g FROM generate_series(1, 45) g;
INSERT INTO texty SELECT 'k' || g, 'v' || g FROM generate_series(1, 20) g;
INSERT INTO secrets VALUES (1, 'top secret');
INSERT INTO nopk SELECT g, 'row ' || g FROM generate_series(1, 10) g;
INSERT INTO victims VALUES (1, 'still here');
]]
local A_COUNTS = { users = 30, posts = 45, texty = 20, secrets = 1, nopk = 10, victims = 1 }

-- Table names a hostile request or caller may try.
local HOSTILE_TABLES = {
  'x"; DROP TABLE users; --', "users; DROP TABLE users", "users' OR '1'='1", 'users"--',
  "pg_catalog.pg_authid", "pg_authid", "information_schema.tables", "public.users", "../users",
  "us\208\181rs",                      -- Cyrillic e
  "\239\189\149\239\189\147\239\189\133\239\189\146\239\189\147",  -- fullwidth "users"
  "users\0", "users ", "users\n", '"users"', "USERS", ("a"):rep(64), "",
  "pksync_connections", "pksync_transfers", "pksync_settings",
}

describe("security", function()
  local a, b = {}, {}
  local logs, seen, secrets = {}, {}, {}
  local main, main_raw, recv

  local function logger(tag)
    return function(level, msg) logs[#logs + 1] = tag .. " " .. level .. " " .. msg end
  end

  --- Keep every error value and answer body for the final secrets check.
  local function keep(...)
    local n = select("#", ...)
    for i = 1, n do
      local v = select(i, ...)
      local ok, text = pcall(json.encode, v)
      seen[#seen + 1] = ok and text or tostring(v)
    end
    return ...
  end

  local function secret(raw, hash)
    if raw then secrets[#secrets + 1] = raw end
    secrets[#secrets + 1] = hash or core.token_hash(raw)
  end

  local function post(url, endpoint, body)
    local raw = type(body) == "string" and body or json.encode(body)
    local status, text, headers = helper.http("POST", url .. API .. endpoint, raw)
    seen[#seen + 1] = text
    return status, json.decode(text or "") or text, headers
  end

  local function tables_of(dbname)
    return helper.psql(dbname, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables " ..
      "WHERE schemaname = 'public'")
  end

  --- Every table of A still there with its rows; no table added or dropped on either side.
  local function assert_intact()
    for tbl, n in pairs(A_COUNTS) do
      assert.equals(tostring(n), helper.psql(a.dbname, "SELECT count(*) FROM " .. tbl), tbl)
    end
    assert.equals(a.tables, tables_of(a.dbname))
    assert.equals(b.tables, tables_of(b.dbname))
    assert.equals("still here", helper.psql(b.dbname, "SELECT v FROM victims WHERE id = 1"))
    assert.is_true(tonumber(helper.psql(a.dbname, "SELECT count(*) FROM pksync_connections")) >= 1)
  end

  --- A sender connection on A that B may use (never notified).
  local function sender(attrs)
    attrs.name = attrs.name or "probe"
    attrs.direction = "sender"
    attrs.site_url = attrs.site_url or ("https://" .. helper.unique("peer"):gsub("_", "-") .. ".example")
    attrs.notify = false
    attrs.status = attrs.status or "active"
    if attrs.rate_limit_requests_per_minute == nil then attrs.rate_limit_requests_per_minute = 0 end
    local c, raw = assert(a.client:create_connection(attrs))
    secret(raw, c.auth_token_hash)
    return c, raw
  end

  local function start_site(s, extra)
    return helper.start_nginx { name = "sec", port = s.port, log_level = "info", server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q%s } }
      }]]):format(s.conninfo, s.url, extra or "") }
  end

  lazy_setup(function()
    for _, s in ipairs { a, b } do
      s.dbname, s.conninfo = helper.create_database("sec")
      s.port = helper.free_port()
      s.url = "http://127.0.0.1:" .. s.port
      helper.psql(s.dbname, SCHEMA)
    end
    helper.psql(a.dbname, DATA)
    helper.psql(b.dbname, "INSERT INTO victims VALUES (1, 'still here')")
    a.client = pksync.new { db = a.conninfo, site_url = a.url, logger = logger("A") }
    b.client = pksync.new { db = b.conninfo, site_url = b.url, logger = logger("B") }
    assert(a.client:migrate())
    assert(b.client:migrate())
    assert(a.client:set_settings { enabled = true, incoming_mode = "auto_accept" })
    assert(b.client:set_settings { enabled = true, incoming_mode = "require_password",
      incoming_password = INCOMING_PW })
    a.srv = start_site(a)
    b.srv = start_site(b)
    a.tables = tables_of(a.dbname)
    b.tables = tables_of(b.dbname)
    -- A links to B through B's nginx, with B's incoming password
    main, main_raw = assert(a.client:create_connection { name = "A to B", direction = "sender", site_url = b.url,
      password = INCOMING_PW, rate_limit_requests_per_minute = 0, excluded_tables = { "secrets" } })
    secret(main_raw, main.auth_token_hash)
    assert.equals("registered", main.metadata.remote_notification.notification_status)
    assert(a.client:update_connection(main.uuid, { download_password = DL_PW }))
    recv = assert(b.client:list_connections { direction = "receiver" })[1]
    assert.equals(main.auth_token_hash, recv.auth_token_hash)
  end)

  lazy_teardown(function()
    for _, s in ipairs { a, b } do
      if s.srv then s.srv.stop() end
      s.client:close()
      helper.drop_database(s.dbname)
    end
  end)

  it("a full two-site sync works (the baseline for the log check)", function()
    local report = keep(assert(b.client:sync_connection(recv, { tables = { "users", "posts", "texty" } })))
    assert.equals("active", report.sender_status)
    for _, t in ipairs { "users", "posts", "texty" } do
      assert.equals(helper.fingerprint(a.dbname, t), helper.fingerprint(b.dbname, t))
    end
    assert.equals(0, report.totals.failed)
    -- the excluded table is not even listed
    local list = assert(b.client:fetch_sender_tables(recv))
    for _, t in ipairs(list) do assert.are_not.equal("secrets", t.name) end
  end)

  describe("SQL injection", function()
    it("through table names: every request is refused by name, nothing runs", function()
      for _, name in ipairs(HOSTILE_TABLES) do
        for _, ep in ipairs { "table-schema", "table-records", "pull-data" } do
          local status, body = post(a.srv.url, ep, { auth_token_hash = main.auth_token_hash, table_name = name })
          local shown = ep .. " " .. util.display(name)
          if name == "" then
            assert.equals(400, status, shown)
          else
            assert.equals(404, status, shown)
            assert.equals("Table not found", body.error, shown)
          end
        end
      end
      for _, bad in ipairs { 42, { "users" }, { name = "users" }, true } do
        local status, body = post(a.srv.url, "pull-data", { auth_token_hash = main.auth_token_hash, table_name = bad })
        assert.equals(400, status)
        assert.equals("Invalid field types", body.error)
      end
      assert_intact()
    end)

    it("through table names given to the client: refused before any request, or not found", function()
      for _, name in ipairs(HOSTILE_TABLES) do
        if util.valid_ident(name) then
          -- a well-formed name the sender does not have
          local none, err = keep(b.client:fetch_table_schema(recv, name))
          assert.is_nil(none)
          assert.equals("table_not_found", err, name)
          none, err = keep(b.client:pull_table_data(recv, name))
          assert.is_nil(none)
          if name:match("^pksync_") then
            assert.equals("reserved_table", err)        -- never into our own store
          else
            assert.equals("table_missing_locally", err)
          end
        else
          -- a name that is no identifier is data: no such table, nothing asked or written
          for _, call in ipairs { "fetch_table_schema", "fetch_table_records", "fetch_pull_page", "pull_table_data" } do
            local none, err = keep(b.client[call](b.client, recv, name))
            assert.is_nil(none, call .. " " .. util.display(name))
            assert.equals("table_not_found", err, call .. " " .. util.display(name))
          end
        end
      end
      local out = keep(assert(b.client:pull_tables(recv, HOSTILE_TABLES)))
      for _, name in ipairs(HOSTILE_TABLES) do
        assert.equals("table_not_found", out.tables[name].error, util.display(name))
      end
      assert_intact()
    end)

    it("through a sender's column names and row keys: reported unknown, never used", function()
      local peer = helper.start_peer()
      local evil_col = 'name"; DROP TABLE victims; --'
      local evil_key = "extra') ; DROP TABLE victims; --"
      local lookalike = "nam\208\181"
      peer.scenario(API .. "table-schema", { status = 200, body = { success = true, schema = { table_name = "targets",
        columns = { { column_name = "id" }, { column_name = "name" }, { column_name = evil_col },
                    { column_name = "victims" } } } } })
      peer.scenario(API .. "list-tables", { status = 200, raw = '{"success":true,"tables":[{"name":"targets",' ..
        '"row_count":3,"size_bytes":1,"checksum":null,"depends_on":[]}]}' })
      local rows = {}
      for i = 1, 3 do
        rows[i] = json.encode { id = i, name = "n" .. i, [evil_col] = "x", [evil_key] = "y", [lookalike] = "z",
          victims = "DROP TABLE victims" }
      end
      peer.scenario(API .. "pull-data", { status = 200, raw = '{"success":true,"table":"targets","data":[' ..
        table.concat(rows, ",") .. "]}" })
      local conn = { site_url = peer.url, auth_token_hash = ("e"):rep(64) }
      local r = keep(assert(b.client:pull_table_data(conn, "targets")))
      peer.stop()
      assert.equals(3, r.records_imported)
      local unknown = {}
      for _, n in ipairs(r.unknown_columns) do unknown[n] = true end
      for _, n in ipairs { evil_col, "victims", evil_key, lookalike } do
        assert.is_true(unknown[n] == true, "not reported unknown: " .. n)
      end
      assert.is_nil(unknown.name)
      assert.equals("1/n1,2/n2,3/n3", helper.psql(b.dbname, "SELECT string_agg(id || '/' || name, ',' ORDER BY id) FROM targets"))
      assert_intact()
    end)

    it("a hostile sender cannot write into the receiver's own store tables", function()
      local peer = helper.start_peer()
      local evil_hash = core.token_hash("attacker")
      peer.scenario(API .. "get-connection-status", { status = 200, body = { success = true, status = "active",
        name = "evil" } })
      peer.scenario(API .. "list-tables", { status = 200, raw = '{"success":true,"tables":[' ..
        '{"name":"pksync_connections","row_count":1,"size_bytes":1,"checksum":null,"depends_on":[]},' ..
        '{"name":"pksync_settings","row_count":1,"size_bytes":1,"checksum":null,"depends_on":[]},' ..
        '{"name":"pksync_transfers","row_count":1,"size_bytes":1,"checksum":null,"depends_on":[]}]}' })
      peer.scenario(API .. "table-schema", { status = 200, body = { success = true, schema = {
        columns = { { column_name = "uuid" }, { column_name = "name" }, { column_name = "direction" },
          { column_name = "site_url" }, { column_name = "auth_token_hash" }, { column_name = "auth_lookup" },
          { column_name = "status" }, { column_name = "key" }, { column_name = "value" } } } } })
      peer.scenario(API .. "pull-data", { status = 200, body = { success = true, data = { {
        uuid = "6f1c2d3e-0000-4000-8000-000000000001", name = "backdoor", direction = "sender",
        site_url = "https://evil.example", auth_token_hash = evil_hash,
        auth_lookup = require("pksync.store")._lookup_key(evil_hash), status = "active",
        key = "incoming_mode", value = "auto_accept" } } } })
      local conn = { site_url = peer.url, auth_token_hash = ("f"):rep(64) }
      local before = helper.fingerprint(b.dbname, "pksync_connections") .. helper.fingerprint(b.dbname, "pksync_settings")
      for _, t in ipairs { "pksync_connections", "pksync_settings", "pksync_transfers" } do
        local none, err = keep(b.client:pull_table_data(conn, t, { conflict_strategy = "overwrite" }))
        assert.is_nil(none)
        assert.equals("reserved_table", err)
      end
      local report = keep(assert(b.client:sync_connection(conn)))
      assert.equals(3, #report.tables)
      for _, t in ipairs(report.tables) do assert.equals("reserved_table", t.error, t.name) end
      for _, r in ipairs(peer.requests()) do
        assert.is_nil(r.path:match("pull%-data$"), "no row was even asked for")
      end
      peer.stop()
      assert.equals(before, helper.fingerprint(b.dbname, "pksync_connections") ..
        helper.fingerprint(b.dbname, "pksync_settings"))
      assert.equals("0", helper.psql(b.dbname, "SELECT count(*) FROM pksync_connections WHERE name = 'backdoor'"))
      assert_intact()
    end)

    it("through JSON keys and field values of requests", function()
      local status, body = post(a.srv.url, "table-records", '{"auth_token_hash":"' .. main.auth_token_hash ..
        '","table_name":"users","\\"; DROP TABLE users; --":1,"limit":"5; DROP TABLE users",' ..
        '"offset":"0; DROP TABLE users","uuid_format":"text\'; DROP TABLE users"}')
      assert.equals(200, status)
      assert.equals(10, #body.records)              -- limit and offset fell back to their defaults
      -- a duplicate key: the decoder keeps one of them; either way a name, never SQL
      status = post(a.srv.url, "table-schema", '{"auth_token_hash":"' .. main.auth_token_hash ..
        '","table_name":"users","table_name":"users; DROP TABLE users"}')
      assert.is_true(status == 200 or status == 404)
      -- conflict_strategy is only recorded, as a parameter
      local evil = "');DROP TABLE users"
      status = post(a.srv.url, "pull-data", { auth_token_hash = main.auth_token_hash, table_name = "texty",
        conflict_strategy = evil, limit = "1; DROP TABLE users" })
      assert.equals(200, status)
      assert.equals(evil, helper.psql(a.dbname, "SELECT conflict_strategy FROM pksync_transfers " ..
        "WHERE direction = 'send' ORDER BY inserted_at DESC LIMIT 1"))
      assert_intact()
    end)

    it("through forged cursors", function()
      local function pull(tbl, after)
        return post(a.srv.url, "pull-data", { auth_token_hash = main.auth_token_hash, table_name = tbl,
          after = after, limit = 5 })
      end
      local b64 = core.base64_encode
      local forged = {
        { "users", "1; DROP TABLE users" },
        { "users", b64('{"k":["1) OR (1=1; DROP TABLE users; --"],"t":null}') },
        { "users", b64('{"k":["1"],"t":"\'; DROP TABLE users; --"}') },
        { "users", b64('{"k":["1","2"],"t":null}') },
        { "users", b64('{"k":[1],"t":null}') },
        { "users", b64('{"k":{"0":"1"},"t":null}') },
        { "users", b64('{"k":[["1"]],"t":null}') },
        { "users", b64(("["):rep(100) .. ("]"):rep(100)) },
        { "users", b64("not json at all") },
        { "users", ("A"):rep(9000) },
        { "nopk", b64('{"k":["x; DROP TABLE nopk; --"],"t":null}') },
        { "texty", b64('{"k":["k1"],"t":"x\'::uuid); DROP TABLE texty; --"}') },
      }
      for i, f in ipairs(forged) do
        local status, body = pull(f[1], f[2])
        assert.equals(400, status, "forged cursor #" .. i)
        assert.equals("invalid_cursor", body.error_code, "forged cursor #" .. i)
      end
      -- a text key is only ever a value: rows after that exact string
      local evil = "k1' OR '1'='1"
      local status, body = pull("texty", b64(json.encode { k = { evil }, t = pksync.null }))
      assert.equals(200, status)
      local expected = helper.psql(a.dbname, "SELECT count(*) FROM texty WHERE id > 'k1'' OR ''1''=''1'")
      assert.equals(math.min(5, tonumber(expected)), #body.data)
      assert.is_true(#body.data > 0)
      assert.is_true(body.data[1].id > evil)
      -- a ctid cursor is a tid parameter: text after it never becomes SQL
      local plain = select(2, pull("nopk", b64('{"k":["(0,1)"],"t":null}')))
      status, body = pull("nopk", b64('{"k":["(0,1)) OR true; DROP TABLE nopk; --"],"t":null}'))
      assert.equals(200, status)
      assert.same(plain.data, body.data)
      assert.equals(5, #body.data)
      assert.are_not.equal(1, body.data[1].x)
      -- a well-formed transfer id that is no uuid cannot touch anything
      status = pull("users", b64('{"k":["3"],"t":"----"}'))
      assert.equals(200, status)
      assert_intact()
    end)

    it("through row filters", function()
      local function records(tbl, fields)
        fields.auth_token_hash, fields.table_name = main.auth_token_hash, tbl
        return post(a.srv.url, "table-records", fields)
      end
      for _, f in ipairs {
        { ids = { "1; DROP TABLE users" } }, { ids = { 1, "1 OR 1=1" } }, { id_start = "1 OR 1=1" },
        { id_end = "0; DROP TABLE users" }, { ids = { { "1" } } }, { ids = "1,2,3" },
      } do
        local status, body = records("users", f)
        assert.equals(400, status, json.encode(f))
        assert.equals("invalid_filter", body.error_code)
      end
      local status, body = records("texty", { ids = { "k1'); DROP TABLE users; --", "k2" } })
      assert.equals(200, status)
      assert.equals(1, #body.records)               -- only the real key matched
      assert.equals("k2", body.records[1].id)
      -- the client passes such ids along as values; the sender refuses them for an integer key
      local none, err = keep(b.client:fetch_table_records(recv, "users", { ids = { "1; DROP TABLE users" } }))
      assert.is_nil(none)
      assert.equals("invalid_filter", err)
      assert_intact()
    end)

    it("through receiving policy hooks (tables, strategy, transform)", function()
      local evil_key = 'name"; DROP TABLE users; --'
      local report = keep(assert(b.client:sync_connection(recv, { policy = {
        tables = function() return { "users; DROP TABLE users", "nopk", "pksync_connections" } end,
        strategy = function(t) return t == "nopk" and "skip; DROP TABLE nopk" or "skip" end,
      } })))
      local by = {}
      for _, t in ipairs(report.tables) do by[t.name] = t end
      assert.equals("failed", by["users; DROP TABLE users"].action)
      assert.equals("table_not_found", by["users; DROP TABLE users"].error)
      assert.equals("invalid_strategy", by.nopk.error)
      assert.matches("unknown conflict strategy", by.nopk.message)
      assert.equals("table_not_found", by.pksync_connections.error)
      local none, err = keep(b.client:sync_connection(recv, { policy = {
        tables = function() return "users; DROP TABLE users" end } }))
      assert.is_nil(none)
      assert.equals("hook_failed", err)
      -- transform returns rows with hostile keys: reported unknown, never used
      helper.psql(b.dbname, "DELETE FROM texty")
      report = keep(assert(b.client:sync_connection(recv, { tables = { "texty" }, policy = {
        transform = function(_, row) row[evil_key] = "x" row["v) VALUES ('p'); --"] = "y" row.v = row.v .. "!" return row end,
      } })))
      local t = report.tables[1]
      assert.equals("pulled", t.action)
      assert.equals(20, t.imported)
      local unknown = {}
      for _, n in ipairs(t.unknown_columns) do unknown[n] = true end
      assert.is_true(unknown[evil_key])
      assert.equals("20", helper.psql(b.dbname, "SELECT count(*) FROM texty WHERE v LIKE 'v%!'"))
      assert_intact()
    end)

    it("through serving policy hooks (redact, table_allowed) in nginx", function()
      local policy = helper.root .. "/" .. helper.unique("policy") .. ".lua"
      helper.write_file(policy, [[
        return {
          redact = function(conn, t) return { 'email"; DROP TABLE users; --', "email", 42, "name\0x" } end,
          table_allowed = function(conn, t) if t == "posts" then return false end return "yes; DROP TABLE users" end,
        }]])
      local s = { conninfo = a.conninfo, port = helper.free_port() }
      s.url = "http://127.0.0.1:" .. s.port
      local srv = start_site(s, (", policy_file = %q"):format(policy))
      local status, body = post(srv.url, "list-tables", { auth_token_hash = main.auth_token_hash })
      assert.equals(200, status)
      local names = {}
      for _, t in ipairs(body.tables) do names[t.name] = true end
      assert.is_true(names.users)
      assert.is_nil(names.posts)
      status, body = post(srv.url, "table-records", { auth_token_hash = main.auth_token_hash, table_name = "users" })
      assert.equals(200, status)
      assert.equals(10, #body.records)
      assert.is_nil(body.records[1].email)
      assert.equals("User 1", body.records[1].name)
      status, body = post(srv.url, "pull-data", { auth_token_hash = main.auth_token_hash, table_name = "users" })
      assert.equals(200, status)
      assert.equals(30, #body.data)
      assert.is_nil(body.data[1].email)
      status = post(srv.url, "pull-data", { auth_token_hash = main.auth_token_hash, table_name = "posts" })
      assert.equals(403, status)
      srv.stop()
      assert.is_nil(srv.error_log():match("%[alert%]"))
      seen[#seen + 1] = srv.error_log()
      assert_intact()
    end)
  end)

  describe("credentials", function()
    it("core.secure_equals compares by content and length", function()
      local h = core.token_hash("some token")
      assert.is_true(core.secure_equals(h, h .. ""))
      assert.is_false(core.secure_equals(h, h:sub(1, 63) .. (h:sub(64) == "0" and "1" or "0")))
      assert.is_false(core.secure_equals(h, h:sub(1, 63)))
      assert.is_false(core.secure_equals(h, h .. "0"))
      assert.is_false(core.secure_equals(h, ""))
      assert.is_true(core.secure_equals("", ""))
    end)

    it("the server decides on token hashes with core.secure_equals, never SQL equality", function()
      local site = pksync.new { db = a.conninfo, site_url = a.url, logger = logger("A-local") }
      local conn = sender { name = "ct" }
      local lookup = require("pksync.store")._lookup_key
      local function list(hash)
        local res = site:handle { method = "POST", path = API .. "list-tables", remote_addr = "127.0.0.1",
          body = json.encode { auth_token_hash = hash } }
        seen[#seen + 1] = res.body
        return res.status
      end
      local real = core.secure_equals
      local calls = {}
      core.secure_equals = function(x, y)
        calls[#calls + 1] = { x, y }
        return real(x, y)
      end
      local ok, err = pcall(function()
        local h = conn.auth_token_hash
        assert.equals(200, list(h))
        assert.same({ h, h }, calls[#calls])
        -- a candidate whose lookup digest matches but whose hash differs: the compare decides
        local wrong = h:sub(1, 63) .. (h:sub(64) == "a" and "b" or "a")
        for _, probe in ipairs { wrong, "abc", h .. "00" } do
          helper.psql(a.dbname, ("UPDATE pksync_connections SET auth_lookup = '%s' WHERE uuid = '%s'"):format(
            lookup(probe), conn.uuid))
          calls = {}
          assert.equals(401, list(probe))
          assert.equals(1, #calls)
          assert.same({ h, probe }, calls[1])
        end
        -- and its verdict is final: a compare that says yes lets the wrong hash in
        helper.psql(a.dbname, ("UPDATE pksync_connections SET auth_lookup = '%s' WHERE uuid = '%s'"):format(
          lookup("abc"), conn.uuid))
        core.secure_equals = function() return true end
        assert.equals(200, list("abc"))
        core.secure_equals = function() return false end
        helper.psql(a.dbname, ("UPDATE pksync_connections SET auth_lookup = '%s' WHERE uuid = '%s'"):format(
          lookup(h), conn.uuid))
        assert.equals(401, list(h))
        -- url + hash lookups (verify-connection) compare every candidate the same way
        core.secure_equals = function(x, y)
          calls[#calls + 1] = { x, y }
          return real(x, y)
        end
        calls = {}
        local res = site:handle { method = "POST", path = API .. "verify-connection", body = json.encode {
          sender_url = conn.site_url, auth_token_hash = "abc" } }
        assert.equals(404, res.status)
        assert.same({ { h, "abc" } }, calls)
      end)
      core.secure_equals = real
      site:close()
      assert(ok, err)
    end)

    it("the incoming password is checked by its salted hash (through nginx and in-process)", function()
      local function register(password, url)
        return post(b.srv.url, "register-connection", { sender_url = url or ("https://" ..
          helper.unique("r"):gsub("_", "-") .. ".example"), connection_name = "probe",
          auth_token = core.token_generate(), password = password })
      end
      local status, body = register(INCOMING_PW)
      assert.equals(200, status)
      assert.is_true(body.success)
      for _, pw in ipairs { INCOMING_PW:sub(1, -2) .. "x", INCOMING_PW .. "x", "x", INCOMING_PW:upper() } do
        status, body = register(pw)
        assert.equals(401, status)
        assert.equals("Invalid password", body.error)
      end
      status, body = register(nil)
      assert.equals(401, status)
      assert.equals("Password required for incoming connections", body.error)
      -- stored salted, never in clear
      local stored = helper.psql(b.dbname, "SELECT value::text FROM pksync_settings WHERE key = 'incoming_password_hash'")
      assert.is_nil(stored:find(INCOMING_PW, 1, true))
      -- and the verdict is core.password_verify's (CRYPTO_memcmp on the derived key)
      local site = pksync.new { db = b.conninfo, site_url = b.url, logger = logger("B-local") }
      local real = core.password_verify
      local seen_pw = {}
      core.password_verify = function(pw, hash)
        seen_pw[#seen_pw + 1] = pw
        return real(pw, hash)
      end
      local ok, err = pcall(function()
        local res = site:handle { method = "POST", path = API .. "register-connection", body = json.encode {
          sender_url = "https://pw-probe.example", connection_name = "p", auth_token = core.token_generate(),
          password = "wrong" } }
        assert.equals(401, res.status)
        assert.same({ "wrong" }, seen_pw)
        core.password_verify = function() return true end
        res = site:handle { method = "POST", path = API .. "register-connection", body = json.encode {
          sender_url = "https://pw-probe.example", connection_name = "p", auth_token = core.token_generate(),
          password = "wrong" } }
        assert.equals(200, res.status)
      end)
      core.password_verify = real
      site:close()
      assert(ok, err)
    end)
  end)

  describe("refused through real nginx", function()
    local function probe(hash, tbl)
      local s1, b1 = post(a.srv.url, "list-tables", { auth_token_hash = hash })
      local s2, b2 = post(a.srv.url, "pull-data", { auth_token_hash = hash, table_name = tbl or "users" })
      return s1, b1, s2, b2
    end

    it("unknown, pending, suspended, revoked and expired connections", function()
      local s1, b1, s2, b2 = probe(core.token_hash("never issued"))
      assert.same({ 401, "Invalid connection", 401, "Invalid connection" }, { s1, b1.error, s2, b2.error })
      for _, st in ipairs { "pending", "suspended", "revoked", "expired" } do
        local conn = sender { status = st }
        s1, b1, s2, b2 = probe(conn.auth_token_hash)
        assert.same({ 403, "Connection is not active", 403, "Connection is not active" },
          { s1, b1.error, s2, b2.error }, st)
        local none, err = keep(b.client:fetch_sender_tables({ site_url = a.srv.url,
          auth_token_hash = conn.auth_token_hash }))
        assert.is_nil(none)
        assert.equals("forbidden", err)
      end
      local conn = sender { expires_at = "2020-01-01T00:00:00Z" }
      s1, b1, s2, b2 = probe(conn.auth_token_hash)
      assert.same({ 403, "Connection has expired", 403, "Connection has expired" }, { s1, b1.error, s2, b2.error })
      -- the same connection, not expired: served (the probe can tell)
      assert(a.client:update_connection(conn.uuid, { expires_at = "2999-01-01T00:00:00Z" }))
      s1, b1, s2 = probe(conn.auth_token_hash)
      assert.same({ 200, 200 }, { s1, s2 })
    end)

    it("addresses outside the whitelist and hours outside the allowed ones", function()
      local conn = sender { ip_whitelist = { "10.9.8.7", "192.168.0.0/16", "::2" } }
      local s1, b1, s2, b2 = probe(conn.auth_token_hash)
      assert.same({ 403, "IP address not allowed", 403, "IP address not allowed" }, { s1, b1.error, s2, b2.error })
      assert(a.client:update_connection(conn.uuid, { ip_whitelist = { "10.9.8.7", "127.0.0.0/8" } }))
      s1, b1, s2 = probe(conn.auth_token_hash)
      assert.same({ 200, 200 }, { s1, s2 })
      local hour = tonumber(os.date("!%H"))
      conn = sender { allowed_hours_start = (hour + 2) % 24, allowed_hours_end = (hour + 3) % 24 }
      s1, b1, s2, b2 = probe(conn.auth_token_hash)
      assert.same({ 403, 403 }, { s1, s2 })
      assert.equals("Access is not allowed at this hour", b2.error)
      assert(a.client:update_connection(conn.uuid, { allowed_hours_start = hour, allowed_hours_end = (hour + 1) % 24 }))
      s1, b1, s2 = probe(conn.auth_token_hash)
      assert.same({ 200, 200 }, { s1, s2 })
    end)

    it("excluded tables, tables outside allowed_tables, and the store's own tables", function()
      local conn = sender { excluded_tables = { "secrets" } }
      local h = conn.auth_token_hash
      local status, body = post(a.srv.url, "list-tables", { auth_token_hash = h })
      assert.equals(200, status)
      local names = {}
      for _, t in ipairs(body.tables) do names[#names + 1] = t.name end
      table.sort(names)
      assert.same({ "nopk", "posts", "targets", "texty", "users", "victims" }, names)
      for _, ep in ipairs { "table-schema", "table-records", "pull-data" } do
        status, body = post(a.srv.url, ep, { auth_token_hash = h, table_name = "secrets" })
        assert.equals(403, status, ep)
        assert.equals("This connection is not authorised to access that table", body.error)
        for _, store in ipairs { "pksync_connections", "pksync_transfers", "pksync_settings" } do
          status = post(a.srv.url, ep, { auth_token_hash = h, table_name = store })
          assert.equals(404, status, ep .. " " .. store)
        end
      end
      conn = sender { allowed_tables = { "users" } }
      status, body = post(a.srv.url, "list-tables", { auth_token_hash = conn.auth_token_hash })
      assert.equals(1, #body.tables)
      assert.equals("users", body.tables[1].name)
      assert.equals(403, (post(a.srv.url, "pull-data", { auth_token_hash = conn.auth_token_hash, table_name = "posts" })))
      assert.equals(200, (post(a.srv.url, "pull-data", { auth_token_hash = conn.auth_token_hash, table_name = "users" })))
      local none, err = keep(b.client:pull_table_data({ site_url = a.srv.url, auth_token_hash = conn.auth_token_hash },
        "posts"))
      assert.is_nil(none)
      assert.equals("forbidden", err)
      assert_intact()
    end)

    it("the rate limit holds under a burst of 100 concurrent requests", function()
      local conn = sender { rate_limit_requests_per_minute = 20 }
      local body = helper.root .. "/" .. helper.unique("burst") .. ".json"
      helper.write_file(body, json.encode { auth_token_hash = conn.auth_token_hash })
      local out, ok = helper.run(("seq 100 | xargs -P 16 -I{} curl -s -m 30 -o /dev/null " ..
        "-w '%%{http_code} %%header{retry-after}\\n' -X POST -H 'content-type: application/json' " ..
        "--data-binary @%s %s"):format(body, a.srv.url .. API .. "list-tables"))
      assert(ok, out)
      local counts, retry_ok, lines = {}, 0, 0
      for code, retry in out:gmatch("(%d+) ?([^\n]*)\n") do
        lines = lines + 1
        counts[code] = (counts[code] or 0) + 1
        if code == "429" and tonumber(retry) and tonumber(retry) >= 1 and tonumber(retry) <= 60 then
          retry_ok = retry_ok + 1
        end
      end
      assert.equals(100, lines)
      assert.same({ ["200"] = 20, ["429"] = 80 }, counts)
      assert.equals(80, retry_ok)
      local status, st = helper.http("GET", a.srv.url .. API .. "status")
      assert.equals(200, status)
      assert.is_true(json.decode(st).enabled)
      assert.is_nil(a.srv.error_log():match("exited on signal"))
      -- still limited, and the client says so
      local none, err, detail = keep(b.client:fetch_sender_tables({ site_url = a.srv.url,
        auth_token_hash = conn.auth_token_hash }))
      assert.is_nil(none)
      assert.equals("rate_limited", err)
      assert.equals(429, detail.http_status)
    end)
  end)

  describe("require_tls", function()
    local REMOTE = "http://sync.example.invalid"

    it("refuses every call that carries a credential over plain http, before any network activity", function()
      local client = pksync.new { db = b.conninfo, site_url = "https://b.example", logger = logger("B-tls") }
      local conn = { site_url = REMOTE, auth_token_hash = main.auth_token_hash, direction = "receiver", name = "x" }
      local calls = {
        { "fetch_sender_tables", conn }, { "fetch_table_schema", conn, "users" },
        { "fetch_table_records", conn, "users" }, { "fetch_pull_page", conn, "users" },
        { "query_sender_status", conn }, { "verify_connection", conn }, { "notify_delete", conn },
        { "notify_status_change", conn, "suspended" }, { "pull_table_data", conn, "users" },
        { "pull_tables", conn, nil }, { "sync_connection", conn },
      }
      local t0 = helper.now()
      for _, c in ipairs(calls) do
        local none, err, detail = keep(client[c[1]](client, c[2], c[3]))
        assert.is_nil(none, c[1])
        assert.equals("insecure_transport", err, c[1])
        assert.matches("plain http", detail.message)
      end
      local reg = keep(client:notify_remote_site({ direction = "sender", site_url = REMOTE, name = "x" }, main_raw))
      assert.is_false(reg.success)
      assert.equals("insecure_transport", reg.error)
      -- a sender's create_connection and regenerate_token register over the same rule
      local sc, raw = client:create_connection { name = "tls", direction = "sender", site_url = REMOTE }
      secret(raw, sc.auth_token_hash)
      assert.equals("insecure_transport", sc.metadata.remote_notification.notification_error)
      local sc2, raw2 = client:regenerate_token(sc.uuid)
      secret(raw2, sc2.auth_token_hash)
      assert.equals("insecure_transport", sc2.metadata.remote_notification.notification_error)
      local _, remote = client:suspend_connection(sc.uuid, "test")
      assert.equals("insecure_transport", remote)
      local deleted
      deleted, remote = client:delete_connection(sc.uuid)
      assert.is_true(deleted)
      assert.equals("insecure_transport", remote)
      assert.is_true(helper.now() - t0 < 2, "no request was attempted")
      -- with require_tls = false the same calls do reach for the network (and find nothing)
      local lax = pksync.new { db = b.conninfo, site_url = "https://b.example", require_tls = false }
      local none, err = keep(lax:fetch_sender_tables(conn))
      assert.is_nil(none)
      assert.equals("offline", err)
      none, err = keep(lax:pull_table_data(conn, "users"))
      assert.equals("offline", err)
      -- https is allowed (and finds nothing here)
      none, err = keep(client:fetch_sender_tables({ site_url = "https://sync.example.invalid",
        auth_token_hash = main.auth_token_hash }))
      assert.equals("offline", err)
      -- GET status carries no credential: allowed over http
      none, err = client:check_remote_status(REMOTE)
      assert.equals("offline", err)
      lax:close()
      client:close()
    end)

    it("sends nothing at all: a loopback address in disguise gets no request unless require_tls = false", function()
      local peer = helper.start_peer()
      peer.scenario(API .. "list-tables", { status = 200, body = { success = true, tables = {} } })
      -- 127.1 is 127.0.0.1 to libcurl, but not a loopback name pksync accepts for credentials
      local disguised = "http://127.1:" .. peer.port
      local client = pksync.new { site_url = "https://b.example" }
      local none, err = keep(client:fetch_sender_tables { site_url = disguised, auth_token_hash = main.auth_token_hash })
      assert.is_nil(none)
      assert.equals("insecure_transport", err)
      assert.equals(0, #peer.requests())
      local lax = pksync.new { site_url = "https://b.example", require_tls = false }
      assert.same({}, assert(lax:fetch_sender_tables { site_url = disguised, auth_token_hash = main.auth_token_hash }))
      assert.equals(1, #peer.requests())
      -- plain loopback is allowed by default
      assert(client:fetch_sender_tables { site_url = peer.url, auth_token_hash = main.auth_token_hash })
      assert.equals(2, #peer.requests())
      peer.stop()
      client:close()
      lax:close()
    end)
  end)

  it("raw tokens, hashes and passwords never appear in any log or error", function()
    -- a few more error paths, with every credential in play
    keep(b.client:fetch_table_records(recv, "secrets"))
    keep(b.client:pull_table_data({ site_url = a.srv.url, auth_token_hash = core.token_hash("nope") }, "users"))
    keep(a.client:notify_remote_site(main, main_raw, { password = "wrong " .. INCOMING_PW }))
    keep(post(b.srv.url, "register-connection", { sender_url = a.url, connection_name = "again",
      auth_token = main_raw, password = INCOMING_PW }))
    keep(post(b.srv.url, "register-connection", { sender_url = "https://x.example", connection_name = "pw",
      auth_token = main_raw, password = DL_PW }))
    keep(b.client:query_sender_status({ site_url = a.srv.url, auth_token_hash = "short" }))
    local everything = table.concat(logs, "\n") .. "\n" .. table.concat(seen, "\n") .. "\n" ..
      a.srv.error_log() .. "\n" .. b.srv.error_log()
    -- the capture is real: both servers logged at info, the clients logged their work
    assert.matches("created receiver connection", b.srv.error_log())
    assert.matches("%[info%]", a.srv.error_log())
    assert.matches("pulled users", table.concat(logs, "\n"))
    assert.is_true(#seen > 50)
    -- the 8-character prefix of the hash is all a log line may show
    assert.is_truthy(everything:find(main.auth_token_hash:sub(1, 8), 1, true))
    for _, s in ipairs(secrets) do
      assert.is_nil(everything:find(s, 1, true), "a secret leaked: " .. s:sub(1, 8) .. "...")
      assert.is_nil(everything:find(s:sub(1, 16), 1, true), "a secret's first 16 characters leaked")
    end
    for _, pw in ipairs { INCOMING_PW, DL_PW } do
      assert.is_nil(everything:find(pw, 1, true), "a password leaked")
    end
  end)
end)
