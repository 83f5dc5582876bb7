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

  -- A served as a plain sender (PhoenixKit 0.2's answers: no extensions)
  local function start_plain()
    return helper.start_nginx { name = "plain", server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q, extensions = false } }
      }]]):format(a.conninfo, a.url) }
  end

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
        CREATE TABLE sameness (id int PRIMARY KEY, n numeric, f float8, j jsonb, t text, arr int[]);
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
    -- and once more through the staging path (overwrite onto the full table):
    -- every row equals its local copy, whatever its types, so nothing is written
    local versions = sql_b("SELECT string_agg(xmin::text, ',' ORDER BY ctid) FROM everything")
    r = assert(b.client:pull_table_data(recv, "everything", { conflict_strategy = "overwrite" }))
    assert.same({ 0, 0, 4 }, { r.records_imported, r.records_updated, r.records_unchanged })
    assert.equals(versions, sql_b("SELECT string_agg(xmin::text, ',' ORDER BY ctid) FROM everything"))
    assert.equals(table_text(a.dbname, "everything"), table_text(b.dbname, "everything"))
  end)

  it("applies skip, overwrite, merge and append on new and existing rows", function()
    sql_b([[TRUNCATE items; INSERT INTO items VALUES (1, 'local one', 99.99, 'keep'), (2, 'local two', NULL, NULL)]])
    sql_a([[UPDATE items SET note = NULL WHERE id = 1]])
    local r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "skip" }))
    assert.same({ 120, 118, 0, 2, 0 }, { r.records_transferred, r.records_imported, r.records_updated,
      r.records_skipped, r.records_failed })
    assert.equals("local one|99.99|keep", sql_b("SELECT name || '|' || price || '|' || note FROM items WHERE id = 1"))

    -- merge: the two local rows that differ are updated, the 118 equal ones left alone
    r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "merge" }))
    assert.same({ 0, 2, 118, 0 }, { r.records_imported, r.records_updated, r.records_unchanged, r.records_skipped })
    -- merge: remote values win, but a remote null keeps the local value
    assert.equals("item 1|1.25|keep", sql_b("SELECT name || '|' || price || '|' || note FROM items WHERE id = 1"))

    -- overwrite: only row 1 differs now (merge kept its local note)
    r = assert(b.client:pull_table_data(recv, "items", { conflict_strategy = "overwrite" }))
    assert.same({ 0, 1, 119, 0 }, { r.records_imported, r.records_updated, r.records_unchanged, r.records_skipped })
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

  it("overwrite and merge leave rows equal to the incoming ones alone, and see every real change", function()
    sql_a([[INSERT INTO sameness VALUES (1, 1.10, 1, '{"a": 1}', 'A', '{1,2}'), (2, 2, 1.5, '{"b": [1, 2]}', 'b', NULL),
      (3, NULL, NULL, NULL, NULL, NULL), (4, 4, 0, '{}', 'd', '{}'), (5, 5, 5, '{"x": 1, "y": 2}', 'E', '{5}')]])
    sql_b([[INSERT INTO sameness VALUES (1, 1.1, 1, '{"a": 1}', 'A', '{1,2}'), (2, 2, 1.5, '{"b":[1,2]}', 'b', NULL),
      (3, NULL, NULL, NULL, NULL, NULL), (4, 4, '-0', '{}', 'd', '{}'), (5, 5, 5, '{"y": 2, "x": 1}', 'e', '{5}')]])
    local function versions() return sql_b("SELECT string_agg(id || ':' || xmin, ',' ORDER BY id) FROM sameness") end
    local before = versions()
    -- 1: numeric scale, 4: -0 against 0, 5: text case; 2 and 3 are equal (jsonb spacing, nulls)
    local r = assert(b.client:pull_table_data(recv, "sameness", { conflict_strategy = "overwrite" }))
    assert.same({ 5, 0, 3, 2, 0 }, { r.records_transferred, r.records_imported, r.records_updated,
      r.records_unchanged, r.records_skipped })
    assert.equals(table_text(a.dbname, "sameness"), table_text(b.dbname, "sameness"))
    local after = versions()
    assert.equals(before:match("2:%d+,3:%d+"), after:match("2:%d+,3:%d+"))
    assert.are_not.equal(before:match("1:%d+"), after:match("1:%d+"))
    -- again: nothing to write at all, for overwrite and merge alike
    for _, strategy in ipairs { "overwrite", "merge" } do
      r = assert(b.client:pull_table_data(recv, "sameness", { conflict_strategy = strategy }))
      assert.same({ 0, 5 }, { r.records_updated, r.records_unchanged })
    end
    assert.equals(after, versions())
    local t = assert(b.client:list_transfers { direction = "receive", table_name = "sameness", limit = 1 })[1]
    assert.equals(5, tonumber(t.records_skipped))
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
    assert.same({ 0, 60 }, { r.records_updated, r.records_unchanged })
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

  it("reports atomic_failed and keeps nothing when the final COMMIT is refused", function()
    sql_b([[TRUNCATE items;
      CREATE FUNCTION refuse_seven() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.id = 7 THEN RAISE EXCEPTION 'row seven is refused at commit'; END IF; RETURN NULL; END $$;
      CREATE CONSTRAINT TRIGGER seven_at_commit AFTER INSERT OR UPDATE ON items
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_seven();]])
    local none, err, detail = b.client:pull_table_data(recv, "items", { atomic = true })
    assert.is_nil(none)
    assert.equals("atomic_failed", err)
    assert.matches("commit was refused[^\n]*row seven is refused", detail.message)
    assert.equals(0, detail.result.records_failed)
    assert.equals(0, detail.result.records_imported)
    assert.equals("0", sql_b("SELECT count(*) FROM items"))
    local t = assert(b.client:list_transfers { table_name = "items", direction = "receive", limit = 1 })[1]
    assert.equals("failed", t.status)
    assert.equals("atomic_failed", t.error_message)
    sql_b("DROP TRIGGER seven_at_commit ON items; DROP FUNCTION refuse_seven()")
    assert.equals("idle", b.client:database():transaction_status())
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
    none, err = b.client:pull_table_data(conn, "items; drop table items")
    assert.equals("table_not_found", err)
    assert.equals(0, #peer.requests())
    assert.has_error(function() b.client:pull_table_data(conn, 42) end)
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

  it("gets every row from a plain sender that stops at 10,000 per request", function()
    local plain = start_plain()
    sql_b("DROP TABLE many; CREATE TABLE many (id int PRIMARY KEY, v text)")
    local conn = { site_url = plain.url, auth_token_hash = recv.auth_token_hash }
    local r = assert(b.client:pull_table_data(conn, "many"))
    plain.stop()
    -- like PhoenixKit 0.2: pull-data by key range, each row sent once
    assert.equals("pull-data-keyset", r.path)
    assert.equals(3, r.pages)
    assert.equals(25000, r.records_transferred)
    assert.equals("25000", sql_b("SELECT count(*) FROM many"))
    assert.equals(table_text(a.dbname, "many"), table_text(b.dbname, "many"))
    assert.equals(0, r.records_failed)
    -- a table that fits in one page stays on pull-data
    sql_b("TRUNCATE pairs")
    plain = start_plain()
    r = assert(b.client:pull_table_data({ site_url = plain.url, auth_token_hash = recv.auth_token_hash }, "pairs"))
    plain.stop()
    assert.equals("pull-data", r.path)
    assert.equals(60, r.records_imported)
  end)

  describe("from a PhoenixKit 0.1 sender", function()
    local function old_sender(env)
      env.OLD_SENDER_PAGE = env.OLD_SENDER_PAGE or 1000
      local srv = helper.start_nginx { name = "old", env = env, server = [[
        location / { content_by_lua_block { require("fixtures.old_sender").serve() } }]] }
      srv.requests = function() return json.decode((select(2, helper.http("GET", srv.url .. "/__requests")))) end
      return srv
    end

    it("pages table-records by key, not by offset, for an integer key", function()
      sql_b("TRUNCATE many")
      local srv = old_sender { OLD_SENDER_ROWS = 2345 }
      local r = assert(b.client:pull_table_data({ site_url = srv.url, auth_token_hash = recv.auth_token_hash }, "many"))
      local seen = srv.requests()
      srv.stop()
      assert.equals("table-records-keyset", r.path)
      assert.same({ "2345", "2750685", "row 2345" },
        { sql_b("SELECT count(*) FROM many"), sql_b("SELECT sum(id) FROM many"), sql_b("SELECT v FROM many WHERE id = 2345") })
      -- the first pull-data, the filtered one it ignored, then 24 pages of
      -- at most 100 rows, the last from the key after 2300
      assert.equals(2, seen["pull-data"])
      assert.equals(24, seen["table-records"])
      local last = json.decode(seen.last_body)
      assert.equals(2301, last.id_start)
      assert.equals(0, last.offset)
      assert.equals(1000 + 1000 + 2345, r.records_transferred)
    end)

    it("falls back to offsets when table-records does not follow id_start", function()
      sql_b("TRUNCATE many")
      local srv = old_sender { OLD_SENDER_ROWS = 1234, OLD_SENDER_IGNORE_RANGE = 1, OLD_SENDER_SHUFFLED = 1 }
      local r = assert(b.client:pull_table_data({ site_url = srv.url, auth_token_hash = recv.auth_token_hash }, "many"))
      local seen = srv.requests()
      srv.stop()
      -- a first answer out of key order tells nothing about the rest: no filtered pull-data
      assert.equals(1, seen["pull-data"])
      assert.equals("table-records", r.path)
      assert.same({ "1234", "761995" }, { sql_b("SELECT count(*) FROM many"), sql_b("SELECT sum(id) FROM many") })
      assert.equals(0, r.records_failed)
    end)
  end)

  it("pages a plain sender by offset where the key is not one integer", function()
    local site = pksync.new { db = a.conninfo, site_url = a.url }
    local conn_a = helper.sender_connection(site, { max_records_per_request = 25 })
    site:close()
    local plain = start_plain()
    sql_b("TRUNCATE pairs")
    local conn = { site_url = plain.url, auth_token_hash = conn_a.auth_token_hash }
    local r = assert(b.client:pull_table_data(conn, "pairs"))
    plain.stop()
    assert.equals("table-records", r.path)
    assert.equals("60", sql_b("SELECT count(*) FROM pairs"))
    assert.equals(table_text(a.dbname, "pairs", "region, sku"), table_text(b.dbname, "pairs", "region, sku"))
  end)

  it("resumes after the sender dies mid-pull", function()
    sql_b("DROP TABLE many; CREATE TABLE many (id int PRIMARY KEY, v text)")
    local none, err, detail = b.client:pull_table_data(recv, "many", { page_size = 2000, timeout = 3000,
      on_progress = function(ev) if ev.pages == 3 then a.srv.stop() end end })
    assert.is_nil(none)
    assert.equals("offline", err)
    -- pages 1-3 committed, and maybe a 4th that was already fetched ahead
    local committed = detail.result.records_imported
    assert.is_true(committed == 6000 or committed == 8000, tostring(committed))
    assert.equals(tostring(committed), sql_b("SELECT count(*) FROM many"))
    local t = assert(b.client:list_transfers { table_name = "many", limit = 1 })[1]
    assert.equals("failed", t.status)
    assert.is_string(t.cursor)
    start_a(a.port)
    local r = assert(b.client:pull_table_data(recv, "many", { page_size = 2000, resume = true }))
    assert.equals(25000 - committed, r.records_imported)
    assert.equals(math.ceil((25000 - committed) / 2000), r.pages)
    assert.equals("25000", sql_b("SELECT count(*) FROM many"))
    assert.equals(table_text(a.dbname, "many"), table_text(b.dbname, "many"))
  end)
end)

describe("pull_table_data from PhoenixKit-shaped answers", function()
  local dbname, conninfo, client, peer
  local API = "/phoenix_kit/sync/api/"
  local conn

  local function sql(q) return helper.psql(dbname, q) end

  local function serve_table(columns, data_json, extra)
    local cols = {}
    for i, c in ipairs(columns) do cols[i] = { column_name = c, data_type = "text", is_nullable = "YES" } end
    peer.scenario(API .. "status", { status = 200, body = { enabled = true, incoming_mode = "auto_accept",
      password_required = false } })
    peer.scenario(API .. "table-schema", { status = 200, body = { success = true, schema = { table_name = "wire",
      columns = cols } } })
    peer.scenario(API .. "list-tables", { status = 200, raw = '{"success":true,"tables":[{"name":"wire","row_count":' ..
      (extra and extra.row_count or 1) .. ',"size_bytes":1,"checksum":null,"depends_on":[]}]}' })
    peer.scenario(API .. "pull-data", extra and extra.pull or { status = 200,
      raw = '{"data":' .. data_json .. ',"success":true,"table":"wire"}' })
  end

  lazy_setup(function()
    dbname, conninfo = helper.create_database("wire")
    sql([[CREATE TYPE mood AS ENUM ('sad', 'happy');
      CREATE TABLE wire (id bigint PRIMARY KEY, u uuid, u2 uuid, u3 uuid, raw bytea, wrapped bytea, label text,
        f8 double precision, f4 real, nan double precision, inf double precision, ninf double precision,
        num numeric, tz timestamptz, ts timestamp, d date, t time, jb jsonb, jb2 jsonb, js json,
        tags text[], m mood, moods mood[], flag boolean)]])
    peer = helper.start_peer()
    client = pksync.new { db = conninfo, site_url = "https://me.example" }
    conn = { site_url = peer.url, auth_token_hash = ("c"):rep(64) }
  end)

  lazy_teardown(function()
    peer.stop()
    client:close()
    helper.drop_database(dbname)
  end)

  before_each(function()
    peer.reset()
    sql("TRUNCATE wire")
  end)

  it("stores every PhoenixKit wire form by the local column type", function()
    local row = [[{"id":9223372036854775807,
      "u":{"__phoenix_kit_binary__":"/wAAAAAAQACAAAAAAAAAAA=="},
      "u2":"\u0001\u0002\u0003\u0004\u0005\u0006\u0007\u0008\u0009\u000a\u000b\u000c\u000d\u000e\u000f\u0010",
      "u3":"ff000000-0000-4000-8000-00000000000a",
      "raw":"a\\b\\x41","wrapped":{"__phoenix_kit_binary__":"AP8Q"},
      "label":"2025-12-15","f8":1.0e10,"f4":0.10000000149011612,"nan":"NaN","inf":"inf","ninf":"-inf",
      "num":"1E-7","tz":"2025-12-15T18:56:59.387453Z","ts":"2025-12-15T18:56:59.387453","d":"2025-12-15",
      "t":"18:56:59.000000","jb":{"a":[1,{"b":null}],"n":9007199254740993},"jb2":"scalar","js":[1, 2],
      "tags":["a,b","c\"d","e\\f",null,"NULL",""],"m":"happy","moods":["sad","happy"],"flag":false}]]
    serve_table({ "id", "u", "u2", "u3", "raw", "wrapped", "label", "f8", "f4", "nan", "inf", "ninf", "num", "tz",
      "ts", "d", "t", "jb", "jb2", "js", "tags", "m", "moods", "flag" }, "[" .. row .. "]")
    local r = assert(client:pull_table_data(conn, "wire"))
    assert.equals(1, r.records_imported)
    assert.equals("pull-data", r.path)
    local checks = {
      "id = 9223372036854775807",
      "u = 'ff000000-0000-4000-8000-000000000000'",
      "u2 = '01020304-0506-0708-090a-0b0c0d0e0f10'",
      "u3 = 'ff000000-0000-4000-8000-00000000000a'",
      [[wrapped = '\x00ff10'::bytea]],
      "label = '2025-12-15'",
      "f8 = 1e10",
      "f4 = 0.1::real",
      "nan = 'NaN'", "inf = 'Infinity'", "ninf = '-Infinity'",
      "num = 0.0000001 AND num::text = '1E-7'::numeric::text",
      "tz = '2025-12-15 18:56:59.387453+00'",
      "ts = '2025-12-15 18:56:59.387453'",
      "d = '2025-12-15'", "t = '18:56:59'",
      [[jb = '{"a":[1,{"b":null}],"n":9007199254740993}'::jsonb]],
      [[jb2 = '"scalar"'::jsonb]],
      [[js::text = '[1, 2]']],
      [=[tags = ARRAY['a,b', 'c"d', 'e\f', NULL, 'NULL', '']]=],
      "m = 'happy'", "moods = '{sad,happy}'", "flag = false",
    }
    for _, c in ipairs(checks) do
      assert.equals("t", sql("SELECT (" .. c .. ") FROM wire"), c)
    end
    -- the plain string with backslashes is exactly those bytes
    assert.equals("615c625c783431", sql("SELECT encode(raw, 'hex') FROM wire"))
  end)

  it("fails rows whose values the column cannot take, and keeps the rest", function()
    serve_table({ "id", "flag", "u" }, '[{"id":1,"flag":true},{"id":2,"flag":"maybe"},{"id":3,"flag":[1]},' ..
      '{"id":4,"u":{"__phoenix_kit_binary__":"AAEC"}},"not an object",{"id":6,"flag":null}]', { row_count = 6 })
    local r = assert(client:pull_table_data(conn, "wire"))
    assert.equals(6, r.records_transferred)
    assert.equals(2, r.records_imported)
    assert.equals(4, r.records_failed)
    assert.is_string(r.error_sample)
    assert.equals("1,6", sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM wire"))
  end)

  local bad_answers = {
    { "HTML error page", { status = 500, raw = "<html>Internal Server Error</html>" }, "unexpected_response" },
    { "401", { status = 401, body = { success = false, error = "Invalid connection" } }, "unauthorized" },
    { "403", { status = 403, body = { success = false, error = "Connection is not active" } }, "forbidden" },
    { "404", { status = 404, body = { success = false, error = "Table not found" } }, "table_not_found" },
    { "success false", { status = 200, body = { success = false, error = "Failed to pull data" } }, "Failed to pull data" },
    { "no data array", { status = 200, body = { success = true, table = "wire" } }, "invalid_response" },
    { "data not an array", { status = 200, raw = '{"success":true,"data":{"id":1}}' }, "invalid_response" },
    { "truncated JSON", { status = 200, raw = '{"success":true,"data":[{"id":1},{"id":2' }, "invalid_response" },
    { "trailing garbage", { status = 200, raw = '{"success":true,"data":[{"id":1}]} tail' }, "invalid_response" },
  }
  for _, case in ipairs(bad_answers) do
    it("maps a bad answer (" .. case[1] .. ") to an error and commits nothing", function()
      serve_table({ "id" }, "[]", { pull = case[2] })
      local none, err, detail = client:pull_table_data(conn, "wire")
      assert.is_nil(none)
      assert.equals(case[3], err)
      assert.equals(0, detail.result.records_imported)
      assert.equals("0", sql("SELECT count(*) FROM wire"))
    end)
  end

  it("rolls back a page whose body is cut mid-way", function()
    local rows = {}
    for i = 1, 500 do rows[i] = ('{"id":%d,"label":"%s"}'):format(i, ("x"):rep(50)) end
    serve_table({ "id", "label" }, "[]", { row_count = 500, pull = { status = 200, mode = "close_mid_body",
      raw = '{"success":true,"data":[' .. table.concat(rows, ",") .. ']}' } })
    local none, err = client:pull_table_data(conn, "wire", { batch_rows = 50 })
    assert.is_nil(none)
    assert.is_string(err)
    assert.equals("0", sql("SELECT count(*) FROM wire"))
  end)
end)

describe("pull_tables", function()
  local a, b = {}, {}
  local recv

  lazy_setup(function()
    a.dbname, a.conninfo = helper.create_database("tables_a")
    b.dbname, b.conninfo = helper.create_database("tables_b")
    for _, s in ipairs { a, b } do
      helper.psql(s.dbname, [[
        CREATE TABLE users (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, name text);
        CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id), title text);
        CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint REFERENCES posts (id),
          user_id bigint REFERENCES users (id), body text);
        CREATE TABLE ring_a (id int PRIMARY KEY, b_id int);
        CREATE TABLE ring_b (id int PRIMARY KEY, a_id int REFERENCES ring_a (id));
        ALTER TABLE ring_a ADD FOREIGN KEY (b_id) REFERENCES ring_b (id);
      ]])
    end
    helper.psql(a.dbname, [[
      INSERT INTO users VALUES (1, 'alice@example.com', 'Alice (remote)'), (2, 'bob@example.com', 'Bob');
      INSERT INTO posts VALUES (10, 1, 'by alice'), (11, 2, 'by bob');
      INSERT INTO comments VALUES (100, 10, 2, 'bob on alice'), (101, 11, 1, 'alice on bob');
      INSERT INTO ring_a VALUES (1, NULL); INSERT INTO ring_b VALUES (1, 1);]])
    -- B already knows Alice, under another key
    helper.psql(b.dbname, "INSERT INTO users VALUES (500, 'alice@example.com', 'Alice (local)')")
    a.port = helper.free_port()
    a.url = "http://127.0.0.1:" .. a.port
    local site = pksync.new { db = a.conninfo, site_url = a.url }
    assert(site:migrate())
    assert(site:set_settings { enabled = true })
    local _, raw = assert(site:create_connection { name = "A", direction = "sender", status = "active",
      site_url = "https://b.example", notify = false, rate_limit_requests_per_minute = 0 })
    site:close()
    a.srv = helper.start_nginx { name = "tables", port = a.port, server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q } }
      }]]):format(a.conninfo, a.url) }
    b.client = pksync.new { db = b.conninfo, site_url = "https://b.example" }
    recv = { site_url = a.url, auth_token_hash = pksync.token.hash(raw) }
  end)

  lazy_teardown(function()
    a.srv.stop()
    b.client:close()
    helper.drop_database(a.dbname)
    helper.drop_database(b.dbname)
  end)

  it("orders parents first, maps unique matches and rewrites foreign keys", function()
    local out = assert(b.client:pull_tables(recv, { "comments", "posts", "users" }))
    assert.same({ "users", "posts", "comments" }, out.order)
    local users = out.tables.users
    assert.equals(1, users.records_imported)   -- Bob
    assert.equals(1, users.records_skipped)    -- Alice matched on email
    assert.equals(2, out.tables.posts.records_imported)
    assert.equals(2, out.tables.comments.records_imported)
    local sql = function(q) return helper.psql(b.dbname, q) end
    assert.equals("Alice (local)", sql("SELECT name FROM users WHERE email = 'alice@example.com'"))
    assert.equals("2", sql("SELECT count(*) FROM users"))
    assert.equals("500", sql("SELECT user_id FROM posts WHERE id = 10"))
    assert.equals("2", sql("SELECT user_id FROM posts WHERE id = 11"))
    assert.equals("500", sql("SELECT user_id FROM comments WHERE id = 101"))
    assert.equals("10", sql("SELECT post_id FROM comments WHERE id = 100"))
  end)

  it("reports dependency cycles and still completes the tables", function()
    local out = assert(b.client:pull_tables(recv, { "ring_b", "ring_a" }))
    assert.equals(1, #out.cycles)
    table.sort(out.cycles[1])
    assert.same({ "ring_a", "ring_b" }, out.cycles[1])
    assert.equals(2, #out.order)
    assert.equals("1", helper.psql(b.dbname, "SELECT count(*) FROM ring_a"))
    assert.equals("1", helper.psql(b.dbname, "SELECT count(*) FROM ring_b"))
  end)

  it("orders a whole sender's tables and reports unknown names per table", function()
    local order = require("pksync.pull")._order_tables({ c = { "b" }, b = { "a" }, a = {}, self = { "self" } },
      { "c", "self", "b", "a" })
    assert.same({ "a", "b", "c", "self" }, order)
    local out = assert(b.client:pull_tables(recv, { "users", "nope" }))
    assert.equals("table_not_found", out.tables.nope.error)
  end)
end)
