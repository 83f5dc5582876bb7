-- The C import path on its own: core.importer_new + imp:run_page against
-- the scripted peer (spec/fixtures/peer.lua), small bodies, one local
-- table. Each case is one page: what arrived, what was committed, what was
-- counted. It is small on purpose so that it also runs under valgrind
-- (scripts/check-valgrind.sh) in CI; pull_spec.lua covers the full pulls.
local helper = require "helper"
local core = require "pksync.core"

local PATH = "/phoenix_kit/sync/api/pull-data"

local COLUMNS = {
  { name = "id", kind = "int" },
  { name = "name", kind = "text" },
  { name = "n", kind = "int" },
  { name = "tags", kind = "array", elem_kind = "text" },
  { name = "u", kind = "uuid" },
  { name = "blob", kind = "bytea" },
  { name = "doc", kind = "json" },
}
local NAMES = "id, name, n, tags, u, blob, doc"

local function row(id, fields)
  local r = { id = id, name = "row " .. id, n = id, tags = { "a", "b c" },
              u = ("00000000-0000-4000-8000-%012d"):format(id), blob = { __phoenix_kit_binary__ = "AAEC" },
              doc = { k = { id, true } } }
  for k, v in pairs(fields or {}) do r[k] = v end
  return r
end

local function body(rows, extra)
  local env = { success = true, data = setmetatable(rows, core.array_mt) }
  for k, v in pairs(extra or {}) do env[k] = v end
  return assert(core.json_encode(env))
end

describe("core.importer run_page", function()
  local peer, dbname, db, http, url

  local function sql(q) return helper.psql(dbname, q) end
  local function count() return tonumber(sql("SELECT count(*) FROM t")) end

  -- Staging mode: rows COPY into `stage` (plus the row number), then one
  -- INSERT ... ON CONFLICT moves each batch into `t`.
  local function staging_spec(extra)
    local spec = {
      columns = COLUMNS, batch_rows = 3,
      copy = "COPY stage (" .. NAMES .. ", pksync_row) FROM STDIN",
      clear = "TRUNCATE stage",
      apply = { sql = "WITH src AS (SELECT * FROM stage WHERE pksync_row BETWEEN $1 AND $2), " ..
        "ins AS (INSERT INTO t SELECT " .. NAMES .. " FROM src ON CONFLICT (id) DO UPDATE SET " ..
        "name = EXCLUDED.name, n = EXCLUDED.n RETURNING (xmax = 0) AS created) " ..
        "SELECT (SELECT count(*) FROM src) AS staged, count(*) FILTER (WHERE created) AS created, " ..
        "count(*) AS total FROM ins" },
    }
    for k, v in pairs(extra or {}) do spec[k] = v end
    return core.importer_new(spec)
  end

  local function direct_spec(extra)
    local spec = { columns = COLUMNS, copy = "COPY t (" .. NAMES .. ") FROM STDIN" }
    for k, v in pairs(extra or {}) do spec[k] = v end
    return core.importer_new(spec)
  end

  local function page(imp, scenario, req)
    peer.scenario(PATH, scenario)
    req = req or {}
    req.url, req.body = url, req.body or '{"table_name":"t"}'
    return imp:run_page(db, http, req)
  end

  lazy_setup(function()
    peer = helper.start_peer()
    url = peer.url .. PATH
    local conninfo
    dbname, conninfo = helper.create_database("import")
    sql([[CREATE TABLE t (id bigint PRIMARY KEY, name text, n int CHECK (n >= 0), tags text[], u uuid,
            blob bytea, doc jsonb);
          CREATE TABLE stage (LIKE t);
          ALTER TABLE stage ADD COLUMN pksync_row bigint]])
    db = assert(core.pg_connect(conninfo))
    http = core.http_new { timeout = 10000 }
  end)

  lazy_teardown(function()
    http:close()
    db:close()
    peer.stop()
    helper.drop_database(dbname)
  end)

  before_each(function()
    sql("TRUNCATE t")
    peer.reset()
  end)

  it("imports a page straight into the table and reports the envelope", function()
    local imp = direct_spec()
    local res = assert(page(imp, { status = 200, raw = body({ row(1), row(2, { extra = 1 }) }, { table = "t" }) }))
    imp:close()
    assert.same({ 200, true, true, 2, 2, 0 }, { res.status, res.valid, res.committed, res.rows, res.imported, res.failed })
    assert.is_true(res.success)
    assert.is_true(res.saw_array)
    assert.equals("t", res.table)
    assert.same({ "extra" }, res.unknown_columns)
    assert.equals("1|row 1|{a,\"b c\"}|\\x000102|{\"k\": [1, true]}",
      sql("SELECT id || '|' || name || '|' || tags::text || '|' || blob::text || '|' || doc::text FROM t WHERE id = 1"))
  end)

  it("counts a row the converter cannot take, a row COPY rejects and one the apply rejects", function()
    local imp = staging_spec()
    sql("INSERT INTO t (id, name, n) VALUES (1, 'old', 1)")
    local rows = {
      row(1, { name = "new" }),
      row(2, { u = "not a uuid" }),   -- the converter: never reaches PostgreSQL
      row(3, { n = "three" }),        -- COPY: invalid input syntax for integer
      row(4, { n = -4 }),             -- the apply: the CHECK constraint
      row(5), row(6), row(7),
    }
    local res = assert(page(imp, { status = 200, raw = body(rows) }))
    imp:close()
    assert.is_true(res.committed)
    assert.same({ 7, 3, 1, 3 }, { res.rows, res.imported, res.updated, res.failed })
    assert.matches("uuid", res.error_sample)
    assert.equals(4, count())
    assert.equals("new", sql("SELECT name FROM t WHERE id = 1"))
    assert.equals("0", sql("SELECT count(*) FROM t WHERE id IN (2, 3, 4)"))
  end)

  it("commits nothing from a truncated or malformed body", function()
    local imp = direct_spec()
    local full = body({ row(1), row(2), row(3) })
    local res = assert(page(imp, { status = 200, raw = full:sub(1, #full - 20) }))
    assert.is_false(res.valid)
    assert.is_false(res.committed)
    assert.matches("truncated", res.invalid_reason)
    res = assert(page(imp, { status = 200, raw = '{"success": true, "data": [{"id": 1}] "x"}' }))
    assert.is_false(res.valid)
    assert.matches("expected ',' or '}'", res.invalid_reason, 1, true)
    res = assert(page(imp, { status = 200, raw = "[1, 2]" }))
    assert.is_false(res.valid)
    assert.matches("not a JSON object", res.invalid_reason)
    -- the peer says no: success false commits nothing either
    res = assert(page(imp, { status = 200, raw = body({ row(1) }, { success = false, error = "Nope" }) }))
    assert.is_true(res.valid)
    assert.is_false(res.committed)
    assert.equals("Nope", res.error)
    imp:close()
    assert.equals(0, count())
  end)

  it("reports an HTTP error status with its body, and a connection cut mid-body", function()
    local imp = direct_spec()
    local res = assert(page(imp, { status = 500, raw = '{"error":"boom"}' }))
    assert.equals(500, res.status)
    assert.is_false(res.committed)
    assert.equals('{"error":"boom"}', res.body)
    local none, err, detail = page(imp, { status = 200, raw = body({ row(1), row(2) }), mode = "close_mid_body" })
    imp:close()
    assert.is_nil(none)
    assert.is_string(err)
    assert.is_table(detail)
    assert.equals(0, count())
  end)

  it("reports where a page's keys ended and whether they ascended from the floor", function()
    local function keys(rows_json, floor)
      local imp = direct_spec { key_column = "id" }
      local res = assert(page(imp, { status = 200, raw = '{"success":true,"data":[' .. rows_json .. ']}' },
        { key_floor = floor }))
      imp:close()
      sql("TRUNCATE t")
      return res.keys_ordered, res.next_key
    end
    -- exact past 2^53 (decimal text, not a Lua number); a key sent as a
    -- string or under an escaped name counts; the hook-free row order is the sender's
    assert.same({ true, "9223372036854775807" },
      { keys('{"id":9007199254740993,"n":1},{"name":"x","id":"9223372036854775806","n":2}') })
    assert.same({ true, "8" }, { keys('{"\\u0069d":7,"n":1}', "7") })
    assert.same({ false, "8" }, { keys('{"id":7,"n":1}', "8") })             -- below the floor
    assert.same({ false, "6" }, { keys('{"id":5,"n":1},{"id":3,"n":2}') })   -- not ascending
    assert.same({ false, "6" }, { keys('{"id":5,"n":1},{"id":5,"n":2}') })   -- a key twice
    assert.same({ false, "6" }, { keys('{"id":5,"n":1},{"n":2}') })          -- a row without it
    assert.same({ false, "2" }, { keys('{"id":1,"n":1},{"id":1.5,"n":2}') }) -- not an integer
    assert.same({ true }, { keys('{"id":9223372036854775807,"n":1}') })      -- nothing after the largest
    assert.same({ false }, { keys("") })                                      -- no rows, no keys
    assert.has_error(function() keys('{"id":1}', "one") end)
  end)

  it("runs the transform and after_batch hooks, and stops on a failing hook", function()
    local batches = {}
    local imp = staging_spec {
      transform = function(r)
        if r.id == 2 then return nil end   -- filtered
        if r.id == 3 then return { id = 3, u = "bad" } end   -- not a uuid
        r.name = r.name:upper()
        return r
      end,
      after_batch = function(first, last)
        batches[#batches + 1] = { first, last }
        return 0
      end,
    }
    local res = assert(page(imp, { status = 200, raw = body({ row(1), row(2), row(3), row(4), row(5) }) }))
    imp:close()
    assert.is_true(res.committed)
    assert.same({ 5, 3, 1, 1 }, { res.rows, res.imported, res.filtered_rows, res.failed })
    assert.equals("ROW 1", sql("SELECT name FROM t WHERE id = 1"))
    assert.is_true(#batches >= 1)

    imp = staging_spec { transform = function() error("policy bug") end }
    local none, err, detail = page(imp, { status = 200, raw = body({ row(1) }) })
    imp:close()
    assert.is_nil(none)
    assert.equals("hook_failed", err)
    assert.matches("policy bug", detail.message)
    assert.equals(3, count())   -- the first page's rows; the failed page left nothing
  end)

  it("fetches the next page on a second handle while importing, and uses it", function()
    local next_http = core.http_new { timeout = 10000 }
    local imp = direct_spec()
    local req = { next_http = next_http, next_prefix = '{"table_name":"t","after":', next_suffix = "}" }
    -- the same answer every time: has_more with a cursor, so each page
    -- starts the prefetch of the next
    local scenario = { status = 200, raw = body({ row(1), row(2) }, { has_more = true, next_after = "c1" }) }
    local res = assert(page(imp, scenario, req))
    assert.is_true(res.committed)
    assert.equals("c1", res.next_after)
    sql("TRUNCATE t")
    req.after = "c1"
    res = assert(imp:run_page(db, http, { url = url, body = '{"table_name":"t","after":"c1"}', after = "c1",
      next_http = next_http, next_prefix = req.next_prefix, next_suffix = "}" }))
    assert.is_true(res.committed)
    assert.equals(2, res.imported)
    imp:close()   -- joins the prefetch the second page started
    next_http:close()
    local bodies = {}
    for _, r in ipairs(peer.requests()) do
      if r.path == PATH then bodies[#bodies + 1] = r.body end
    end
    -- page 1 asked by run_page, page 2 by the prefetch (the second
    -- run_page used it), page 3 by the prefetch the second page started
    assert.equals(3, #bodies)
    assert.equals('{"table_name":"t","after":"c1"}', bodies[2])
  end)

  it("closing the prefetch handle while its request is in flight waits for it", function()
    -- lua_close finalizes the newest objects first, so the handle can go
    -- before the importer whose thread still uses it (valgrind saw libcurl
    -- read the freed handle before pk_http_lend existed)
    local next_http = core.http_new { timeout = 10000 }
    local imp = direct_spec()
    local res = assert(page(imp, { status = 200, delay = 0.3,
      raw = body({ row(1) }, { has_more = true, next_after = "c1" }) },
      { next_http = next_http, next_prefix = '{"after":', next_suffix = "}" }))
    assert.is_true(res.committed)
    next_http:close()   -- the prefetch of page 2 is still waiting for its answer
    imp:close()
    local n = 0
    for _, r in ipairs(peer.requests()) do
      if r.path == PATH then n = n + 1 end
    end
    assert.equals(2, n)
    assert.has_error(function() next_http:request { url = url } end)
  end)
end)
