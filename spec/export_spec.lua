-- core.export_rows (src/export.c): rows out of PostgreSQL as protocol JSON,
-- checked value by value against docs/protocol.md's "Values on the wire".
local helper = require "helper"
local core = require "pksync.core"

local null = core.null
local WRAP = "__phoenix_kit_binary__"

-- The exact decimal text of a decoded JSON number: an integer on Lua 5.4,
-- a number or (beyond 2^53 on LuaJIT) an exact decimal.
local function num_text(v)
  if type(v) == "number" then
    if math.type and math.type(v) == "integer" then return ("%d"):format(v) end
    return ("%.17g"):format(v)
  end
  assert(core.is_decimal(v), "not a number: " .. tostring(v))
  return tostring(v)
end

local function wrapper(b64) return { [WRAP] = b64 } end

-- Compare decoded JSON with expected Lua data, ignoring the array metatable.
local function plain(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = plain(x) end
  return t
end

describe("pksync.core export_rows", function()
  local dbname, conninfo, db

  local function export(sql, params, opts)
    local json, count, has_more, last_key = core.export_rows(db, sql, params, opts)
    assert(json, count)
    return json, count, has_more, last_key
  end

  -- Export and decode; returns the rows and the raw text.
  local function rows(sql, params, opts)
    local json = export(sql, params, opts)
    return plain(assert(core.json_decode(json))), json
  end

  local function settings()
    local r = assert(db:query([[SELECT current_setting('TimeZone') AS tz,
      current_setting('DateStyle') AS ds, current_setting('IntervalStyle') AS ist,
      current_setting('extra_float_digits') AS efd, current_setting('bytea_output') AS bo,
      current_setting('transaction_read_only') AS ro]]))
    return r[1]
  end

  local function in_transaction()
    local ok, _, detail = db:exec("SAVEPOINT probe")
    if ok then
      assert(db:exec("RELEASE SAVEPOINT probe"))
      return true
    end
    assert.equals("25P01", detail.sqlstate) -- SAVEPOINT outside a transaction block
    return false
  end

  lazy_setup(function()
    dbname, conninfo = helper.create_database("export")
    db = assert(core.pg_connect(conninfo))
    assert(db:exec([=[
      CREATE EXTENSION citext;
      CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
      CREATE DOMAIN posint AS int CHECK (VALUE > 0);
      CREATE DOMAIN posint2 AS posint;
      CREATE TABLE t (
        id int PRIMARY KEY,
        i2 int2, i4 int4, i8 int8, o oid,
        f4 float4, f8 float8, n numeric, b bool,
        tx text, vc varchar(10), bc char(4), nm name, ch "char", ci citext, e mood,
        tz0 timestamptz(0), tz3 timestamptz(3), tz timestamptz, ts timestamp,
        tm2 time(2), tm time, ttz timetz, d date,
        iv interval, ip inet, m money, r int4range,
        jb jsonb, js json, by bytea, u uuid,
        a_tx text[], a_i8 int8[], a_n numeric[], a_2d int[][], a_by bytea[], a_u uuid[],
        a_e mood[], a_tz timestamptz(3)[], a_jb jsonb[], a_f8 float8[], a_dom posint2[],
        a_box box[]
      );
      INSERT INTO t VALUES (1,
        1, 42, 9007199254740993, 4294967295,
        0.1, 0.1, 12.50, true,
        E'h\u00e9 "q" \\ \n', 'short', 'ab', 'name', 'c', 'MiXed', 'happy',
        '2025-12-15 20:56:59.387453+02', '2025-12-15 18:56:59.387453+00',
        '2025-12-15 18:56:59.387453+00', '2025-12-15 18:56:59.387453',
        '18:56:59.5', '18:56:59', '18:56:59+02', '2025-12-15',
        '1 day 02:03:04', '192.168.0.1/24', 12.5, '[1,10)',
        '{"b": null, "a": [1, 2.50, "x"]}', '{"z":1,  "a" : [true]}',
        convert_to(E'h\u00e9llo', 'UTF8'), 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        ARRAY['a', 'b,c', '"q"', 'back\slash', NULL, '', 'NULL', ' sp ', '{}'],
        ARRAY[9223372036854775807, -9223372036854775808, 9007199254740993, NULL],
        ARRAY[0.0000001, 12.50, 'NaN', NULL]::numeric[],
        ARRAY[[1, 2], [3, NULL]],
        ARRAY['\x00ff10'::bytea, 'abc'::bytea, NULL, ''::bytea],
        ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, NULL],
        ARRAY['sad', NULL, 'happy']::mood[],
        ARRAY['2025-12-15 18:56:59.1+00'::timestamptz, 'infinity'],
        ARRAY['{"k": [1, {}]}'::jsonb, 'null', NULL],
        ARRAY[0.1, 'NaN', 'Infinity', '-Infinity', '-0', 1e300]::float8[],
        ARRAY[1, 2]::posint2[],
        ARRAY[box '((0,0),(1,1))', box '((2,2),(3,3))']);
      INSERT INTO t (id, i2, i4, i8, f4, f8, n, b, tz0, tz3, tz, ts, tm2, d, jb, js, by, u, a_2d)
      VALUES (2, 32767, 2147483647, 9223372036854775807, 'NaN', 1e300, '1E-7', false,
        '2025-12-15 18:56:59.6+00', '2025-12-15 18:56:59.1+00', 'infinity', '-infinity',
        '18:56:59.123', 'infinity', '[1, "two", null]', '"scalar"', '\x00ff10',
        '41424344-4546-4748-494a-4b4c4d4e4f50', '[0:1][1:2]={{1,2},{3,4}}');
      INSERT INTO t (id, i2, i4, i8, f4, f8, n, tz, ts, d, jb, js, by)
      VALUES (3, -32768, -2147483648, -9223372036854775808, 'Infinity', '-0', 'NaN',
        '0044-03-15 12:00:00+00 BC', '0044-03-15 12:00:00 BC', '0044-03-15 BC',
        'null', 'null', '\x');
      INSERT INTO t (id) VALUES (4);
      CREATE TABLE k (a text, b int, secret text);
      INSERT INTO k VALUES ('x', 1, 's1'), ('x', 2, 's2'), ('y', NULL, 's3');
    ]=]))
  end)

  lazy_teardown(function()
    if db then db:close() end
    helper.drop_database(dbname)
  end)

  describe("values", function()
    local all, json
    lazy_setup(function()
      all, json = rows("SELECT * FROM t ORDER BY id")
    end)

    it("writes one object per row, keys in result order", function()
      assert.equals(4, #all)
      assert.equals('[{"b":1,"a":2}]', (export("SELECT 1 AS b, 2 AS a")))
      local first = json:match("^%[(%b{})")
      local cols = assert(db:query([[SELECT attname FROM pg_attribute
        WHERE attrelid = 't'::regclass AND attnum > 0 ORDER BY attnum]]))
      local pos = 0
      for _, c in ipairs(cols) do
        local at = first:find((pos == 0 and '{"' or ',"') .. c.attname .. '":', pos + 1, true)
        assert(at and at > pos, "column out of order: " .. c.attname)
        pos = at
      end
    end)

    it("writes integers exactly", function()
      local r1, r2, r3 = all[1], all[2], all[3]
      assert.equals("1", num_text(r1.i2))
      assert.equals("42", num_text(r1.i4))
      assert.equals("9007199254740993", num_text(r1.i8))
      assert.equals("4294967295", num_text(r1.o))
      assert.equals("32767", num_text(r2.i2))
      assert.equals("2147483647", num_text(r2.i4))
      assert.equals("9223372036854775807", num_text(r2.i8))
      assert.equals("-32768", num_text(r3.i2))
      assert.equals("-2147483648", num_text(r3.i4))
      assert.equals("-9223372036854775808", num_text(r3.i8))
      -- the digits on the wire are PostgreSQL's own
      assert.equals(helper.psql(dbname, "SELECT i8 FROM t WHERE id = 2"), "9223372036854775807")
      assert.truthy(json:find('"i8":9223372036854775807,', 1, true))
      assert.truthy(json:find('"i8":-9223372036854775808,', 1, true))
      assert.truthy(json:find('"i8":9007199254740993,', 1, true))
    end)

    it("writes floats as numbers, a real widened to double, NaN/inf as strings", function()
      assert.equals(0.1, all[1].f8)
      assert.equals(1e300, all[2].f8)
      assert.equals(0, all[3].f8)
      assert.equals(-math.huge, 1 / all[3].f8) -- -0.0 stays negative
      assert.truthy(json:find('"f8":-0.0,', 1, true))
      assert.truthy(json:find('"f4":0.10000000149011612,', 1, true))
      assert.equals(0.10000000149011612, all[1].f4)
      assert.equals("NaN", all[2].f4)
      assert.equals("inf", all[3].f4)
      local r = rows([[SELECT 'NaN'::float8 AS a, 'Infinity'::float8 AS b, '-Infinity'::float8 AS c,
        '-Infinity'::float4 AS d, 1::float8 AS e, 1e15::float8 AS f, 5e-324::float8 AS g,
        1.5::float4 AS h, 3::float4 AS i, 1e-5::float4 AS j, 0.3::float8 AS k]])[1]
      assert.same({ a = "NaN", b = "inf", c = "-inf", d = "-inf" },
        { a = r.a, b = r.b, c = r.c, d = r.d })
      assert.equals(1.0, r.e)
      if math.type then assert.equals("float", math.type(r.e)) end
      assert.equals(1e15, r.f)
      assert.truthy((export("SELECT 5e-324::float8 AS g")):find('"g":5e-324', 1, true))
      assert.equals(1.5, r.h)
      assert.equals(3.0, r.i)
      assert.equals(0.3, r.k)
      -- the float4 1e-5 is 9.99999974737875163555145263671875e-06 exactly
      assert.equals(9.99999974737875163555145263671875e-06, r.j)
    end)

    it("writes numerics as strings, as PhoenixKit's Decimal does", function()
      assert.equals("12.50", all[1].n)
      assert.equals("1E-7", all[2].n)
      assert.equals("NaN", all[3].n)
      local r = rows([[SELECT 'Infinity'::numeric AS a, '-Infinity'::numeric AS b,
        -0.00000012300 AS c, 0.0000000 AS d, 0.000001 AS e, 123456789012345678901234567890 AS f,
        -5.5 AS g, 0.00 AS h, 1e20::numeric AS i]])[1]
      assert.same({ a = "Infinity", b = "-Infinity", c = "-1.2300E-7", d = "0E-7", e = "0.000001",
        f = "123456789012345678901234567890", g = "-5.5", h = "0.00", i = "100000000000000000000" }, r)
      -- inside arrays the plain form
      assert.same({ "0.0000001", "12.50", "NaN", null }, all[1].a_n)
      -- both forms mean the same numeric, scale included
      local back = assert(db:query("SELECT '1E-7'::numeric::text AS a, '-1.2300E-7'::numeric::text AS c"))[1]
      assert.same({ a = "0.0000001", c = "-0.00000012300" }, back)
    end)

    it("writes booleans, texts, enums and NULLs", function()
      assert.is_true(all[1].b)
      assert.is_false(all[2].b)
      assert.equals('h\u{e9} "q" \\ \n', all[1].tx)
      assert.equals("short", all[1].vc)
      assert.equals("ab  ", all[1].bc)
      assert.equals("name", all[1].nm)
      assert.equals("c", all[1].ch)
      assert.equals("MiXed", all[1].ci)
      assert.equals("happy", all[1].e)
      for k, v in pairs(all[4]) do
        if k ~= "id" then assert.equals(null, v, k) end
      end
      local last = json:sub((json:find('{"id":4,', 1, true)))
      assert.equals(43, select(2, last:gsub(":null", "")))
    end)

    it("writes times in UTC ISO 8601 with the declared fraction digits", function()
      local r1, r2, r3 = all[1], all[2], all[3]
      assert.equals("2025-12-15T18:56:59Z", r1.tz0)
      assert.equals("2025-12-15T18:56:59.387Z", r1.tz3)
      assert.equals("2025-12-15T18:56:59.387453Z", r1.tz)
      assert.equals("2025-12-15T18:56:59.387453", r1.ts)
      assert.equals("18:56:59.50", r1.tm2)
      assert.equals("18:56:59.000000", r1.tm)
      assert.equals("18:56:59+02", r1.ttz)
      assert.equals("2025-12-15", r1.d)
      assert.equals("2025-12-15T18:57:00Z", r2.tz0) -- rounded by the column's precision
      assert.equals("2025-12-15T18:56:59.100Z", r2.tz3)
      assert.equals("18:56:59.12", r2.tm2)
      assert.equals("infinity", r2.tz)
      assert.equals("-infinity", r2.ts)
      assert.equals("infinity", r2.d)
      assert.equals("0044-03-15 12:00:00+00 BC", r3.tz)
      assert.equals("0044-03-15 12:00:00 BC", r3.ts)
      assert.equals("0044-03-15 BC", r3.d)
      local r = rows([[SELECT '2025-12-15 18:56:59'::timestamp(0) AS a,
        '2025-12-15 18:56:59.5'::timestamp(6) AS b,
        '10000-01-01 00:00:00+00'::timestamptz AS c, '24:00:00'::time AS d]])[1]
      assert.same({ a = "2025-12-15T18:56:59", b = "2025-12-15T18:56:59.500000",
        c = "10000-01-01T00:00:00.000000Z", d = "24:00:00.000000" }, r)
    end)

    it("writes other types as PostgreSQL's text", function()
      local text = assert(db:query("SELECT iv::text, ip::text, m::text, r::text FROM t WHERE id = 1"))[1]
      assert.equals("1 day 02:03:04", all[1].iv)
      assert.equals(text.iv, all[1].iv)
      assert.equals("192.168.0.1/24", all[1].ip)
      assert.equals(text.m, all[1].m)
      assert.equals("[1,10)", all[1].r)
      local r = rows([[SELECT B'101' AS a, point(1, 2) AS b, '<x/>'::xml AS c, 'a b'::tsvector AS d,
        ARRAY[int4range(1, 3)] AS e, ROW(1, 'x') AS f, '1 2'::int2vector AS g]])[1]
      assert.same({ a = "101", b = "(1,2)", c = "<x/>", d = "'a' 'b'", e = { "[1,3)" },
        f = "(1,x)", g = "1 2" }, r)
    end)

    it("inserts json and jsonb values as JSON", function()
      assert.same({ a = { 1, 2.5, "x" }, b = null }, all[1].jb)
      assert.truthy(json:find('"jb":{"a": [1, 2.50, "x"], "b": null},', 1, true))
      assert.truthy(json:find('"js":{"z":1,  "a" : [true]},', 1, true))
      assert.same({ 1, "two", null }, all[2].jb)
      assert.equals("scalar", all[2].js)
      assert.equals(null, all[3].jb)
      assert.equals(null, all[3].js)
    end)

    it("writes bytea as a string when UTF-8, else as the binary wrapper", function()
      assert.equals("h\u{e9}llo", all[1].by)
      local b64 = assert(db:query("SELECT encode(by, 'base64') AS b FROM t WHERE id = 2"))[1].b
      assert.same(wrapper(b64), all[2].by)
      assert.equals("AP8Q", b64)
      assert.equals("\0\255\16", core.base64_decode(all[2].by[WRAP]))
      assert.equals("", all[3].by)
      assert.same({ b = "\0" }, rows([[SELECT '\x00'::bytea AS b]])[1]) -- U+0000 is valid UTF-8
    end)

    it("writes uuids as PhoenixKit's 16 raw bytes, or as text on request", function()
      local b64 = assert(db:query([[SELECT encode(decode(replace(u::text, '-', ''), 'hex'), 'base64') AS b
        FROM t WHERE id = 1]]))[1].b
      assert.same(wrapper(b64), all[1].u)
      assert.equals("ABCDEFGHIJKLMNOP", all[2].u) -- 16 bytes that happen to be UTF-8
      assert.same({ wrapper(b64), null }, all[1].a_u)
      local r = rows("SELECT u, a_u FROM t WHERE id = 1", nil, { uuid = "text" })[1]
      assert.equals("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", r.u)
      assert.same({ "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", null }, r.a_u)
      r = rows("SELECT u FROM t WHERE id = 1", nil, { uuid = "binary" })[1]
      assert.same(wrapper(b64), r.u)
    end)

    it("writes arrays as JSON arrays, elements by the element type", function()
      local r = all[1]
      assert.same({ "a", "b,c", '"q"', "back\\slash", null, "", "NULL", " sp ", "{}" }, r.a_tx)
      assert.equals("9223372036854775807", num_text(r.a_i8[1]))
      assert.equals("-9223372036854775808", num_text(r.a_i8[2]))
      assert.equals("9007199254740993", num_text(r.a_i8[3]))
      assert.equals(null, r.a_i8[4])
      assert.same({ { 1, 2 }, { 3, null } }, r.a_2d)
      assert.same({ { 1, 2 }, { 3, 4 } }, all[2].a_2d) -- bounds decoration dropped
      assert.same({ wrapper("AP8Q"), "abc", null, "" }, r.a_by)
      assert.same({ "sad", null, "happy" }, r.a_e)
      assert.same({ "2025-12-15T18:56:59.100Z", "infinity" }, r.a_tz)
      assert.same({ { k = { 1, {} } }, null, null }, r.a_jb)
      assert.equals(0.1, r.a_f8[1])
      assert.same({ "NaN", "inf", "-inf" }, { r.a_f8[2], r.a_f8[3], r.a_f8[4] })
      assert.equals(-math.huge, 1 / r.a_f8[5])
      assert.equals(1e300, r.a_f8[6])
      assert.same({ 1, 2 }, r.a_dom) -- element type seen through two domains
      assert.same({ "(1,1),(0,0)", "(3,3),(2,2)" }, r.a_box) -- box arrays use ';'
      local e = rows([[SELECT '{}'::int[] AS a, ARRAY[]::text[] AS b, ARRAY['Ab']::citext[] AS c,
        ARRAY[true, false] AS d, ARRAY['{"x": 1}']::json[] AS f]])[1]
      assert.same({ a = {}, b = {}, c = { "Ab" }, d = { true, false }, f = { { x = 1 } } }, e)
      assert.truthy(export("SELECT '{}'::int[] AS a"):find('"a":[]', 1, true))
    end)
  end)

  describe("paging", function()
    it("stops at limit and reports has_more and the last key", function()
      local json, count, more, key = export("SELECT a, b FROM k ORDER BY a, b LIMIT $1", { 3 },
        { limit = 2, key_columns = { "a", "b" } })
      assert.equals(2, count)
      assert.is_true(more)
      assert.same({ "x", "2" }, key)
      assert.same({ { a = "x", b = 1 }, { a = "x", b = 2 } }, plain(core.json_decode(json)))

      json, count, more, key = export("SELECT a, b FROM k ORDER BY a, b", nil,
        { limit = 3, key_columns = { "b" } })
      assert.equals(3, count)
      assert.is_false(more)
      assert.same({ null }, key) -- a NULL key value
      assert.equals(null, key[1])

      json, count, more, key = export("SELECT b AS id FROM k WHERE b IS NOT NULL ORDER BY b", nil,
        { limit = 10, key_columns = { "id" } })
      assert.equals(2, count)
      assert.is_false(more)
      assert.same({ "2" }, key)
    end)

    it("handles empty results and limit 0", function()
      local json, count, more, key = export("SELECT a FROM k WHERE false", nil, { key_columns = { "a" } })
      assert.same({ "[]", 0, false }, { json, count, more })
      assert.is_nil(key)
      json, count, more, key = export("SELECT a FROM k", nil, { limit = 0, key_columns = { "a" } })
      assert.same({ "[]", 0, true }, { json, count, more })
      assert.is_nil(key)
      json, count, more, key = export("SELECT a FROM k")
      assert.same({ 3, false }, { count, more })
      assert.is_nil(key)
    end)

    it("omits columns but can still key on them", function()
      local r = rows("SELECT a, secret FROM k ORDER BY a, b", nil, { omit = { secret = true } })
      assert.same({ { a = "x" }, { a = "x" }, { a = "y" } }, r)
      local json, _, _, key = export("SELECT a, secret FROM k ORDER BY a, b", nil,
        { omit = { "secret" }, key_columns = { "secret" } })
      assert.falsy(json:find("secret", 1, true))
      assert.same({ "s3" }, key)
      r = rows("SELECT a, secret FROM k ORDER BY a, b LIMIT 1", nil, { omit = { secret = false } })
      assert.same({ { a = "x", secret = "s1" } }, r)
      assert.equals("[{}]", (export("SELECT 1 AS a", nil, { omit = { a = true } })))
    end)

    it("passes parameters as db:query does", function()
      local r = rows("SELECT $1::text AS s, $2::int8 AS i, $3::bool AS b, $4::text AS n, $5::float8 AS f",
        { "x'; --", math.type and 9007199254740993 or core.decimal("9007199254740993"), true, null, 1.5 })
      assert.same({ { s = "x'; --", i = r[1].i, b = true, n = null, f = 1.5 } }, r)
      assert.equals("9007199254740993", num_text(r[1].i))
      r = rows("SELECT $1::text AS a, $2::text AS b", { n = 2, "a" })
      assert.same({ { a = "a", b = null } }, r)
      r = rows("SELECT $1::numeric AS d", { core.decimal("1.000000000000000000001") })
      assert.same({ { d = "1.000000000000000000001" } }, r)
    end)

    it("exports 10,000 rows in one call", function()
      local json, count = export([[SELECT g AS id, md5(g::text) AS h, g * 1.5 AS x, g::float8 / 3 AS f,
        now() AS t, ARRAY[g, g + 1] AS a FROM generate_series(1, 10000) g]])
      assert.equals(10000, count)
      local r = assert(core.json_decode(json))
      assert.equals(10000, #r)
      assert.equals(10000, r[10000].id)
      assert.equals(helper.psql(dbname, "SELECT md5('10000')"), r[10000].h)
      assert.equals("15000.0", r[10000].x)
      assert.equals(10000 / 3, r[10000].f)
      assert.same({ 10000, 10001 }, plain(r[10000].a))
    end)
  end)

  describe("sessions and transactions", function()
    it("fixes the output settings without changing the session's", function()
      assert(db:exec("SET TimeZone = 'Asia/Tokyo'; SET bytea_output = 'escape'; SET extra_float_digits = 0"))
      local before = settings()
      assert.equals("Asia/Tokyo", before.tz)
      local r = rows([[SELECT '2025-12-16 03:56:59+09'::timestamptz AS t, '\x00ff'::bytea AS b,
        0.1::float8 + 0.2 AS f]])[1]
      assert.same({ t = "2025-12-15T18:56:59.000000Z", b = wrapper("AP8="), f = r.f }, r)
      assert.equals(0.1 + 0.2, r.f) -- all 17 digits, whatever extra_float_digits says
      assert.same(before, settings())
      assert.is_false(in_transaction())
      assert(db:exec("RESET TimeZone; RESET bytea_output; RESET extra_float_digits"))
    end)

    it("runs read-only and reports SQL errors with SQLSTATE", function()
      local ok, err, detail = core.export_rows(db, "SELECT * FROM no_such_table")
      assert.is_nil(ok)
      assert.matches("no_such_table", err)
      assert.equals("42P01", detail.sqlstate)
      assert.is_false(in_transaction())
      ok, err, detail = core.export_rows(db,
        "WITH x AS (INSERT INTO k VALUES ('z', 9) RETURNING *) SELECT * FROM x")
      assert.is_nil(ok)
      assert.equals("25006", detail.sqlstate)
      assert.equals("3", helper.psql(dbname, "SELECT count(*) FROM k"))
      ok, err, detail = core.export_rows(db, "SELECT $1::int AS x", { "nope" })
      assert.equals("22P02", detail.sqlstate)
      ok, err = core.export_rows(db, "COPY k TO STDOUT")
      assert.is_nil(ok)
      assert.matches("no rows", err)
      ok, err = core.export_rows(db, "")
      assert.is_nil(ok)
      assert.is_false(in_transaction())
      assert.equals(1, assert(db:query("SELECT 1 AS one"))[1].one)
    end)

    it("works inside an open transaction and leaves it as it was", function()
      assert(db:exec("BEGIN"))
      assert(db:exec("SET LOCAL TimeZone = 'Asia/Tokyo'; SET LOCAL DateStyle = 'German'"))
      assert(db:exec("INSERT INTO k VALUES ('in-tx', 7, 's')"))
      local before = settings()
      local r = rows("SELECT a, '2025-12-15 18:56:59+00'::timestamptz AS t FROM k WHERE a = 'in-tx'")
      assert.same({ { a = "in-tx", t = "2025-12-15T18:56:59.000000Z" } }, r)
      assert.same(before, settings())
      assert.is_true(in_transaction())
      -- an SQL error inside does not abort the caller's transaction
      local ok, _, detail = core.export_rows(db, "SELECT 1 / 0 AS x")
      assert.is_nil(ok)
      assert.equals("22012", detail.sqlstate)
      ok, _, detail = core.export_rows(db, "WITH x AS (DELETE FROM k RETURNING *) SELECT * FROM x")
      assert.equals("25006", detail.sqlstate)
      assert.same(before, settings())
      assert(db:exec("INSERT INTO k VALUES ('in-tx', 8, 's')")) -- still writable
      assert.equals(2, #rows("SELECT * FROM k WHERE a = 'in-tx'"))
      assert(db:exec("ROLLBACK"))
      assert.equals("0", helper.psql(dbname, "SELECT count(*) FROM k WHERE a = 'in-tx'"))
    end)

    it("reports an aborted transaction", function()
      assert(db:exec("BEGIN"))
      assert.is_nil(db:exec("SELECT 1 / 0"))
      local ok, _, detail = core.export_rows(db, "SELECT 1 AS x")
      assert.is_nil(ok)
      assert.equals("25P02", detail.sqlstate)
      assert(db:exec("ROLLBACK"))
      assert.is_false(in_transaction())
    end)

    it("serves text that is not UTF-8 (SQL_ASCII) as binary", function()
      local name = helper.unique("export_ascii")
      helper.psql("postgres", ("CREATE DATABASE %s ENCODING 'SQL_ASCII' TEMPLATE template0"
        .. " LC_COLLATE 'C' LC_CTYPE 'C'"):format(name))
      -- psql talks SQL_ASCII to this database, so raw Latin-1 bytes get in
      helper.psql(name, "CREATE TABLE a (\"n\233\" text, t text, a text[]);" ..
        "INSERT INTO a VALUES (E'caf\\xe9', 'ok', E'{\\xe9}')")
      local adb = assert(core.pg_connect(helper.conninfo(name)))
      local ok, err = pcall(function()
        -- with client_encoding UTF8 the server itself refuses to send such text
        local _, msg = core.export_rows(adb, "SELECT * FROM a")
        assert.matches("invalid byte sequence", msg)
        assert(adb:exec("SET client_encoding = 'SQL_ASCII'"))
        local json = assert(core.export_rows(adb, "SELECT * FROM a"))
        assert.same({ { ["n\u{fffd}"] = wrapper(core.base64_encode("caf\233")), t = "ok",
          a = { wrapper("6Q==") } } }, plain(core.json_decode(json)))
      end)
      adb:close()
      helper.drop_database(name)
      assert(ok, err)
    end)
  end)

  describe("misuse", function()
    it("raises for bad arguments", function()
      assert.has_error(function() core.export_rows({}, "SELECT 1") end)
      assert.has_error(function() core.export_rows(db, 42) end)
      assert.has_error(function() core.export_rows(db) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", "x") end)
      assert.has_error(function() core.export_rows(db, "SELECT $1", { {} }) end)
      assert.has_error(function() core.export_rows(db, "SELECT $1", { function() end }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, "x") end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, { uuid = "hex" }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, { uuid = true }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, { limit = -1 }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, { limit = 1.5 }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, { limit = "2" }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, { omit = "a" }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1", nil, { key_columns = { 1 } }) end)
      assert.has_error(function() core.export_rows(db, "SELECT 1 AS a", nil, { key_columns = { "b" } }) end)
      assert.is_false(in_transaction())
      local closed = assert(core.pg_connect(conninfo))
      closed:close()
      assert.has_error(function() core.export_rows(closed, "SELECT 1") end)
      -- the handle still works
      assert.equals("[{\"a\":1}]", (export("SELECT 1 AS a", nil, { limit = 5.0 })))
    end)
  end)
end)
