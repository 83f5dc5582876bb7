-- pksync.plan against a real database: the facts it reads from the local
-- catalog, the plan it builds from the sender's column names, and the SQL
-- it produces, run here statement by statement (COPY into the staging
-- table, the key-map statements, the apply, the resolve step) as the
-- importer runs them.
local helper = require "helper"
local core = require "pksync.core"
local plan = require "pksync.plan"

local null = core.null

local SCHEMA = [[
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN small_count AS int CHECK (VALUE >= 0);
CREATE TABLE kinds (
  id int PRIMARY KEY, b bool, i2 smallint, i8 bigint, o oid, f4 real, f8 double precision, num numeric(8,2),
  j json, jb jsonb, bin bytea, u uuid, t text, vc varchar(5), bp char(2), nm name, ch "char", m mood,
  dom small_count, ts timestamptz, d date, ip inet, rng int4range, iv interval,
  tags text[], nums int8[], moods mood[], uuids uuid[], stamps timestamptz[], boxes box[]
);
CREATE TABLE items (id int PRIMARY KEY, name text, qty int NOT NULL DEFAULT 0, note text);
CREATE TABLE keyed (region int, sku text, qty int, PRIMARY KEY (sku, region));
CREATE TABLE all_key (a int, b text, PRIMARY KEY (a, b));
CREATE TABLE loose (x int, y text);
CREATE TABLE serials (id serial PRIMARY KEY, v text);
CREATE TABLE idents (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text,
  twice int GENERATED ALWAYS AS (length(v) * 2) STORED);
CREATE TABLE parents (id int PRIMARY KEY, code text UNIQUE NOT NULL, name text);
CREATE TABLE children (id int PRIMARY KEY, parent_id int REFERENCES parents (id), v text);
CREATE TABLE "MixedCase" (id int PRIMARY KEY, "Value" text);
CREATE SCHEMA shop;
CREATE TABLE shop.items (id int PRIMARY KEY, name text);
]]

describe("pksync.plan", function()
  local dbname, conninfo, db

  local function sql(q) return helper.psql(dbname, q) end

  local function facts_of(tbl, strategy, schema)
    return assert(plan.inspect(db, schema or "public", tbl, strategy))
  end

  local function plan_of(tbl, strategy, remote, opts, schema)
    return assert(plan.build(db, facts_of(tbl, strategy, schema), remote, opts or {}))
  end

  local suffixes = 0
  --- Stage rows (COPY text lines without the row number) through plan p,
  -- run the pre statements and the apply as the importer does; the
  -- apply's counts. keep = leave the staging table for a resolve step.
  local function import(p, lines, keep)
    suffixes = suffixes + 1
    local create, drop = plan.stage(p, "spec_" .. suffixes)
    assert(db:exec(create))
    local spec = plan.importer_spec(p, false, nil, 100, 1)
    local data = {}
    for i, l in ipairs(lines) do data[i] = l .. "\t" .. i .. "\n" end
    local ok, err, detail = db:copy_in(spec.copy, table.concat(data))
    if not ok then
      db:exec(drop)
      return nil, err, detail
    end
    for _, st in ipairs(spec.pre or {}) do
      assert(db:query(st.sql, 1, #lines, table.unpack(st.params or {})))
    end
    local rows
    rows, err, detail = db:query(spec.apply.sql, 1, #lines)
    if not keep then db:exec(drop) end
    if not rows then return nil, err, detail end
    return rows[1], drop
  end

  lazy_setup(function() dbname, conninfo, db = helper.open_database("plan", SCHEMA) end)
  lazy_teardown(function() helper.close_database(dbname, db) end)

  before_each(function()
    sql([[TRUNCATE items, keyed, all_key, loose, serials, idents, children, parents, "MixedCase", shop.items;
      INSERT INTO items VALUES (1, 'one', 1, 'n1'), (2, 'two', 2, NULL);
      ALTER SEQUENCE serials_id_seq RESTART WITH 100]])
  end)

  it("knows the strategies and which need a key", function()
    for _, s in ipairs { "skip", "overwrite", "merge", "append", "custom" } do assert.is_true(plan.STRATEGIES[s]) end
    assert.is_nil(plan.STRATEGIES.replace)
    assert.is_nil(plan.STRATEGIES[""])
  end)

  describe("local_columns", function()
    it("gives each column the kind the converter uses, from the local type", function()
      local cols = assert(plan.local_columns(db, "public", "kinds"))
      local kinds, names = {}, {}
      for i, c in ipairs(cols) do
        names[i] = c.name
        kinds[c.name] = c.kind == "array" and ("array of " .. c.elem_kind) or c.kind
      end
      assert.same({ id = "int", b = "bool", i2 = "int", i8 = "int", o = "int", f4 = "float", f8 = "float",
        num = "numeric", j = "json", jb = "json", bin = "bytea", u = "uuid", t = "text", vc = "text", bp = "text",
        nm = "text", ch = "text", m = "text", dom = "int", ts = "generic", d = "generic", ip = "generic",
        rng = "generic", iv = "generic", tags = "array of text", nums = "array of int", moods = "array of text",
        uuids = "array of uuid", stamps = "array of generic", boxes = "array of generic" }, kinds)
      assert.equals("id", names[1])
      assert.equals("boxes", names[#names])
      local by = {}
      for _, c in ipairs(cols) do by[c.name] = c end
      assert.equals(",", by.tags.elem_delim)
      assert.equals(";", by.boxes.elem_delim) -- box is the one built-in type with another delimiter
      assert.equals("numeric(8,2)", by.num.sql_type)
      assert.equals("small_count", by.dom.sql_type)
      assert.is_nil(by.t.elem_kind)
    end)

    it("reports NOT NULL, generated and identity columns", function()
      local by = {}
      for _, c in ipairs(assert(plan.local_columns(db, "public", "idents"))) do by[c.name] = c end
      assert.same({ true, false, true }, { by.id.not_null, by.id.generated, by.id.identity_always })
      assert.same({ false, false, false }, { by.v.not_null, by.v.generated, by.v.identity_always })
      assert.is_true(by.twice.generated)
    end)

    it("answers nil and the SQL error for a table that does not exist", function()
      local cols, err, detail = plan.local_columns(db, "public", "no_such_table")
      assert.is_nil(cols)
      assert.is_string(err)
      assert.equals("42P01", detail.sqlstate)
    end)
  end)

  describe("inspect", function()
    it("reads the key (in key order) and the columns of the local table", function()
      local f = facts_of("keyed", "overwrite")
      assert.same({ "public", "keyed", "overwrite" }, { f.schema, f.table, f.strategy })
      assert.same({ { name = "sku", type = "text" }, { name = "region", type = "integer" } }, f.keys)
      assert.equals(3, #f.columns)
      f = facts_of("items", "skip", "shop")
      assert.equals("shop", f.schema)
      assert.equals(2, #f.columns)
      assert.equals("id", f.keys[1].name)
    end)

    it("refuses a table missing locally, whatever the name", function()
      for _, name in ipairs { "no_such_table", "ITEMS", "with space", "items; DROP TABLE items", "", "keyed\0" } do
        local f, err, detail = plan.inspect(db, "public", name, "skip")
        assert.is_nil(f, name)
        assert.equals("table_missing_locally", err)
        assert.is_string(detail.message)
      end
      assert.equals("table_missing_locally", select(2, plan.inspect(db, "shop", "keyed", "append")))
      assert.equals("2", sql("SELECT count(*) FROM items"))
    end)

    it("refuses a table without a primary key for every strategy but append", function()
      for _, s in ipairs { "skip", "overwrite", "merge", "custom" } do
        local f, err, detail = plan.inspect(db, "public", "loose", s)
        assert.is_nil(f, s)
        assert.equals("no_primary_key", err)
        assert.matches(s, detail.message)
      end
      local f = facts_of("loose", "append")
      assert.same({}, f.keys)
    end)

    it("reports a database error when the catalog cannot be read", function()
      assert(db:exec("BEGIN"))
      assert.is_nil(db:exec("SELECT 1/0"))
      local f, err = plan.inspect(db, "public", "items", "skip")
      assert(db:exec("ROLLBACK"))
      assert.is_nil(f)
      assert.equals("database_error", err)
    end)
  end)

  describe("build", function()
    it("uses the local columns the sender sends, in local order, and reports the rest", function()
      local p = plan_of("items", "overwrite", { "note", "zzz", "id", "name", "evil\"; DROP TABLE items; --" })
      assert.same({ "id", "name", "note" }, p.column_names)
      assert.same({ "zzz", "evil\"; DROP TABLE items; --" }, p.unknown)
      assert.equals('[]', core.json_encode(plan_of("items", "skip", { "id", "name", "qty", "note" }).unknown))
      assert.same({ "id" }, p.key_names)
      assert.is_true(p.is_key.id)
      assert.is_nil(p.is_key.name)
      assert.equals('"public"."items"', p.target)
      assert.equals('"shop"."items"', plan_of("items", "skip", { "id" }, nil, "shop").target)
    end)

    it("never writes generated columns, and notes identity-always keys", function()
      local p = plan_of("idents", "overwrite", { "id", "v", "twice" })
      assert.same({ "id", "v" }, p.column_names)
      assert.same({}, p.unknown)
      assert.is_true(p.identity_always)
      assert.is_nil(plan_of("items", "overwrite", { "id" }).identity_always)
    end)

    it("refuses when no column is shared, or a needed key column is not sent", function()
      local p, err = plan.build(db, facts_of("items", "skip"), { "a", "b" }, {})
      assert.is_nil(p)
      assert.equals("no_common_columns", err)
      p, err = plan.build(db, facts_of("items", "skip"), {}, {})
      assert.equals("no_common_columns", err)
      for _, s in ipairs { "skip", "overwrite", "merge", "custom" } do
        local detail
        p, err, detail = plan.build(db, facts_of("keyed", s), { "sku", "qty" }, {})
        assert.is_nil(p, s)
        assert.equals("key_not_sent", err)
        assert.matches("region", detail.message)
      end
      assert(plan.build(db, facts_of("keyed", "append"), { "sku", "qty" }, {}))
    end)

    it("reads foreign and unique keys only when keys are remapped", function()
      local p = plan_of("children", "overwrite", { "id", "parent_id", "v" })
      assert.is_nil(p.foreign_keys)
      p = plan_of("children", "overwrite", { "id", "parent_id", "v" }, { remap = true })
      assert.same({ { column = "parent_id", parent = "parents" } }, p.foreign_keys)
      p = plan_of("parents", "skip", { "id", "code" }, { remap = true })
      assert.same({ { "code" } }, p.unique_keys)
    end)
  end)

  describe("stage and importer_spec", function()
    it("stages into a temporary table with the local column types and a row number", function()
      local p = plan_of("kinds", "overwrite", { "id", "num", "vc", "tags", "dom" })
      local create, drop = plan.stage(p, "types_check")
      assert.equals('"pksync_stage_types_check"', p.stage)
      assert(db:exec(create))
      local rows = assert(db:query([[SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
        c.relpersistence AS persistence FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE a.attrelid = 'pksync_stage_types_check'::regclass AND a.attnum > 0 ORDER BY a.attnum]]))
      local got = {}
      for i, r in ipairs(rows) do got[i] = r.name .. " " .. r.type end
      -- the local table's column order, whatever order the sender used
      assert.same({ "id integer", "num numeric(8,2)", "vc character varying(5)", "dom small_count", "tags text[]",
        "__pksync_row bigint" }, got)
      assert.equals("t", rows[1].persistence)
      assert(db:exec(drop))
      assert(db:exec(drop)) -- dropping twice is harmless
      assert.has_error(function() plan.stage(p, "bad-suffix") end)
    end)

    it("a value that does not fit the local type is refused at the staging table", function()
      local _, err, detail = import(plan_of("items", "overwrite", { "id", "qty" }), { "3\tnot a number" })
      assert.matches("integer", err)
      assert.equals("22P02", detail.sqlstate)
      _, err, detail = import(plan_of("kinds", "overwrite", { "id", "vc" }), { "3\ttoo long" })
      assert.equals("22001", detail.sqlstate)
      _, err, detail = import(plan_of("kinds", "overwrite", { "id", "dom" }), { "3\t-1" })
      assert.equals("23514", detail.sqlstate) -- the domain's CHECK
      assert.equals("2", sql("SELECT count(*) FROM items"))
    end)

    it("describes a direct COPY into an empty table", function()
      local p = plan_of("items", "overwrite", { "id", "name" })
      local spec = plan.importer_spec(p, true, "data", 500, 1, { lock_timeout = 1000 })
      assert.equals('COPY "public"."items" ("id", "name") FROM STDIN', spec.copy)
      assert.is_nil(spec.apply)
      assert.is_nil(spec.clear)
      assert.is_nil(spec.pre)
      assert.same({ { name = "id", kind = "int" }, { name = "name", kind = "text" } }, spec.columns)
      assert.same({ "data", 500, 1, 1000 }, { spec.array_key, spec.batch_rows, spec.first_row, spec.lock_timeout })
      local imp = core.importer_new(spec)
      assert.is_truthy(imp)
      imp:close()
    end)

    it("describes staging: COPY with the row number, TRUNCATE, the apply, key-map statements only when remapping",
      function()
        local p = plan_of("children", "merge", { "id", "parent_id", "v" })
        plan.stage(p, "shape")
        local transform = function(r) return r end
        local spec = plan.importer_spec(p, false, nil, 50, 7, { transform = transform })
        assert.equals('COPY "pksync_stage_shape" ("id", "parent_id", "v", __pksync_row) FROM STDIN', spec.copy)
        assert.equals('TRUNCATE "pksync_stage_shape"', spec.clear)
        assert.is_string(spec.apply.sql)
        assert.is_nil(spec.pre)
        assert.equals(transform, spec.transform)
        assert.equals(7, spec.first_row)
        local imp = core.importer_new(spec)
        imp:close()
        p = plan_of("children", "merge", { "id", "parent_id", "v" }, { remap = true })
        plan.stage(p, "shape")
        spec = plan.importer_spec(p, false, nil, 50, 1)
        assert.equals(2, #spec.pre) -- the foreign key rewrite and the aim at the local row
        assert.same({ "parents" }, spec.pre[1].params)
        imp = core.importer_new(spec)
        imp:close()
      end)
  end)

  describe("apply statements", function()
    local function items() return sql("SELECT string_agg(id || ':' || name || ':' || qty || ':' || " ..
      "coalesce(note, '-'), ' ' ORDER BY id) FROM items") end
    local REMOTE = { "1\tONE\t10\t\\N", "3\tthree\t3\tn3" }
    local ALL = { "id", "name", "qty", "note" }

    it("skip: new rows only", function()
      local r = assert(import(plan_of("items", "skip", ALL), REMOTE))
      assert.same({ 2, 1, 1 }, { r.staged, r.created, r.total })
      assert.equals("1:one:1:n1 2:two:2:- 3:three:3:n3", items())
    end)

    it("overwrite: the sender's row wins, nulls included", function()
      local r = assert(import(plan_of("items", "overwrite", ALL), REMOTE))
      assert.same({ 2, 1, 2 }, { r.staged, r.created, r.total })
      assert.equals("1:ONE:10:- 2:two:2:- 3:three:3:n3", items())
    end)

    it("overwrite: columns the sender does not send keep their local values", function()
      assert(import(plan_of("items", "overwrite", { "id", "name" }), { "2\tTWO", "4\tfour" }))
      assert.equals("1:one:1:n1 2:TWO:2:- 4:four:0:-", items())
    end)

    it("merge: a remote null keeps the local value, even in a NOT NULL column", function()
      local r = assert(import(plan_of("items", "merge", ALL), { "1\t\\N\t\\N\t\\N", "2\tTWO\t\\N\tnew" }))
      -- row 1 keeps every local value, so it equals the local row: unchanged
      assert.same({ 2, 0, 1, 1 }, { r.staged, r.created, r.total, r.unchanged })
      assert.equals("1:one:1:n1 2:TWO:2:new", items())
    end)

    it("append: new rows with local keys, the sender's keys ignored", function()
      sql("INSERT INTO serials (id, v) VALUES (1, 'local')")
      local r = assert(import(plan_of("serials", "append", { "id", "v" }), { "1\tr1", "2\tr2" }))
      assert.same({ 2, 2, 2 }, { r.staged, r.created, r.total })
      assert.equals("1:local 100:r1 101:r2", sql("SELECT string_agg(id || ':' || v, ' ' ORDER BY id) FROM serials"))
      -- a keyless table takes every row
      r = assert(import(plan_of("loose", "append", { "x", "y" }), { "1\ta", "1\ta" }))
      assert.equals(2, r.created)
      assert.equals("2", sql("SELECT count(*) FROM loose"))
    end)

    it("composite keys conflict on the whole key, in any column order", function()
      sql("INSERT INTO keyed VALUES (1, 'a', 1), (2, 'a', 2)")
      local r = assert(import(plan_of("keyed", "overwrite", { "region", "sku", "qty" }),
        { "1\ta\t10", "3\ta\t30", "2\tb\t20" }))
      assert.same({ 3, 2, 3 }, { r.staged, r.created, r.total })
      assert.equals("1a10 2a2 2b20 3a30",
        sql("SELECT string_agg(region || sku || qty, ' ' ORDER BY region, sku) FROM keyed"))
    end)

    it("a table whose every column is key takes overwrite and merge as skip", function()
      for _, s in ipairs { "overwrite", "merge" } do
        sql("TRUNCATE all_key; INSERT INTO all_key VALUES (1, 'x')")
        local r = assert(import(plan_of("all_key", s, { "a", "b" }), { "1\tx", "2\ty" }))
        assert.equals(2, r.staged, s)
        assert.equals(1, r.total, s)
      end
      assert.equals("1x 2y", sql("SELECT string_agg(a || b, ' ' ORDER BY a) FROM all_key"))
    end)

    it("keeps the sender's keys in an identity-always column", function()
      local r = assert(import(plan_of("idents", "overwrite", { "id", "v", "twice" }), { "42\tabc" }))
      assert.equals(1, r.created)
      assert.equals("42:abc:6", sql("SELECT id || ':' || v || ':' || twice FROM idents"))
    end)

    it("quotes mixed-case names and writes into other schemas", function()
      sql([[INSERT INTO "MixedCase" VALUES (1, 'old')]])
      assert(import(plan_of("MixedCase", "overwrite", { "id", "Value" }), { "1\tnew", "2\ttwo" }))
      assert.equals("1new 2two", sql([[SELECT string_agg(id || "Value", ' ' ORDER BY id) FROM "MixedCase"]]))
      assert(import(plan_of("items", "skip", { "id", "name" }, nil, "shop"), { "9\tshop item" }))
      assert.equals("9:shop item", sql("SELECT id || ':' || name FROM shop.items"))
      assert.equals("2", sql("SELECT count(*) FROM public.items"))
    end)

    it("custom: new rows go in; the resolve step sees only real conflicts and writes the chosen row", function()
      local p = plan_of("items", "custom", ALL)
      -- row 1 is new, row 2 conflicts with local id 1, row 3 equals local id 2
      local r, drop = assert(import(p, { "3\tthree\t3\tn3", "1\tONE\t10\t\\N", "2\ttwo\t2\t\\N" }, true))
      assert.same({ 3, 1, 1 }, { r.staged, r.created, r.total })
      local pairs_sql, update_sql = plan.resolve_statements(p)
      -- neither the row the apply just inserted nor the identical one is a conflict
      local found = assert(db:query(pairs_sql, 1, 3))
      assert.equals(1, #found)
      assert.same({ id = 1, name = "one", qty = 1, note = "n1" }, core.json_decode(found[1].local_row))
      assert.same({ id = 1, name = "ONE", qty = 10, note = null }, core.json_decode(found[1].remote_row))
      -- the range limits the pairs to the batch's rows
      assert.equals(0, #assert(db:query(pairs_sql, 3, 3)))
      assert.equals(1, #assert(db:query(pairs_sql, 2, 2)))
      -- keep a mix of both for id 1
      local keep = { id = 1, name = "ONE", qty = 1, note = "n1" }
      assert(db:query(update_sql, "[[" .. core.json_encode(keep) .. "," .. found[1].local_key .. "]]"))
      db:exec(drop)
      assert.equals("1:ONE:1:n1 2:two:2:- 3:three:3:n3", items())
    end)

    it("custom: columns the sender does not send are no conflict, and keep their values", function()
      local p = plan_of("items", "custom", { "id", "name" })
      local _, drop = assert(import(p, { "1\tone", "2\tTWO" }, true))
      local pairs_sql, update_sql = plan.resolve_statements(p)
      local found = assert(db:query(pairs_sql, 1, 2))
      assert.equals(1, #found)
      local remote = core.json_decode(found[1].remote_row)
      assert.same({ id = 2, name = "TWO" }, remote)
      assert.same({ id = 2 }, core.json_decode(found[1].local_key))
      assert(db:query(update_sql, "[[" .. found[1].remote_row .. "," .. found[1].local_key .. "]]"))
      db:exec(drop)
      assert.equals("1:one:1:n1 2:TWO:2:-", items())
    end)

    it("custom with a composite key pairs rows on the whole key", function()
      sql("INSERT INTO keyed VALUES (1, 'a', 1), (2, 'a', 2)")
      local p = plan_of("keyed", "custom", { "region", "sku", "qty" })
      local _, drop = assert(import(p, { "2\ta\t99", "1\tb\t5" }, true))
      local pairs_sql, update_sql = plan.resolve_statements(p)
      local found = assert(db:query(pairs_sql, 1, 2))
      assert.equals(1, #found)
      assert.same({ region = 2, sku = "a", qty = 99 }, core.json_decode(found[1].remote_row))
      assert.same({ region = 2, sku = "a", qty = 2 }, core.json_decode(found[1].local_row))
      assert.same({ region = 2, sku = "a" }, core.json_decode(found[1].local_key))
      assert(db:query(update_sql, "[[" .. found[1].remote_row .. "," .. found[1].local_key .. "]]"))
      db:exec(drop)
      assert.equals("1a1 1b5 2a99", sql("SELECT string_agg(region || sku || qty, ' ' ORDER BY region, sku) FROM keyed"))
    end)

    it("remapping carries keys across tables through the key map", function()
      assert(db:exec(plan.keymap_ddl()))
      assert(db:exec(plan.keymap_ddl())) -- idempotent
      assert(db:exec("TRUNCATE " .. plan.KEYMAP))
      sql("INSERT INTO parents VALUES (10, 'a', 'local a')")
      -- the sender's parent 1 is our 10 (same code); its parent 2 is new
      local pp = plan_of("parents", "overwrite", { "id", "code", "name" }, { remap = true })
      local r = assert(import(pp, { "1\ta\tremote a", "2\tb\tremote b" }))
      assert.same({ 2, 1, 2 }, { r.staged, r.created, r.total })
      assert.equals("10:a:remote a 2:b:remote b",
        sql("SELECT string_agg(id || ':' || code || ':' || name, ' ' ORDER BY code) FROM parents"))
      local km = assert(db:query("SELECT tbl, remote_key, local_key FROM " .. plan.KEYMAP .. " ORDER BY remote_key"))
      assert.equals(1, #km)
      assert.same({ tbl = "parents", remote_key = "1", local_key = "10" }, km[1])
      -- children of the sender's parent 1 land under our 10
      local cp = plan_of("children", "skip", { "id", "parent_id", "v" }, { remap = true })
      assert(import(cp, { "5\t1\tchild of a", "6\t2\tchild of b", "7\t\\N\torphan" }))
      assert.equals("5:10 6:2 7:-",
        sql("SELECT string_agg(id || ':' || coalesce(parent_id::text, '-'), ' ' ORDER BY id) FROM children"))
    end)
  end)

  describe("direct_ok", function()
    it("allows a direct COPY only into an empty table without key juggling", function()
      sql("TRUNCATE items")
      assert.is_true(plan.direct_ok(db, plan_of("items", "overwrite", { "id", "name" })))
      assert.is_true(plan.direct_ok(db, plan_of("items", "skip", { "id", "name" })))
      for _, s in ipairs { "append", "custom" } do
        assert.is_false(plan.direct_ok(db, plan_of("items", s, { "id", "name" })), s)
      end
      assert.is_false(plan.direct_ok(db, plan_of("items", "skip", { "id", "name" }, { remap = true })))
      assert.is_false(plan.direct_ok(db, plan_of("idents", "skip", { "id", "v" })))
      sql("INSERT INTO items VALUES (1, 'x', 1, NULL)")
      assert.is_false(plan.direct_ok(db, plan_of("items", "overwrite", { "id", "name" })))
    end)

    it("answers nil and the error when the table is locked", function()
      local p = plan_of("items", "overwrite", { "id", "name" })
      local other = assert(core.pg_connect(conninfo))
      assert(other:exec("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE"))
      assert(db:exec("SET lock_timeout = '100ms'"))
      local ok, err, detail = plan.direct_ok(db, p)
      assert(db:exec("RESET lock_timeout"))
      other:exec("ROLLBACK")
      other:close()
      assert.is_nil(ok)
      assert.is_string(err)
      assert.equals("55P03", detail.sqlstate)
    end)
  end)
end)
