-- Incremental pulls: a re-sync moves what changed, deletes only with
-- mirror, falls back where digests cannot help, and ends equal to the
-- sender even when the sender changes under it.
local helper = require "helper"
local pksync = require "pksync"

local N = 5000

local SCHEMA = [[
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), doc jsonb);
CREATE TABLE pairs (grp text, seq int, v text, PRIMARY KEY (grp, seq));
]]

local DATA = ([[
INSERT INTO items SELECT g, 'item ' || g, g / 100.0, jsonb_build_object('g', g) FROM generate_series(1, %d) g;
INSERT INTO pairs SELECT chr(65 + g %% 3) || CASE WHEN g %% 2 = 0 THEN 'é' ELSE 'a' END, g, 'v' || g
  FROM generate_series(1, 3000) g;
]]):format(N)

describe("incremental pulls", function()
  local a, b = {}, {}
  local recv

  local function sql_a(q) return helper.psql(a.dbname, q) end
  local function sql_b(q) return helper.psql(b.dbname, q) end

  -- rows on one side and not the other, both ways (0 when equal): the
  -- EXCEPT of the two tables' rows, taken by their text
  local function difference(tbl)
    local function rows_of(sql)
      local set = {}
      for line in sql(("SELECT md5(t::text) FROM %s t"):format(tbl)):gmatch("[^\n]+") do set[line] = true end
      return set
    end
    local ours, theirs = rows_of(sql_b), rows_of(sql_a)
    local n = 0
    for k in pairs(ours) do if not theirs[k] then n = n + 1 end end
    for k in pairs(theirs) do if not ours[k] then n = n + 1 end end
    return n
  end

  local function fresh(tbl)
    sql_b("TRUNCATE " .. tbl)
    return assert(b.client:pull_table_data(recv, tbl, { conflict_strategy = "overwrite" }))
  end

  lazy_setup(function()
    a.dbname, a.conninfo = helper.create_database("inc_a")
    b.dbname, b.conninfo = helper.create_database("inc_b")
    sql_a(SCHEMA .. DATA)
    sql_b(SCHEMA)
    a.port = helper.free_port()
    a.url = "http://127.0.0.1:" .. a.port
    local site = pksync.new { db = a.conninfo, site_url = a.url }
    assert(site:migrate())
    assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
    local _, raw = helper.sender_connection(site)
    site:close()
    a.srv = helper.start_nginx { name = "inc", port = a.port, server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q } }
      }]]):format(a.conninfo, a.url) }
    b.client = pksync.new { db = b.conninfo, site_url = "https://b.example" }
    assert(b.client:migrate())
    recv = assert(b.client:create_connection { name = "from-a", direction = "receiver", site_url = a.url,
      auth_token = raw })
  end)

  lazy_teardown(function()
    if a.srv then a.srv.stop() end
    if b.client then b.client:close() end
    helper.drop_database(a.dbname)
    helper.drop_database(b.dbname)
  end)

  it("re-syncs an unchanged table by digests alone", function()
    fresh("items")
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite", incremental = true }))
    assert.equals("incremental", r.path)
    assert.equals(0, r.records_transferred)
    assert.equals(N / 1000, r.ranges_compared)
    assert.equals(0, r.ranges_pulled)
    assert.equals(0, difference("items"))
  end)

  it("moves only the rows near scattered changes, and deletes nothing without mirror", function()
    fresh("items")
    sql_a([[UPDATE items SET price = price + 1 WHERE id IN (7, 1234, 2500, 4999);
            UPDATE items SET doc = '{"g": 3333.0}' WHERE id = 3333;
            INSERT INTO items VALUES (5001, 'new', 1, '{}'), (1500, 'gap', 2, '{}') ON CONFLICT (id) DO NOTHING;
            DELETE FROM items WHERE id IN (10, 4000)]])
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite", incremental = true }))
    assert.equals("incremental", r.path)
    assert.equals(0, r.records_deleted)
    -- the rows that changed: five updated and one inserted, and for each of
    -- the two deleted the sender's next row, whose range (deleted key, it]
    -- now holds one row less there than here
    assert.equals(6 + 2, r.records_transferred)
    assert.equals(6, r.records_updated + r.records_imported)
    assert.equals(1, r.records_imported)          -- 5001; 1500 exists already
    assert.equals("2", sql_b("SELECT count(*) FROM items WHERE id IN (10, 4000)"))
    assert.equals("3333.0", sql_b("SELECT doc->>'g' FROM items WHERE id = 3333"))
    assert.equals(2, difference("items"))         -- the two rows the sender deleted
    sql_a("INSERT INTO items VALUES (10, 'item 10', 0.10, '{\"g\": 10}'), (4000, 'item 4000', 40.00, '{\"g\": 4000}')")
  end)

  it("deletes what the sender no longer has with mirror, in the compared ranges only", function()
    fresh("items")
    sql_a("DELETE FROM items WHERE id IN (11, 12, 2999, 5001); UPDATE items SET name = 'renamed' WHERE id = 100")
    sql_b("INSERT INTO items VALUES (9000, 'local only', 0, '{}')")
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite", mirror = true }))
    assert.equals("incremental", r.path)
    assert.equals(5, r.records_deleted)
    assert.equals(0, difference("items"))
    local t = assert(b.client:list_transfers { table_name = "items", limit = 1 })[1]
    assert.equals("completed", t.status)
    assert.equals(5, t.metadata.records_deleted)
  end)

  it("shows mirror deletes in a dry run and keeps them", function()
    sql_a("DELETE FROM items WHERE id = 20")
    local report = assert(b.client:sync_connection(recv, { tables = { "items" }, strategy = "overwrite",
      mirror = true, dry_run = true }))
    assert.equals(1, report.tables[1].deleted)
    assert.equals(1, report.totals.deleted)
    assert.equals("1", sql_b("SELECT count(*) FROM items WHERE id = 20"))
    report = assert(b.client:sync_connection(recv, { tables = { "items" }, strategy = "overwrite", mirror = true }))
    assert.equals(1, report.totals.deleted)
    assert.equals("incremental", report.tables[1].path)
    assert.equals(0, difference("items"))
  end)

  it("keeps local changes under skip, and still pulls what is new", function()
    sql_b("UPDATE items SET name = 'mine' WHERE id = 30")
    sql_a("INSERT INTO items VALUES (6000, 'newer', 1, '{}')")
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "skip", mirror = true }))
    assert.equals("mine", sql_b("SELECT name FROM items WHERE id = 30"))
    assert.equals("newer", sql_b("SELECT name FROM items WHERE id = 6000"))
    assert.equals(0, r.records_deleted)
    sql_b("UPDATE items SET name = 'item 30' WHERE id = 30")
  end)

  it("switches to a plain pull when most ranges differ", function()
    fresh("items")
    sql_a("UPDATE items SET price = price + 1 WHERE id % 3 = 0")
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite", incremental = true,
      digest_rows = 100 }))
    assert.equals("pull-data", r.path)
    assert.is_true(r.incremental_fallback)
    assert.equals(0, difference("items"))
  end)

  it("mirrors composite text keys whatever their collation", function()
    fresh("pairs")
    sql_a("DELETE FROM pairs WHERE seq IN (5, 1700); UPDATE pairs SET v = 'changed' WHERE seq = 2222; " ..
      "INSERT INTO pairs VALUES ('Zz', 1, 'z'), ('aa', 1, 'a')")
    local r = assert(b.client:pull_table_data(recv, "pairs", { conflict_strategy = "overwrite", mirror = true }))
    assert.equals("incremental", r.path)
    assert.equals(2, r.records_deleted)
    assert.equals(0, difference("pairs"))
  end)

  it("pulls a leaf again when the sender changes it under the pull", function()
    fresh("items")
    sql_a("UPDATE items SET name = 'first' WHERE id = 42")
    local wrote = false
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite", mirror = true,
      on_progress = function()
        if not wrote then
          wrote = true
          sql_a("UPDATE items SET name = 'second' WHERE id = 42; DELETE FROM items WHERE id = 43")
        end
      end }))
    assert.is_true(r.sender_changed >= 1)
    assert.equals("second", sql_b("SELECT name FROM items WHERE id = 42"))
    assert.equals(0, difference("items"))
  end)

  it("ends equal to the sender after a writer ran on it during the pull", function()
    fresh("items")
    local stop = helper.root .. "/inc-writer.stop"
    os.remove(stop)
    -- a writer on the sender: updates, inserts and deletes spread over the keys
    local writer = io.popen(([[for i in $(seq 1 200); do
        [ -e %s ] && break
        psql -X -q -h %s -p %s -U postgres -d %s -c "UPDATE items SET price = price + 1 WHERE id = $(( (i * 37) %% %d + 1 ));
          INSERT INTO items VALUES (7000 + $i, 'w', 1, '{}') ON CONFLICT DO NOTHING;
          DELETE FROM items WHERE id = $(( (i * 53) %% %d + 1 ))" >/dev/null 2>&1
      done]]):format(stop, helper.pghost, helper.pgport, a.dbname, N, N))
    local first = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite", mirror = true }))
    assert(io.open(stop, "w")):close()
    writer:close()
    assert.is_true(first.ranges_compared >= N / 1000)
    local last = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite", mirror = true }))
    assert.equals("incremental", last.path)
    assert.equals(0, difference("items"))
  end)

  it("pulls in full from a sender without digests, and refuses mirror there", function()
    local plain = helper.start_nginx { name = "inc-plain", server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q, extensions = false } }
      }]]):format(a.conninfo, a.url) }
    local conn = { site_url = plain.url, auth_token_hash = recv.auth_token_hash }
    local ok, r = pcall(function()
      return assert(b.client:pull_table_data(conn, "pairs", { conflict_strategy = "overwrite", incremental = true }))
    end)
    local none, err, detail = b.client:pull_table_data(conn, "pairs", { conflict_strategy = "overwrite", mirror = true })
    plain.stop()
    assert(ok, r)
    assert.are_not.equal("incremental", r.path)
    assert.is_nil(none)
    assert.equals("mirror_unavailable", err)
    assert.matches("table_digest", detail.message)
    assert.equals(0, difference("pairs"))
  end)
end)
