-- The libpq handle (src/pg.c) against the throwaway cluster.
local helper = require "helper"
local core = require "pksync.core"

describe("pksync.core pg", function()
  local dbname, conninfo, db

  lazy_setup(function() dbname, conninfo, db = helper.open_database("pg") end)
  lazy_teardown(function() helper.close_database(dbname, db) end)

  it("converts values by column type", function()
    local rows = assert(db:query([[SELECT true AS b, 42::int4 AS i, 9007199254740993::int8 AS big,
      1.5::float8 AS f, 'NaN'::float8 AS nan, 12.50::numeric AS n, NULL::text AS z,
      ARRAY['a', NULL, 'b,c', '"q"', '']::text[] AS arr, '{"x":1}'::jsonb AS j]]))
    local r = rows[1]
    assert.equals(1, #rows)
    assert.is_true(r.b)
    assert.equals(42, r.i)
    if math.type then
      assert.equals("integer", math.type(r.big))
      assert.equals(9007199254740993, r.big)
    else
      assert.equals("9007199254740993", tostring(r.big))
    end
    assert.equals(1.5, r.f)
    assert.is_true(r.nan ~= r.nan)
    assert.equals("12.50", r.n)
    assert.equals(core.null, r.z)
    assert.same({ "a", core.null, "b,c", '"q"', "" }, r.arr)
    assert.equals('{"x": 1}', r.j)
  end)

  it("tells a live transaction from one an error aborted", function()
    assert.equals("idle", db:transaction_status())
    assert(db:exec("BEGIN"))
    assert.equals("in_transaction", db:transaction_status())
    assert.is_nil(db:exec("SELECT 1/0"))
    assert.equals("failed", db:transaction_status())
    -- COMMIT of an aborted transaction "succeeds" as a ROLLBACK: the reason to ask first
    assert(db:exec("COMMIT"))
    assert.equals("idle", db:transaction_status())
  end)

  it("passes every value as a parameter, never spliced", function()
    local evil = "x'); DROP TABLE t; --"
    local rows = assert(db:query("SELECT $1::text AS s, $2::int8 AS i, $3::bool AS b, $4::text AS n",
      evil, 7, false, nil))
    assert.equals(evil, rows[1].s)
    assert.equals(7, rows[1].i)
    assert.is_false(rows[1].b)
    assert.equals(core.null, rows[1].n)
  end)

  it("reports affected rows and SQL errors with SQLSTATE", function()
    assert(db:exec("CREATE TABLE t (id int PRIMARY KEY, v text)"))
    local res = assert(db:query("INSERT INTO t VALUES ($1, $2), ($3, $4)", 1, "a", 2, "b"))
    assert.equals(2, res.affected)
    local ok, err, detail = db:query("INSERT INTO t VALUES ($1, $2)", 1, "dup")
    assert.is_nil(ok)
    assert.matches("duplicate key", err)
    assert.equals("23505", detail.sqlstate)
    assert.equals("t_pkey", detail.constraint)
    ok, err, detail = db:query("SELECT * FROM no_such_table")
    assert.is_nil(ok)
    assert.equals("42P01", detail.sqlstate)
  end)

  it("copies data in", function()
    assert(db:exec("CREATE TABLE c (id int, v text)"))
    local res = assert(db:copy_in("COPY c FROM STDIN", "1\ta\n2\t\\N\n"))
    assert.equals(2, res.affected)
    assert.equals("2", helper.psql(dbname, "SELECT count(*) FROM c"))
    local ok, err = db:copy_in("COPY c FROM STDIN", "x\ty\n")
    assert.is_nil(ok)
    assert.matches("invalid input syntax", err)
    -- the handle is usable after a failed COPY
    assert.equals(2, assert(db:query("SELECT count(*)::int AS n FROM c"))[1].n)
  end)

  it("quotes identifiers", function()
    assert.equals('"we""ird"', db:escape_identifier('we"ird'))
  end)

  it("returns nil, err for a bad conninfo and raises on misuse", function()
    local h, err = core.pg_connect(helper.conninfo("no_such_database_xyz"))
    assert.is_nil(h)
    assert.matches("no_such_database_xyz", err)
    local other = assert(core.pg_connect(conninfo))
    other:close()
    other:close() -- idempotent
    assert.has_error(function() other:query("SELECT 1") end)
    assert.has_error(function() db:query("SELECT $1", function() end) end)
    assert.has_error(function() db:query() end)
  end)
end)
