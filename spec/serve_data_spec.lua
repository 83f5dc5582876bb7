-- pksync.serve_data through client:handle against a real database: the
-- data answers' edges (paging, limits, row filters, the filtered flag, bad
-- input) beyond the endpoint walk-through in server_spec.lua.
local helper = require "helper"
local pksync = require "pksync"
local core = require "pksync.core"

local json = pksync.json
local null = pksync.null
local API = "/phoenix_kit/sync/api/"

local SCHEMA = [[
CREATE TABLE nums (id bigint PRIMARY KEY, v text);
CREATE TABLE words (w text PRIMARY KEY, n int);
CREATE TABLE stamps (at timestamptz PRIMARY KEY, n int);
CREATE TABLE decs (d numeric PRIMARY KEY, n int);
CREATE TABLE ids (id uuid PRIMARY KEY, n int);
CREATE TABLE pairs (a int, b text, PRIMARY KEY (a, b));
CREATE TABLE loose (x int, y text);
CREATE TABLE empty_one (id int PRIMARY KEY);
CREATE TABLE "MixedCase" (id int PRIMARY KEY, "Value" text);
CREATE TABLE people (id int PRIMARY KEY, name text, secret text);
INSERT INTO nums SELECT g, 'v' || g FROM generate_series(1, 50) g;
INSERT INTO words VALUES ('a', 1), ('b,c', 2), ('d"e', 3), ('f\g', 4), ('ünï', 5), (' sp', 6), ('NULL', 7),
  ('(x)', 8), ('z', 9);
INSERT INTO stamps SELECT timestamptz '2025-01-01 00:00:00.123456+00' + g * interval '1 hour 0.5 second', g
  FROM generate_series(1, 17) g;
INSERT INTO decs SELECT g / 4.0, g FROM generate_series(1, 11) g;
INSERT INTO ids SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, g FROM generate_series(1, 9) g;
INSERT INTO pairs SELECT g % 3, 'k' || g FROM generate_series(1, 13) g;
INSERT INTO loose SELECT g, 'r' || g FROM generate_series(1, 8) g;
INSERT INTO "MixedCase" VALUES (1, 'one'), (2, 'two');
INSERT INTO people VALUES (1, 'Ann', 's1'), (2, 'Bob', 's2');
CREATE SCHEMA shop;
CREATE TABLE shop.items (sku text PRIMARY KEY, qty int);
CREATE TABLE shop.nums (id int PRIMARY KEY);
INSERT INTO shop.items VALUES ('s1', 1), ('s2', 2), ('s3', 3);
]]

describe("pksync.serve_data", function()
  local dbname, conninfo, site, conn

  local function sql(q) return helper.psql(dbname, q) end

  local function sender(attrs) return helper.sender_connection(site, attrs) end

  -- body: a table (auth added) or raw JSON text; returns status, decoded body, raw body
  local function call(ep, body, who, client)
    local raw = body
    if type(body) ~= "string" then
      local b = { auth_token_hash = (who or conn).auth_token_hash }
      for k, v in pairs(body or {}) do b[k] = v end
      raw = json.encode(b)
    end
    local res = (client or site):handle { method = "POST", path = API .. ep, body = raw,
      headers = {}, remote_addr = "127.0.0.1" }
    return res.status, json.decode(res.body), res.body
  end

  -- raw JSON with the connection's hash in front of `rest`
  local function raw(rest, who)
    return ('{"auth_token_hash":%s,%s}'):format(json.encode((who or conn).auth_token_hash), rest)
  end

  local function field(rows, name)
    local out = {}
    for i, r in ipairs(rows) do out[i] = r[name] end
    return out
  end

  local function pull_all(tbl, limit, extra, who)
    local rows, pages, after = {}, 0, nil
    repeat
      local b = { table_name = tbl, limit = limit, after = after }
      for k, v in pairs(extra or {}) do b[k] = v end
      local status, body = call("pull-data", b, who)
      assert.equals(200, status, body and body.error)
      pages = pages + 1
      for _, r in ipairs(body.data) do rows[#rows + 1] = r end
      after = body.next_after
      assert(pages < 1000, "runaway paging")
    until not body.has_more
    return rows, pages
  end

  lazy_setup(function()
    dbname, conninfo = helper.create_database("serve_data")
    sql(SCHEMA)
    site = pksync.new { db = conninfo, site_url = "https://a.example" }
    assert(site:migrate())
    assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
    conn = sender()
  end)

  lazy_teardown(function()
    site:close()
    helper.drop_database(dbname)
  end)

  describe("table-records", function()
    it("clamps offset and limit, takes digit strings, and falls back on anything else", function()
      local cases = {
        { { offset = -5, limit = 2 }, { 1, 2 } },
        { { offset = "48", limit = "10" }, { 49, 50 } },
        { { offset = 1.5, limit = 3 }, { 1, 2, 3 } },          -- not an integer: default 0
        { { offset = "1e1", limit = 1 }, { 1 } },
        { { limit = -3 }, { 1 } },                             -- clamped to 1
        { { limit = "99999999999999999999", offset = 45 }, { 46, 47, 48, 49, 50 } },
        { { limit = 2.5 }, 10 },                               -- default 10
        { { limit = true, offset = {} }, 10 },
        { { limit = "3 OR 1=1" }, 10 },
      }
      for _, c in ipairs(cases) do
        local b = { table_name = "nums" }
        for k, v in pairs(c[1]) do b[k] = v end
        local status, body = call("table-records", b)
        assert.equals(200, status)
        if type(c[2]) == "number" then
          assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, field(body.records, "id"), json.encode(c[1]))
        else
          assert.same(c[2], field(body.records, "id"), json.encode(c[1]))
        end
      end
      local _, body = call("table-records", { table_name = "nums", limit = 1000, offset = 0 })
      assert.equals(50, #body.records)
      sql("INSERT INTO nums SELECT g, 'x' FROM generate_series(51, 150) g")
      _, body = call("table-records", { table_name = "nums", limit = 1000 })
      sql("DELETE FROM nums WHERE id > 50")
      assert.equals(100, #body.records)
    end)

    it("answers an empty array past the end and for an empty table", function()
      local status, _, text = call("table-records", { table_name = "nums", offset = 50 })
      assert.equals(200, status)
      assert.equals('{"success":true,"records":[]}', text)
      _, _, text = call("table-records", { table_name = "empty_one" })
      assert.equals('{"success":true,"records":[]}', text)
    end)

    it("orders keyless tables by their physical order, and odd names by their key", function()
      local _, body = call("table-records", { table_name = "loose", limit = 100 })
      assert.same({ 1, 2, 3, 4, 5, 6, 7, 8 }, field(body.records, "x"))
      _, body = call("table-records", { table_name = "MixedCase" })
      assert.same({ "one", "two" }, field(body.records, "Value"))
      _, body = call("table-records", { table_name = "words", limit = 100 })
      assert.same({ " sp", "(x)", "NULL", "a", "b,c", 'd"e', "f\\g", "z", "ünï" }, field(body.records, "w"))
    end)

    it("applies half-open and empty id ranges", function()
      local _, body = call("table-records", { table_name = "nums", id_start = 48 })
      assert.same({ 48, 49, 50 }, field(body.records, "id"))
      _, body = call("table-records", { table_name = "nums", id_end = 2 })
      assert.same({ 1, 2 }, field(body.records, "id"))
      _, body = call("table-records", { table_name = "nums", id_start = 20, id_end = 10 })
      assert.same({}, body.records)
      _, body = call("table-records", { table_name = "nums", id_start = -100, id_end = 0 })
      assert.same({}, body.records)
      -- a whole number written as 10.0 is still an integer; JSON null means no bound
      local status
      status, body = call("table-records", raw('"table_name":"nums","id_start":10.0,"id_end":11'))
      assert.equals(200, status)
      assert.same({ 10, 11 }, field(body.records, "id"))
      _, body = call("table-records", raw('"table_name":"nums","id_start":null,"id_end":3,"ids":null'))
      assert.same({ 1, 2, 3 }, field(body.records, "id"))
      -- beyond 2^53 and beyond bigint: no rows, no error
      status, body = call("table-records", raw('"table_name":"nums","id_start":9007199254740993'))
      assert.equals(200, status)
      assert.same({}, body.records)
    end)

    it("refuses filters that do not fit the key, with a code", function()
      local cases = {
        { "nums", { id_start = "10" }, "invalid_filter" },
        { "nums", { id_start = 1.5 }, "invalid_filter" },
        { "nums", { id_end = true }, "invalid_filter" },
        { "nums", { id_start = {} }, "invalid_filter" },
        { "nums", { ids = {} }, "invalid_filter" },
        { "nums", { ids = "1,2" }, "invalid_filter" },
        { "nums", { ids = { a = 1 } }, "invalid_filter" },
        { "nums", { ids = { 1, "2" } }, "invalid_filter" },
        { "nums", { ids = { 1, 2.5 } }, "invalid_filter" },
        { "words", { id_start = 1 }, "invalid_filter" },
        { "words", { ids = { "" } }, "invalid_filter" },
        { "words", { ids = { ("x"):rep(256) } }, "invalid_filter" },
        { "words", { ids = { "a\0b" } }, "invalid_filter" },
        { "ids", { ids = { "00000000-0000-4000-8000-00000000000" } }, "invalid_filter" },
        { "ids", { ids = { "not-a-uuid-at-all-but-36-chars-long!" } }, "invalid_filter" },
        { "ids", { ids = { 1 } }, "invalid_filter" },
        { "stamps", { ids = { "2025-01-01" } }, "unsupported_key_type" },
        { "decs", { id_start = 1 }, "unsupported_key_type" },
        { "pairs", { id_start = 1 }, "filter_needs_single_key" },
        { "loose", { ids = { 1 } }, "filter_needs_single_key" },
      }
      for _, c in ipairs(cases) do
        local b = { table_name = c[1] }
        for k, v in pairs(c[2]) do b[k] = v end
        for _, ep in ipairs { "table-records", "pull-data" } do
          local status, body = call(ep, b)
          assert.equals(400, status, ep .. " " .. c[1] .. " " .. json.encode(c[2]))
          assert.equals(c[3], body.error_code, ep .. " " .. c[1] .. " " .. json.encode(c[2]))
          assert.is_false(body.success)
          assert.is_string(body.error)
        end
      end
      local ids = {}
      for i = 1, 1001 do ids[i] = i end
      assert.equals("invalid_filter", select(2, call("table-records", { table_name = "nums", ids = ids })).error_code)
      ids[1001] = nil
      local status, body = call("table-records", { table_name = "nums", ids = ids, limit = 100 })
      assert.equals(200, status)
      assert.equals(50, #body.records)
    end)

    it("takes ids of text keys as given (numbers as text), and of uuid keys in any case", function()
      local _, body = call("table-records", { table_name = "words", ids = { "b,c", 'd"e', "nope", "NULL" } })
      assert.same({ "NULL", "b,c", 'd"e' }, field(body.records, "w"))
      sql("INSERT INTO words VALUES ('42', 42)")
      _, body = call("table-records", { table_name = "words", ids = { 42 } })
      assert.same({ "42" }, field(body.records, "w"))
      sql("DELETE FROM words WHERE w = '42'")
      _, body = call("table-records", { table_name = "ids", uuid_format = "text",
        ids = { "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-00000000000A",
                "00000000-0000-4000-8000-000000000009" } })
      assert.same({ "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000009" },
        field(body.records, "id"))
    end)
  end)

  describe("pull-data", function()
    it("sends the paging fields before the rows, and the filtered flag only for filtered pulls", function()
      local _, body, text = call("pull-data", { table_name = "nums", limit = 5 })
      assert.is_true(body.has_more)
      assert.is_nil(body.filtered)
      assert.is_true(text:find('"has_more"', 1, true) < text:find('"data"', 1, true))
      assert.is_true(text:find('"next_after"', 1, true) < text:find('"data"', 1, true))
      for _, f in ipairs { { ids = { 3, 1 } }, { id_start = 10 }, { id_end = 2 } } do
        local b = { table_name = "nums" }
        for k, v in pairs(f) do b[k] = v end
        _, body, text = call("pull-data", b)
        assert.is_true(body.filtered, json.encode(f))
        assert.is_true(text:find('"filtered"', 1, true) < text:find('"data"', 1, true))
      end
      -- a filter that matches nothing is still a filtered, complete answer
      _, body, text = call("pull-data", { table_name = "nums", ids = { 999 } })
      assert.is_true(body.filtered)
      assert.is_false(body.has_more)
      assert.truthy(text:find('"data":[]', 1, true))
    end)

    it("pages through an id range exactly once, the range kept on every page", function()
      local rows, pages = pull_all("nums", 4, { id_start = 11, id_end = 27 })
      assert.equals(17, #rows)
      assert.equals(5, pages)
      for i, r in ipairs(rows) do assert.equals(10 + i, r.id) end
      rows = pull_all("nums", 3, { ids = { 50, 1, 25, 2, 49 } })
      assert.same({ 1, 2, 25, 49, 50 }, field(rows, "id"))
    end)

    it("pages exactly once through text, timestamp, numeric and uuid keys", function()
      local rows = pull_all("words", 2)
      assert.same({ " sp", "(x)", "NULL", "a", "b,c", 'd"e', "f\\g", "z", "ünï" }, field(rows, "w"))
      rows = pull_all("stamps", 3)
      assert.equals(17, #rows)
      for i, r in ipairs(rows) do assert.equals(i, r.n) end
      rows = pull_all("decs", 4)
      assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 }, field(rows, "n"))
      rows = pull_all("ids", 2)
      assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9 }, field(rows, "n"))
      rows = pull_all("ids", 4, { uuid_format = "text" })
      assert.equals("00000000-0000-4000-8000-000000000009", rows[9].id)
    end)

    it("takes a limit only as a positive number (floored), else the connection's page", function()
      local small = sender { max_records_per_request = 7 }
      for _, c in ipairs { { 2.9, 2 }, { 1, 1 }, { 0, 7 }, { -4, 7 }, { "3", 7 }, { 1000, 7 } } do
        local status, body = call("pull-data", { table_name = "nums", limit = c[1] }, small)
        assert.equals(200, status)
        assert.equals(c[2], #body.data, tostring(c[1]))
        assert.is_true(body.has_more)
        assert.is_true(body.truncated)
      end
      -- a page that ends exactly at the end of the table has no more
      local _, body = call("pull-data", { table_name = "nums", limit = 50 })
      assert.equals(50, #body.data)
      assert.is_false(body.has_more)
      assert.is_nil(body.truncated)
      assert.equals(null, body.next_after)
    end)

    it("refuses malformed cursors and cursors of another table's key", function()
      local _, first = call("pull-data", { table_name = "pairs", limit = 2 })
      local pairs_cursor = first.next_after
      assert.is_string(pairs_cursor)
      _, first = call("pull-data", { table_name = "stamps", limit = 2 })
      local stamps_cursor = first.next_after
      local bad = {
        { "nums", pairs_cursor },           -- two key values for a one-column key
        { "pairs", stamps_cursor },
        { "nums", stamps_cursor },          -- a timestamp where a bigint goes
        { "nums", 12 },
        { "nums", { k = { "1" } } },
        { "nums", ("A"):rep(8193) },
        { "nums", core.base64_encode('{"k":["1"],"t":"x; DROP"}') },
        { "nums", core.base64_encode('{"k":["1"],"t":5}') },
        { "nums", core.base64_encode('{"k":"1"}') },
        { "nums", core.base64_encode('[1]') },
        { "nums", core.base64_encode('{"k":["99999999999999999999"]}') },
      }
      for i, c in ipairs(bad) do
        local status, body = call("pull-data", { table_name = c[1], after = c[2] })
        assert.equals(400, status, i)
        assert.equals("invalid_cursor", body.error_code, i)
      end
      local status, body = call("pull-data", { table_name = "nums", after = "" })
      assert.equals(400, status)
      assert.equals("invalid_cursor", body.error_code)
      -- null is no cursor: the pull starts from the beginning
      status, body = call("pull-data", raw('"table_name":"nums","after":null,"limit":2'))
      assert.equals(200, status)
      assert.same({ 1, 2 }, field(body.data, "id"))
    end)

    it("records one send transfer per table pull, in progress until the last page", function()
      local c = sender()
      local _, first = call("pull-data", { table_name = "nums", limit = 20, conflict_strategy = "overwrite" }, c)
      local t = assert(site:list_transfers { connection_uuid = c.uuid })
      assert.equals(1, #t)
      assert.same({ "in_progress", 20, "overwrite", "nums" },
        { t[1].status, t[1].records_transferred, t[1].conflict_strategy, t[1].table_name })
      local _, second = call("pull-data", { table_name = "nums", limit = 20, after = first.next_after }, c)
      call("pull-data", { table_name = "nums", limit = 20, after = second.next_after }, c)
      t = assert(site:list_transfers { connection_uuid = c.uuid })
      assert.equals(1, #t)
      assert.same({ "completed", 50 }, { t[1].status, t[1].records_transferred })
      -- a strategy that cannot be one is recorded as the default
      local d = sender()
      call("pull-data", { table_name = "nums", conflict_strategy = ("x"):rep(21) }, d)
      assert.equals("skip", assert(site:list_transfers { connection_uuid = d.uuid })[1].conflict_strategy)
    end)

    it("behaves as a plain PhoenixKit sender with extensions off", function()
      local plain = pksync.new { db = conninfo, site_url = "https://a.example", extensions = false }
      local c = sender { max_records_per_request = 6 }
      local status, body = call("pull-data", { table_name = "ids", limit = 2, after = "garbage", uuid_format = "text" },
        c, plain)
      assert.equals(200, status)
      assert.equals(6, #body.data)
      assert.is_true(body.truncated)
      assert.is_table(body.data[1].id) -- PhoenixKit's binary wrapper, not text
      assert.is_string(body.data[1].id.__phoenix_kit_binary__)
      plain:close()
    end)
  end)

  describe("access and input", function()
    it("refuses table names that are not strings and empty names, before any lookup", function()
      for _, ep in ipairs { "table-schema", "table-records", "pull-data" } do
        local status, body = call(ep, { table_name = 42 })
        assert.equals(400, status, ep)
        assert.equals("Invalid field types", body.error)
        status, body = call(ep, { table_name = "" })
        assert.equals(400, status, ep)
        status, body = call(ep, { table_name = { "nums" } })
        assert.equals(400, status, ep)
      end
    end)

    it("fails closed when a serving hook raises: no data, a 403 or 500", function()
      local broken_redact = pksync.new { db = conninfo, policy = { redact = function() error("boom") end } }
      for _, ep in ipairs { "table-schema", "table-records", "pull-data" } do
        local status, _, text = call(ep, { table_name = "people" }, nil, broken_redact)
        assert.equals(500, status, ep)
        assert.is_nil(text:find("s1", 1, true), ep)
        assert.is_nil(text:find("boom", 1, true), ep)
      end
      broken_redact:close()
      local broken_allowed = pksync.new { db = conninfo, policy = { table_allowed = function() error("boom") end } }
      local status, body = call("pull-data", { table_name = "people" }, nil, broken_allowed)
      assert.equals(403, status)
      assert.is_nil(body.data)
      local _, listed = call("list-tables", {}, nil, broken_allowed)
      assert.same({}, listed.tables)
      broken_allowed:close()
    end)

    it("redacts only names a column can have, and hides them everywhere", function()
      local redacting = pksync.new { db = conninfo, policy = { redact = function(_, t)
        if t == "people" then return { "secret", 42, "no_such_column", "name\0x" } end
        return "not a list"
      end } }
      local _, body, text = call("pull-data", { table_name = "people" }, nil, redacting)
      assert.same({ { id = 1, name = "Ann" }, { id = 2, name = "Bob" } }, body.data)
      assert.is_nil(text:find("s1", 1, true))
      _, body = call("table-records", { table_name = "people" }, nil, redacting)
      assert.same({ id = 1, name = "Ann" }, body.records[1])
      _, body = call("table-records", { table_name = "nums", limit = 1 }, nil, redacting)
      assert.same({ { id = 1, v = "v1" } }, body.records)
      redacting:close()
    end)

    it("serves the configured schema only", function()
      local shop = pksync.new { db = conninfo, site_url = "https://a.example", schema = "shop" }
      local _, body = call("list-tables", {}, nil, shop)
      assert.same({ "items", "nums" }, field(body.tables, "name"))
      assert.equals(3, body.tables[1].row_count)
      local status
      status, body = call("pull-data", { table_name = "items" }, nil, shop)
      assert.equals(200, status)
      assert.same({ "s1", "s2", "s3" }, field(body.data, "sku"))
      _, body = call("pull-data", { table_name = "nums" }, nil, shop)
      assert.same({}, body.data) -- shop.nums, not public.nums
      status = call("pull-data", { table_name = "words" }, nil, shop)
      assert.equals(404, status)
      status = call("pull-data", { table_name = "items" })
      assert.equals(404, status)
      _, body = call("table-schema", { table_name = "items" }, nil, shop)
      assert.same({ "sku" }, body.schema.primary_key)
      shop:close()
    end)
  end)
end)
