-- Pulling tables into PostgreSQL: exact, complete, consistent.
-- Site A serves its database from real nginx; the importing client (B)
-- runs in the spec process against its own database.
local helper = require "helper"
local pksync = require "pksync"

local json = pksync.json

local ALL_TYPES = [[
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE everything (
  id bigint PRIMARY KEY, i2 smallint, i4 integer, big bigint, f4 real, f8 double precision,
  num numeric, num2 numeric(12,2), flag boolean, label text, vc varchar(20), ch char(3), m mood,
  tz timestamptz, tz0 timestamptz(0), ts timestamp, d date, t time, tt timetz, iv interval,
  j json, jb jsonb, tags text[], nums int8[], grid int[], moods mood[], blob bytea, u uuid,
  uuids uuid[], net inet, money_col money, rng int4range
);
]]

local ALL_ROWS = [[
INSERT INTO everything VALUES
 (1, -32768, 2147483647, 9223372036854775807, 0.1, 0.1, '12.50', 12.5, true, 'plain', 'varchar', 'abc', 'happy',
  '2025-12-15 18:56:59.387453+00', '2025-12-15 18:56:59+00', '2025-12-15 18:56:59.387453', '2025-12-15',
  '18:56:59', '18:56:59+02', '1 day 02:03:04',
  '{"a": [1, 2.5, "x"], "b": null}', '{"nested": {"deep": [true, false, null]}, "n": 9007199254740993}',
  ARRAY['a', 'b,c', 'd"e', 'f\g', '', NULL, 'NULL', ' sp '], ARRAY[9007199254740993, -1], '{{1,2},{3,4}}',
  ARRAY['sad', 'happy']::mood[], '\x00ff10'::bytea, 'ff000000-0000-4000-8000-00000000000a',
  ARRAY['00000000-0000-4000-8000-000000000001'::uuid], '10.1.2.3/8', 12.34, '[1,10)'),
 (2, 0, 0, -9223372036854775808, 'NaN', 'Infinity', 'NaN', 0, false, '2025-12-15', 'tab	and
newline', NULL, 'sad', 'infinity', NULL, '-infinity', '0044-03-15 BC', '00:00:00', NULL, '-3 years',
  '[]', '"just a string"', '{}', '{}', NULL, '{}', 'a\\b'::bytea, NULL, NULL, '::1', 0, 'empty'),
 (3, NULL, NULL, 9007199254740993, '-Infinity', 1e300, '0.0000001', -0.01, NULL, 'ünïcödé ✓ 😀', NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null', '12.5', NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL),
 (4, 1, 1, 1, -0.0, -0.0, '-0', '1e2', true, E'back\\slash', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  '1', 'false', ARRAY['{braces}', '[1]'], NULL, NULL, NULL, convert_to('déjà', 'UTF8'), NULL, NULL, NULL, NULL, NULL);
]]

-- Rows as PostgreSQL prints them, in one fixed setting: the SQL truth.
local function table_text(dbname, table, order)
  return helper.psql(dbname, ("SET TimeZone = 'UTC'; SET extra_float_digits = 3; " ..
    "SELECT string_agg(t::text, E'\\n' ORDER BY %s) FROM %s t"):format(order or "id", table))
end

describe("pull_table_data", function()
  local a, b = {}, {}
  local recv   -- B's receiver connection to A

  local function sql_a(q) return helper.psql(a.dbname, q) end
  local function sql_b(q) return helper.psql(b.dbname, q) end

  local function start_a(port)
    a.srv = helper.start_nginx { name = "sender", port = port, server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q } }
      }]]):format(a.conninfo, a.url) }
  end

  lazy_setup(function()
    a.dbname, a.conninfo = helper.create_database("pull_a")
    b.dbname, b.conninfo = helper.create_database("pull_b")
    a.port = helper.free_port()
    a.url = "http://127.0.0.1:" .. a.port
    for _, s in ipairs { a, b } do
      helper.psql(s.dbname, ALL_TYPES .. [[
        CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(10,2), note text);
        CREATE TABLE pairs (region int, sku text, qty int, PRIMARY KEY (region, sku));
        CREATE TABLE loose (x int, y text);
        CREATE TABLE many (id int PRIMARY KEY, v text);
      ]])
    end
    sql_a(ALL_ROWS)
    sql_a([[INSERT INTO items SELECT g, 'item ' || g, g * 1.25, 'n' || g FROM generate_series(1, 120) g;
      INSERT INTO pairs SELECT g % 7, 'sku-' || g, g FROM generate_series(1, 60) g;
      INSERT INTO loose SELECT g, 'row ' || g FROM generate_series(1, 30) g;
      INSERT INTO many SELECT g, 'v' || g FROM generate_series(1, 25000) g;]])
    local site = pksync.new { db = a.conninfo, site_url = a.url }
    assert(site:migrate())
    assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
    local _, raw = assert(site:create_connection { name = "A to B", direction = "sender", status = "active",
      site_url = "https://b.example", notify = false, rate_limit_requests_per_minute = 0,
      max_records_per_request = 10000 })
    site:close()
    start_a(a.port)
    b.client = pksync.new { db = b.conninfo, site_url = "https://b.example" }
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

  it("round-trips every type exactly (compared in SQL)", function()
    local r = assert(b.client:pull_table_data(recv, "everything"))
    assert.equals(4, r.records_transferred)
    assert.equals(4, r.records_imported)
    assert.equals(0, r.records_failed)
    assert.equals(table_text(a.dbname, "everything"), table_text(b.dbname, "everything"))
    -- and once more through the staging path (overwrite onto the full table)
    r = assert(b.client:pull_table_data(recv, "everything", { conflict_strategy = "overwrite" }))
    assert.equals(4, r.records_updated)
    assert.equals(table_text(a.dbname, "everything"), table_text(b.dbname, "everything"))
  end)

  it("applies skip, overwrite, merge and append on new and existing rows", function()
    sql_b([[TRUNCATE items; INSERT INTO items VALUES (1, 'local one', 99.99, 'keep'), (2, 'local two', NULL, NULL)]])
    sql_a([[UPDATE items SET note = NULL WHERE id = 1]])
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "skip" }))
    assert.same({ 120, 118, 0, 2, 0 }, { r.records_transferred, r.records_imported, r.records_updated,
      r.records_skipped, r.records_failed })
    assert.equals("local one|99.99|keep", sql_b("SELECT name || '|' || price || '|' || note FROM items WHERE id = 1"))

    r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "merge" }))
    assert.same({ 0, 120, 0 }, { r.records_imported, r.records_updated, r.records_skipped })
    -- merge: remote values win, but a remote null keeps the local value
    assert.equals("item 1|1.25|keep", sql_b("SELECT name || '|' || price || '|' || note FROM items WHERE id = 1"))

    r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite" }))
    assert.same({ 0, 120 }, { r.records_imported, r.records_updated })
    assert.equals("item 1|1.25|<null>", sql_b("SELECT name || '|' || price || '|' || coalesce(note, '<null>') FROM items WHERE id = 1"))
    assert.equals(table_text(a.dbname, "items"), table_text(b.dbname, "items"))

    sql_b([[CREATE SEQUENCE IF NOT EXISTS loose_seq; TRUNCATE loose]])
    r = assert(b.client:pull_table_data(recv, "loose", { conflict_strategy = "append" }))
    assert.equals(30, r.records_imported)
    r = assert(b.client:pull_table_data(recv, "loose", { conflict_strategy = "append" }))
    assert.equals(30, r.records_imported)
    assert.equals("60", sql_b("SELECT count(*) FROM loose"))
    sql_a("UPDATE items SET note = 'n1' WHERE id = 1")
  end)

  it("appends rows with new keys from the local defaults", function()
    sql_b([[CREATE TABLE IF NOT EXISTS serials (id serial PRIMARY KEY, v text); TRUNCATE serials;
      INSERT INTO serials (v) VALUES ('local')]])
    sql_a([[CREATE TABLE IF NOT EXISTS serials (id serial PRIMARY KEY, v text); TRUNCATE serials;
      INSERT INTO serials (id, v) VALUES (1, 'remote 1'), (2, 'remote 2')]])
    local r = assert(b.client:pull_table_data(recv, "serials", { conflict_strategy = "append" }))
    assert.equals(2, r.records_imported)
    assert.equals("local,remote 1,remote 2", sql_b("SELECT string_agg(v, ',' ORDER BY id) FROM serials"))
  end)

  it("handles composite keys and keyless tables", function()
    local r = assert(b.client:pull_table_data(recv, "pairs", { page_size = 7 }))
    assert.equals(60, r.records_imported)
    assert.equals(9, r.pages)
    assert.equals(table_text(a.dbname, "pairs", "region, sku"), table_text(b.dbname, "pairs", "region, sku"))
    r = assert(b.client:pull_table_data(recv, "pairs", { conflict_strategy = "overwrite", page_size = 25 }))
    assert.equals(60, r.records_updated)
    local none, err = b.client:pull_table_data(recv, "loose", { conflict_strategy = "skip" })
    assert.is_nil(none)
    assert.equals("no_primary_key", err)
  end)

  it("isolates one bad row in a batch of 10,000 without losing the others", function()
    sql_b([[DROP TABLE many; CREATE TABLE many (id int PRIMARY KEY, v text CHECK (v <> 'v5000'))]])
    local r = assert(b.client:pull_table_data(recv, "many", { page_size = 10000, direct = false }))
    assert.equals(25000, r.records_transferred)
    assert.equals(24999, r.records_imported)
    assert.equals(1, r.records_failed)
    assert.matches("check constraint", r.error_sample)
    assert.equals("24999", sql_b("SELECT count(*) FROM many"))
    assert.equals("0", sql_b("SELECT count(*) FROM many WHERE v = 'v5000'"))
  end)

  it("reports a value the column cannot take as a failed row with a useful sample", function()
    sql_b([[DROP TABLE items; CREATE TABLE items (id bigint PRIMARY KEY, name varchar(7), price numeric(10,2), note text)]])
    local r = assert(b.client:pull_table_data(recv, "items"))
    assert.equals(120, r.records_transferred)
    assert.equals(99, r.records_imported)   -- 'item 1' .. 'item 99' fit in varchar(7)
    assert.equals(21, r.records_failed)
    assert.matches("too long", r.error_sample)
  end)

  it("is all or nothing with atomic = true", function()
    sql_b("TRUNCATE items")
    local none, err, detail = b.client:pull_table_data(recv, "items", { atomic = true })
    assert.is_nil(none)
    assert.equals("atomic_failed", err)
    assert.equals(21, detail.result.records_failed)
    assert.equals("0", sql_b("SELECT count(*) FROM items"))
    sql_b([[DROP TABLE items; CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(10,2), note text)]])
    local r = assert(b.client:pull_table_data(recv, "items", { atomic = true }))
    assert.equals(120, r.records_imported)
  end)

  it("reports remote columns the local table lacks, and never uses them", function()
    sql_b([[DROP TABLE items; CREATE TABLE items (id bigint PRIMARY KEY, name text, extra text DEFAULT 'local')]])
    local r = assert(b.client:pull_table_data(recv, "items"))
    assert.same({ "price", "note" }, r.unknown_columns)
    assert.equals(120, r.records_imported)
    assert.equals("item 7|local", sql_b("SELECT name || '|' || extra FROM items WHERE id = 7"))
  end)

  it("refuses bad requests before any request is sent", function()
    local peer = helper.start_peer()
    local conn = { site_url = peer.url, auth_token_hash = ("a"):rep(64) }
    local none, err = b.client:pull_table_data(conn, "items", { conflict_strategy = "upsert" })
    assert.equals("invalid_strategy", err)
    none, err = b.client:pull_table_data(conn, "no_such_table")
    assert.equals("table_missing_locally", err)
    none, err = b.client:pull_table_data(conn, "loose", { conflict_strategy = "merge" })
    assert.equals("no_primary_key", err)
    assert.equals(0, #peer.requests())
    assert.has_error(function() b.client:pull_table_data(conn, "items; drop table items") end)
    assert.has_error(function() b.client:pull_table_data(nil, "items") end)
    peer.stop()
  end)

  it("records a receive transfer with counts", function()
    local r = assert(b.client:pull_table_data(recv, "pairs"))
    local t = assert(b.client:list_transfers { table_name = "pairs", limit = 1 })[1]
    assert.equals(r.transfer_uuid, t.uuid)
    assert.equals("receive", t.direction)
    assert.equals("completed", t.status)
    assert.equals(60, t.records_transferred)
    assert.equals(recv.uuid, t.connection_uuid)
  end)

  it("resumes after the sender dies mid-pull", function()
    sql_b("DROP TABLE many; CREATE TABLE many (id int PRIMARY KEY, v text)")
    local none, err, detail = b.client:pull_table_data(recv, "many", { page_size = 2000, timeout = 3000,
      on_progress = function(ev) if ev.pages == 3 then a.srv.stop() end end })
    assert.is_nil(none)
    assert.equals("offline", err)
    local committed = detail.result.records_imported
    assert.equals(6000, committed)
    assert.equals(tostring(committed), sql_b("SELECT count(*) FROM many"))
    local t = assert(b.client:list_transfers { table_name = "many", limit = 1 })[1]
    assert.equals("failed", t.status)
    assert.is_string(t.cursor)
    start_a(a.port)
    local r = assert(b.client:pull_table_data(recv, "many", { page_size = 2000, resume = true }))
    assert.equals(19000, r.records_imported)
    assert.equals(10, r.pages)
    assert.equals("25000", sql_b("SELECT count(*) FROM many"))
    assert.equals(table_text(a.dbname, "many"), table_text(b.dbname, "many"))
  end)
end)
