-- The pksync command-line tool, run as a real process (lua5.4 or luajit,
-- as the suite's runtime) against two real sites: A (a sender, with data)
-- and B (a receiver, empty tables), each a PostgreSQL database served by
-- nginx.
local helper = require "helper"
local pksync = require "pksync"

local json = pksync.json
local LUA = helper.runtime == "jit" and "luajit" or "lua5.4"
local BIN = helper.repo .. "/bin/pksync"

local SCHEMA = [[
CREATE TABLE categories (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (id int PRIMARY KEY, category_id int REFERENCES categories (id), name text, qty int);
]]

local ROWS = [[
INSERT INTO categories SELECT g, 'category ' || g FROM generate_series(1, 5) g;
INSERT INTO products SELECT g, 1 + g % 5, 'product ' || g, CASE WHEN g = 13 THEN -1 ELSE g END
  FROM generate_series(1, 40) g;
]]

-- Every output of every run, checked for secrets at the end.
local transcript = {}

--- Run the CLI; returns {out, err, code, json()}.
local function cli(args, env, stdin)
  local base = helper.root .. "/" .. helper.unique("cli")
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = helper.shell_quote(a) end
  helper.write_file(base .. ".in", stdin or "")
  local cmd = ("cd %s && env -u PKSYNC_PROGRESS %s %s %s %s <%s.in >%s.out 2>%s.err; echo $? >%s.rc"):format(
    helper.shell_quote(helper.repo), env or "", LUA, helper.shell_quote(BIN), table.concat(quoted, " "),
    base, base, base, base)
  os.execute(cmd)
  local r = helper.command_result(base)
  transcript[#transcript + 1] = r.out .. r.err
  return r
end

local expect = helper.expect_exit

local function join(...)
  local out = {}
  for _, list in ipairs { ... } do
    for _, v in ipairs(list) do out[#out + 1] = v end
  end
  return out
end

--- Start nginx serving a pksync site for `conninfo`.
local function start_site(conninfo)
  local port = helper.free_port()
  local url = "http://127.0.0.1:" .. port
  local srv = helper.start_nginx { name = "cli", port = port, server = ([[
    location /phoenix_kit/sync/api/ {
      content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q, timeout = 5000 } }
    }]]):format(conninfo, url) }
  srv.site_url = url
  return srv
end

describe("pksync CLI", function()
  local a, b = {}, {}
  local raw_token          -- A's sender token, shown once by `connections add`
  local PASSWORD = "s3cret-pw-xyzzy"

  -- A's and B's command lines: A finds its URL in its settings, B is told.
  local function on_a(args, env) return cli(join({ "--db", a.conninfo }, args), env) end
  local function on_b(args, env) return cli(join({ "--db", b.conninfo, "--site-url", b.srv.site_url }, args), env) end
  local function sql_a(q) return helper.psql(a.dbname, q) end
  local function sql_b(q) return helper.psql(b.dbname, q) end

  lazy_setup(function()
    for _, s in ipairs { a, b } do
      s.dbname, s.conninfo = helper.create_database("cli")
      s.srv = start_site(s.conninfo)
      s.client = pksync.new { db = s.conninfo, site_url = s.srv.site_url }
      assert(s.client:migrate())
      assert(s.client:set_settings { enabled = true, incoming_mode = "auto_accept" })
    end
    sql_a(SCHEMA .. ROWS .. "CREATE TABLE secrets (id int PRIMARY KEY); INSERT INTO secrets VALUES (1);")
    -- B's products refuse a negative quantity: A's row 13 fails there
    sql_b(SCHEMA .. "ALTER TABLE products ADD CHECK (qty >= 0);")
  end)

  local serve_pid   -- nginx started by `serve --start`, stopped here if a test failed first

  lazy_teardown(function()
    if serve_pid and helper.read_file(serve_pid) then helper.run("kill $(cat " .. helper.shell_quote(serve_pid) .. ")") end
    for _, s in ipairs { a, b } do
      if s.srv then s.srv.stop() end
      if s.client then s.client:close() end
      if s.dbname then helper.drop_database(s.dbname) end
    end
  end)

  describe("usage", function()
    it("exits 2 on an unknown command, option or a missing argument", function()
      for _, args in ipairs {
        { "frobnicate" }, { "connections" }, { "connections", "frob" }, { "tables" }, { "schema", "x" },
        { "status", "--bogus", "http://x.example" }, { "connections", "suspend", "x", "--reason" },
        { "connections", "approve", "x", "--reason", "r" }, { "status", "http://x.example", "extra" },
        { "--timeout", "soon", "status", "http://x.example" }, { "pull", "x", "--strategy", "bogus" },
        { "pull", "x", "--policy", "/nonexistent/policy.lua" }, { "schema", "x", "bad-name" },
        { "settings", "--enable", "--disable" }, { "settings", "--incoming-mode", "nope" },
        { "connections", "add", "--name", "r", "--direction", "receiver", "--url", "http://x.example" },
        { "connections", "list", "--direction", "sideways" }, { "serve", "--dir", "/tmp/x" },
        { "preview", "x", "t", "--limit", "0" },
      } do
        local r = expect(cli(args), 2)
        assert.matches("^pksync: usage: [^\n]+\n$", r.err)
        assert.equals("", r.out)
      end
      local r = expect(cli { "frobnicate", "--json" }, 2)
      assert.equals(2, r.json().exit_code)
      assert.equals("usage", r.json().context)
    end)

    it("prints help with the exit codes", function()
      local r = expect(cli { "--help" }, 0)
      assert.matches("Exit codes:", r.out)
      assert.matches("70  internal error", r.out)
      assert.matches("connections add", r.out)
      r = expect(cli { "pull", "-h" }, 0)
      assert.matches("Usage: pksync pull CONN %[TABLE%.%.%.%]", r.out)
      assert.matches("%-%-dry%-run", r.out)
    end)

    it("turns a bug into exit 70 and one line, in process too", function()
      local cli_mod = require "pksync.cli"
      local errs = {}
      local broken = { write = function() error("disk on fire") end, flush = function() end }
      local sink = { write = function(_, ...) for _, s in ipairs { ... } do errs[#errs + 1] = s end end,
                     flush = function() end }
      assert.equals(70, cli_mod.main({ "--help" }, { stdout = broken, stderr = sink }))
      local text = table.concat(errs)
      assert.matches("^pksync: internal error: .*disk on fire\n$", text)
      assert.is_nil(text:find("traceback", 1, true))
    end)
  end)

  describe("output", function()
    local output = require "pksync.cli_output"

    it("draws the progress line with rate and ETA, none without a row count", function()
      assert.equals("products      [#########-----------]  45,000/100,000 rows  12,345 rows/s  ETA 4s",
        output.progress_line { table = "products", rows = 45000, row_count = 100000, seconds = 3.645 })
      assert.equals("products      [--------------------]  1,500 rows  500 rows/s",
        output.progress_line { table = "products", rows = 1500, seconds = 3 })
      assert.equals("t             [####################]  10/10 rows  10 rows/s",
        output.progress_line { table = "t", rows = 10, row_count = 10, seconds = 1, done = true })
    end)

    it("formats numbers, sizes and cells for short lines", function()
      assert.same({ "0", "999", "1,000", "-1,234,567", "-" },
        { output.int(0), output.int(999), output.int(1000), output.int(-1234567), output.int(nil) })
      assert.same({ "512 B", "1.5 KiB", "3.0 MiB" }, { output.size(512), output.size(1536), output.size(3 * 2 ^ 20) })
      assert.equals("NULL", output.cell(pksync.null))
      assert.equals("a?b", output.cell("a\27b"))
      assert.equals("abcdefg...", output.cell("abcdefghijklmnop", 10))
      assert.same({ "A  BB", "1  22", "x" }, output.table_lines({ { "A" }, { "BB", right = true } }, { { "1", "22" }, { "x", "" } }))
    end)
  end)

  describe("against live sites", function()
    it("status: human, --json, --prefix, offline and --timeout", function()
      local r = expect(cli { "status", a.srv.site_url }, 0)
      assert.matches("enabled%s+yes", r.out)
      assert.matches("incoming mode%s+auto_accept", r.out)
      local doc = expect(cli { "status", a.srv.site_url, "--json" }, 0).json()
      assert.is_true(doc.enabled)
      assert.equals("auto_accept", doc.incoming_mode)
      assert.is_false(doc.password_required)
      assert.same({ "paged_pull", "uuid_text", "row_filters", "table_digest" }, doc.pksync.features)

      r = expect(cli { "status", "--prefix", "/elsewhere", a.srv.site_url }, 1)
      assert.matches("^pksync: asking [^\n]+: unexpected_response[^\n]*\n$", r.err)

      r = expect(cli { "status", "http://127.0.0.1:" .. helper.free_port() }, 3)
      assert.matches("^pksync: asking [^\n]+: offline %([^\n]+%)\n$", r.err)
      doc = expect(cli { "status", "--json", "http://127.0.0.1:" .. helper.free_port() }, 3).json()
      assert.equals("offline", doc.error)

      local peer = helper.start_peer()
      peer.scenario("/phoenix_kit/sync/api/status", { status = 200, delay = 3, body = { enabled = true } })
      local t0 = helper.now()
      expect(cli { "--timeout", "300", "status", peer.url }, 3)
      assert.is_true(helper.now() - t0 < 2.5, "--timeout bounds the request")
      peer.stop()
    end)

    it("settings: show, change, our URL, never the password", function()
      local r = expect(on_a { "settings", "--site-url-set", a.srv.site_url }, 0)
      assert.matches("site URL%s+" .. a.srv.site_url:gsub("%p", "%%%0"), r.out)
      assert.equals(a.srv.site_url, sql_a("SELECT value #>> '{}' FROM pksync_settings WHERE key = 'site_url'"))

      local doc = expect(on_a { "settings", "--json", "--incoming-mode", "require_password",
        "--incoming-password", PASSWORD }, 0).json()
      assert.same({ enabled = true, incoming_mode = "require_password", password_set = true,
        admin_password_set = false, site_url = a.srv.site_url }, doc)
      assert.is_true(expect(cli { "status", "--json", a.srv.site_url }, 0).json().password_required)

      doc = expect(on_a { "settings", "--json", "--disable" }, 0).json()
      assert.is_false(doc.enabled)
      assert.is_false(expect(cli { "status", "--json", a.srv.site_url }, 0).json().enabled)

      r = expect(on_a { "settings", "--enable", "--incoming-mode", "auto_accept", "--incoming-password", "" }, 0)
      assert.matches("enabled%s+yes", r.out)
      assert.matches("password%s+not set", r.out)
    end)

    it("settings --admin-password: stored salted and hashed, never shown, read from stdin with -", function()
      local ADMIN = "admin secret 1"
      local r = expect(on_a { "settings", "--admin-password", ADMIN }, 0)
      assert.matches("admin password%s+set", r.out)
      assert.is_nil(r.out:find(ADMIN, 1, true))
      local stored = sql_a("SELECT value #>> '{}' FROM pksync_settings WHERE key = 'admin_password_hash'")
      assert.matches("^pbkdf2%-sha256%$", stored)
      assert.is_nil(stored:find(ADMIN, 1, true))
      local site = pksync.new { db = a.conninfo }
      assert.is_true(site:check_admin_password(ADMIN))
      assert.is_false(site:check_admin_password("admin secret 2"))
      -- the same password gets another salt
      expect(on_a { "settings", "--admin-password", ADMIN }, 0)
      assert.not_equals(stored, sql_a("SELECT value #>> '{}' FROM pksync_settings WHERE key = 'admin_password_hash'"))
      assert.matches("no password on stdin", expect(on_a { "settings", "--admin-password", "-" }, 2).err)
      r = expect(cli({ "--db", a.conninfo, "settings", "--json", "--admin-password", "-" }, nil, "from stdin\n"), 0)
      assert.is_true(r.json().admin_password_set)
      assert.is_true(site:check_admin_password("from stdin"))
      assert.is_true(expect(on_a { "settings", "--json", "--admin-password", "" }, 0).json().admin_password_set == false)
      assert.equals("unset", site:check_admin_password("from stdin"))
      site:close()
    end)

    it("connections add: a sender registers on B, the raw token shown once", function()
      local r = expect(on_a { "connections", "add", "--json", "--name", "A to B", "--direction", "sender",
        "--url", b.srv.site_url, "--allowed-tables", "categories, products" }, 0)
      local doc = r.json()
      raw_token = doc.raw_token
      assert.equals(43, #raw_token)
      assert.equals("registered", doc.registration.status)
      assert.is_true(doc.registration.success)
      assert.equals("pending", doc.connection.status)
      assert.equals("sender", doc.connection.direction)
      assert.is_nil(doc.connection.auth_token_hash)
      assert.equals("{categories,products}", sql_a("SELECT allowed_tables FROM pksync_connections"))
      assert.equals("receiver|" .. a.srv.site_url .. "|active|From: A to B",
        sql_b("SELECT direction, site_url, status, name FROM pksync_connections"))
      assert.equals(pksync.token.hash(raw_token), sql_b("SELECT auth_token_hash FROM pksync_connections"))
      -- many requests follow from B: lift the per-minute limit
      sql_a("UPDATE pksync_connections SET rate_limit_requests_per_minute = 0")

      -- the same site and direction again
      r = expect(on_a { "connections", "add", "--name", "again", "--direction", "sender", "--url", b.srv.site_url }, 1)
      assert.matches("^pksync: creating the connection: already_exists", r.err)
    end)

    it("connections add: human output, --no-notify, offline receivers, receivers", function()
      local gone = "http://127.0.0.1:" .. helper.free_port()
      local r = expect(on_a { "connections", "add", "--name", "Quiet one", "--direction", "sender", "--url", gone,
        "--no-notify", "--prefix", "/sync" }, 0)
      assert.matches("created sender connection \"Quiet one\"", r.out)
      assert.matches("RAW TOKEN %(shown only now[^\n]*\n  [%w_-]+\n", r.out)
      assert.is_nil(r.out:find("registration", 1, true))

      r = expect(on_a { "connections", "add", "--name", "Unreachable", "--direction", "sender",
        "--url", "http://127.0.0.1:" .. helper.free_port() }, 3)
      assert.matches("registration%s+failed", r.out)
      assert.matches("RAW TOKEN", r.out)
      assert.matches("^pksync: registering on [^\n]+\n$", r.err)

      r = expect(on_a { "connections", "add", "--json", "--name", "Twin", "--direction", "receiver",
        "--url", "http://127.0.0.1:1", "--token", "given-by-the-sender" }, 0)
      local doc = r.json()
      assert.is_nil(doc.raw_token)
      assert.equals("active", doc.connection.status)
      assert.is_nil(r.out:find("given-by-the-sender", 1, true))
      expect(on_a { "connections", "add", "--name", "Twin", "--direction", "receiver",
        "--url", "http://127.0.0.1:2", "--token", "another" }, 0)
      r = expect(on_a { "connections", "approve", "Twin" }, 1)
      assert.matches("ambiguous", r.err)

      -- --password and --excluded-tables, seen from a scripted receiver
      local peer = helper.start_peer()
      peer.scenario("/phoenix_kit/sync/api/register-connection", { status = 200, body = { success = true,
        connection_status = "pending", connection_uuid = "11111111-2222-4333-8444-555555555555" } })
      local guarded = expect(on_a { "connections", "add", "--json", "--name", "Guarded", "--direction", "sender",
        "--url", peer.url, "--password", PASSWORD, "--excluded-tables", "secrets" }, 0).json()
      assert.same({ "pending", "11111111-2222-4333-8444-555555555555" },
        { guarded.registration.status, guarded.registration.remote_connection_uuid })
      local sent = json.decode(peer.requests()[1].body)
      assert.same({ PASSWORD, guarded.raw_token, "Guarded", a.srv.site_url },
        { sent.password, sent.auth_token, sent.connection_name, sent.sender_url })
      assert.equals("{secrets}", sql_a("SELECT excluded_tables FROM pksync_connections WHERE name = 'Guarded'"))
      r = expect(on_a { "connections", "delete", "Guarded", "--quiet" }, 0)
      assert.equals("", r.out)
      peer.stop()

      -- lifecycle on connections whose peers are gone: done here, peer offline
      for _, name in ipairs { "Quiet one", "Unreachable", doc.connection.uuid, "http://127.0.0.1:2" } do
        r = expect(on_a { "connections", "delete", name }, 0)
        assert.matches("is now deleted; peer: offline", r.out)
      end
    end)

    it("connections list: table, JSON, filters", function()
      local r = expect(on_a { "connections", "list" }, 0)
      assert.matches("UUID%s+NAME%s+DIRECTION%s+STATUS%s+SITE URL", r.out)
      assert.matches("A to B%s+sender%s+pending", r.out)
      local list = expect(on_a { "connections", "list", "--json" }, 0).json()
      assert.equals(1, #list)
      assert.equals("A to B", list[1].name)
      assert.is_nil(list[1].auth_token_hash)
      assert.equals(1, #expect(on_a { "connections", "list", "--json", "--status", "pending" }, 0).json())
      assert.equals(0, #expect(on_a { "connections", "list", "--json", "--direction", "receiver" }, 0).json())
      assert.matches("no connections", expect(on_a { "connections", "list", "--status", "revoked" }, 0).out)
      list = expect(on_b { "connections", "list", "--json", "--direction", "receiver" }, 0).json()
      assert.equals(a.srv.site_url, list[1].site_url)
    end)

    it("an unknown CONN fails with 1", function()
      local r = expect(on_b { "tables", "no-such-connection" }, 1)
      assert.matches("^pksync: finding connection no%-such%-connection: not_found", r.err)
      expect(on_a { "connections", "suspend", "00000000-0000-4000-8000-000000000000" }, 1)
    end)

    it("lifecycle: approve, suspend, reactivate, mirrored on the peer", function()
      local doc = expect(on_a { "connections", "approve", "A to B", "--json" }, 0).json()
      assert.same({ "approve", "active", "updated" }, { doc.action, doc.status, doc.remote })

      local r = expect(on_a { "connections", "suspend", "A to B", "--reason", "maintenance" }, 0)
      assert.matches("is now suspended; peer: updated", r.out)
      assert.equals("suspended|Suspended by the remote site", sql_b("SELECT status, suspended_reason FROM pksync_connections"))
      assert.equals("maintenance", sql_a("SELECT suspended_reason FROM pksync_connections"))
      r = expect(on_b { "tables", a.srv.site_url }, 1)
      assert.matches("not_active %(the sender reports it suspended%)", r.err)

      -- CONN by the peer's URL (with a trailing slash)
      doc = expect(on_a { "connections", "reactivate", b.srv.site_url .. "/", "--json" }, 0).json()
      assert.same({ "active", "updated" }, { doc.status, doc.remote })
      assert.equals("active", sql_b("SELECT status FROM pksync_connections"))
    end)

    it("tables, schema and preview from B's side", function()
      local r = expect(on_b { "tables", a.srv.site_url }, 0)
      assert.matches("TABLE%s+ROWS%s+SIZE%s+CHECKSUM%s+DEPENDS ON", r.out)
      assert.matches("products%s+40%s", r.out)
      local list = expect(on_b { "tables", "From: A to B", "--json" }, 0).json()
      local by = {}
      for _, t in ipairs(list) do by[t.name] = t end
      assert.equals(5, by.categories.row_count)
      assert.equals(40, by.products.row_count)
      assert.same({ "categories" }, by.products.depends_on)

      r = expect(on_b { "schema", a.srv.site_url, "products" }, 0)
      assert.matches("COLUMN%s+TYPE%s+NULL%s+DEFAULT", r.out)
      assert.matches("qty%s+integer%s+yes", r.out)
      assert.matches("primary key: id", r.out)
      local schema = expect(on_b { "schema", a.srv.site_url, "products", "--json" }, 0).json()
      assert.same({ "id" }, schema.primary_key)
      assert.equals("category_id", schema.columns[2].column_name)
      -- --allowed-tables at work: A lets B see only its two tables
      r = expect(on_b { "schema", a.srv.site_url, "secrets" }, 1)
      assert.matches("forbidden %(This connection is not authorised to access that table%)", r.err)

      local rows = expect(on_b { "preview", a.srv.site_url, "products", "--limit", "2", "--offset", "1", "--json" }, 0).json()
      assert.equals(2, #rows)
      assert.same({ 2, 3 }, { rows[1].id, rows[2].id })
      r = expect(on_b { "preview", a.srv.site_url, "categories", "--limit", "3" }, 0)
      assert.matches("^id%s+name\n1%s+category 1\n2%s+category 2\n3%s+category 3\n$", r.out)
    end)

    it("pull: one table, a dry run, then all tables with a failing row (exit 4)", function()
      local function same(tbl, where)
        local q = ("SELECT string_agg(t::text, ';' ORDER BY id) FROM %s t %s"):format(tbl, where or "")
        assert.equals(sql_a(q), sql_b(q))
      end
      local r = expect(on_b { "pull", "From: A to B", "categories" }, 0)
      assert.matches("TABLE%s+ACTION%s+STRATEGY%s+TRANSFERRED%s+IMPORTED%s+UPDATED%s+UNCHANGED%s+SKIPPED%s+FILTERED%s+FAILED", r.out)
      assert.matches("\ncategories%s+pulled%s+skip%s+5%s+5%s+0%s+0%s+0%s+0%s", r.out)
      same("categories")
      assert.equals("0", sql_b("SELECT count(*) FROM products"))

      -- a dry run changes nothing, and says what would fail
      local doc = expect(on_b { "pull", a.srv.site_url, "--dry-run", "--json" }, 4).json()
      assert.is_true(doc.dry_run)
      assert.equals("0", sql_b("SELECT count(*) FROM products"))
      r = expect(on_b { "pull", a.srv.site_url, "products", "--dry-run" }, 4)
      assert.matches("dry run: nothing was changed", r.out)
      assert.matches("^pksync: dry run against [^\n]+: would be incomplete %(1 rows failed, 0 of 1 tables failed%)\n$", r.err)
      assert.equals("0", sql_b("SELECT count(*) FROM products"))

      r = expect(on_b({ "pull", a.srv.site_url }, "PKSYNC_PROGRESS=1"), 4)
      assert.matches("products%s+%[#+%]%s+40/40 rows%s+[%d,]+ rows/s", r.err)
      assert.matches("pksync: pulling from [^\n]+: incomplete %(1 rows failed, 0 of 2 tables failed%)\n$", r.err)
      -- transferred: the first pass's 40 rows and the retry's leaf range
      assert.matches("\nproducts%s+pulled%s+skip%s+%d+%s+39%s+0%s+0%s+%d+%s+0%s+1%s+[%d.]+s\n", r.out)
      assert.matches("\nfirst failing row:\n  products: new row for relation \"products\" violates check constraint", r.out)
      assert.matches("\ntotal%s+", r.out)
      same("products", "WHERE qty >= 0")
      assert.equals("39", sql_b("SELECT count(*) FROM products"))

      doc = expect(on_b { "pull", a.srv.site_url, "products", "--strategy", "overwrite", "--json" }, 4).json()
      assert.equals(1, doc.totals.failed)
      assert.equals(1, #doc.tables)
      assert.same({ "products", "overwrite", 1 }, { doc.tables[1].name, doc.tables[1].strategy, doc.tables[1].failed })
      r = expect(on_b { "pull", a.srv.site_url, "categories", "--quiet" }, 0)
      assert.equals("", r.out .. r.err)
    end)

    it("sync: the whole connection, --dry-run and --policy", function()
      assert.is_function(b.client.sync_connection)
      sql_a("UPDATE categories SET name = 'renamed' WHERE id = 2")
      local doc = expect(on_b { "sync", a.srv.site_url, "--dry-run", "--json" }, 4).json()
      assert.is_true(doc.dry_run)
      assert.equals("category 2", sql_b("SELECT name FROM categories WHERE id = 2"))

      local policy = helper.root .. "/cli-policy.lua"
      helper.write_file(policy, [[return { strategy = function(name) return "overwrite" end }]] .. "\n")
      doc = expect(on_b { "sync", a.srv.site_url, "--policy", policy, "--json" }, 4).json()
      assert.equals("active", doc.sender_status)
      local by = {}
      for _, t in ipairs(doc.tables) do by[t.name] = t end
      assert.same({ "pulled", "overwrite" }, { by.categories.action, by.categories.strategy })
      assert.equals(1, by.products.failed)
      assert.equals("renamed", sql_b("SELECT name FROM categories WHERE id = 2"))

      helper.write_file(policy, "return { nonsense = 1 }\n")
      local r = expect(on_b { "sync", a.srv.site_url, "--policy", policy }, 1)
      assert.matches("^pksync: syncing with [^\n]+: invalid_policy %([^\n]*nonsense[^\n]*%)\n$", r.err)
    end)

    it("pull --mirror deletes what the sender deleted, only with the flag; --full pulls whole", function()
      sql_a("INSERT INTO categories VALUES (6, 'extra')")
      expect(on_b { "pull", a.srv.site_url, "categories", "--strategy", "overwrite" }, 0)
      assert.equals("extra", sql_b("SELECT name FROM categories WHERE id = 6"))
      sql_a("DELETE FROM categories WHERE id = 6")
      local doc = expect(on_b { "pull", a.srv.site_url, "categories", "--strategy", "overwrite", "--json" }, 0).json()
      assert.equals(0, doc.totals.deleted)
      assert.equals("1", sql_b("SELECT count(*) FROM categories WHERE id = 6"))
      doc = expect(on_b { "pull", a.srv.site_url, "categories", "--strategy", "overwrite", "--mirror", "--dry-run",
        "--json" }, 0).json()
      assert.equals(1, doc.totals.deleted)
      -- the human report gets a DELETED column when rows would go
      local human = expect(on_b { "pull", a.srv.site_url, "categories", "--strategy", "overwrite", "--mirror",
        "--dry-run" }, 0).out
      assert.matches("FAILED +DELETED +TIME", human)
      assert.matches("\ntotal +[%d ]+ 1 +[%d.]+s", human)
      assert.equals("1", sql_b("SELECT count(*) FROM categories WHERE id = 6"))
      doc = expect(on_b { "pull", a.srv.site_url, "categories", "--strategy", "overwrite", "--mirror", "--json" }, 0).json()
      assert.equals(1, doc.totals.deleted)
      assert.equals("incremental", doc.tables[1].path)
      assert.equals("0", sql_b("SELECT count(*) FROM categories WHERE id = 6"))
      sql_a("UPDATE categories SET name = name || '!' WHERE id = 1")
      doc = expect(on_b { "pull", a.srv.site_url, "categories", "--strategy", "overwrite", "--full", "--json" }, 0).json()
      assert.are_not.equal("incremental", doc.tables[1].path)
      expect(on_b { "pull", a.srv.site_url, "categories", "--mirror", "--full" }, 2)
    end)

    it("lifecycle: revoke and delete, both sides end clean", function()
      local r = expect(on_a { "connections", "revoke", "A to B", "--reason", "done" }, 0)
      assert.matches("is now revoked; peer: updated", r.out)
      assert.equals("revoked", sql_b("SELECT status FROM pksync_connections"))
      local doc = expect(on_a { "connections", "delete", "A to B", "--json" }, 0).json()
      assert.same({ "deleted", "deleted" }, { doc.status, doc.remote })
      assert.equals("0", sql_a("SELECT count(*) FROM pksync_connections"))
      assert.equals("0", sql_b("SELECT count(*) FROM pksync_connections"))
    end)

    it("serve: a configuration nginx accepts, and --start runs it", function()
      local dir = helper.root .. "/" .. helper.unique("serve")
      assert(os.execute("mkdir -p " .. helper.shell_quote(dir)))
      local port = helper.free_port()
      local r = expect(on_a { "serve", "--listen", "127.0.0.1:" .. port, "--threads", "2" }, 0)
      helper.write_file(dir .. "/nginx.conf", r.out)
      local out, ok = helper.run(("nginx -t -p %s -c nginx.conf"):format(helper.shell_quote(dir)))
      assert.is_true(ok, out .. "\n" .. r.out)
      assert.matches("thread_pool pksync threads=2;", r.out, 1, true)
      assert.matches("lua_package_path  '" .. helper.repo .. "/lua/?.lua;", r.out, 1, true)
      assert.matches("lua_package_cpath '" .. helper.repo .. "/build/jit/?.so;;'", r.out, 1, true)
      assert.matches("location /phoenix_kit/sync/api/", r.out, 1, true)
      assert.matches(('site_url = "%s"'):format(a.srv.site_url), r.out, 1, true)
      if helper.run("id -u"):match("^0") then assert.matches("user root root;", r.out, 1, true) end

      local doc = expect(cli { "serve", "--json", "--db", "host=/nowhere password=hunter2", "--prefix", "/x",
        "--site-url", "https://me.example" }, 0).json()
      assert.matches("location /x/sync/api/", doc.config, 1, true)
      assert.matches("env PGPASSWORD;", doc.config, 1, true)
      assert.is_nil(doc.config:find("hunter2", 1, true))

      -- --start: nginx in the foreground, stopped through its pid file
      local sdir = helper.root .. "/" .. helper.unique("nginx-cli-serve")
      port = helper.free_port()
      local base = sdir .. ".run"
      serve_pid = sdir .. "/nginx.pid"
      os.execute(("(cd %s && %s %s --db %s serve --start --dir %s --listen 127.0.0.1:%d >%s.out 2>%s.err; " ..
        "echo $? >%s.rc) &"):format(helper.shell_quote(helper.repo), LUA, helper.shell_quote(BIN),
        helper.shell_quote(a.conninfo), helper.shell_quote(sdir), port, base, base, base))
      assert.is_true(helper.wait_port(port, 10), helper.read_file(base .. ".err") or "")
      local status, body = helper.http("GET", ("http://127.0.0.1:%d/phoenix_kit/sync/api/status"):format(port))
      assert.equals(200, status)
      assert.is_true(json.decode(body).enabled)
      assert.matches("nginx serves /phoenix_kit/sync/api/ on 127.0.0.1:" .. port, helper.read_file(base .. ".err"))
      helper.run("kill $(cat " .. helper.shell_quote(sdir .. "/nginx.pid") .. ")")
      local rc
      for _ = 1, 100 do
        rc = helper.read_file(base .. ".rc")
        if rc and rc ~= "" then break end
        helper.sleep(0.05)
      end
      assert.equals("0", (rc or ""):match("%d+"))
    end)

    it("never prints a token hash, a password or a traceback", function()
      assert.is_string(raw_token)
      local hash = pksync.token.hash(raw_token)
      for _, text in ipairs(transcript) do
        assert.is_nil(text:find(hash, 1, true), "a token hash was printed:\n" .. text)
        assert.is_nil(text:find(PASSWORD, 1, true), "a password was printed:\n" .. text)
        assert.is_nil(text:find("traceback", 1, true), "a traceback was printed:\n" .. text)
      end
    end)
  end)
end)
