-- The table_digest extension: range digests equal on both sides for equal
-- rows under servers whose output defaults differ, different for any real
-- change, split at the right bounds, and refused where they would leak or
-- cannot work.
local helper = require "helper"
local pksync = require "pksync"
local digest = require "pksync.digest"
local core = require "pksync.core"

local WIRE = [[
CREATE TABLE wire (id int PRIMARY KEY, f8 float8, f4 real, n numeric, n2 numeric(8,2), ts timestamptz,
  lt timestamp, d date, iv interval, j jsonb, tags text[], stamps timestamptz[], b bytea, u uuid, t text,
  flag boolean);
CREATE TABLE pairs (grp text, seq int, v text, PRIMARY KEY (grp, seq));
CREATE TABLE loose (v text);
CREATE TABLE secret (id int PRIMARY KEY, pin text);
]]

-- the same rows on both sides, read under each side's own settings (every
-- literal here means the same value whatever TimeZone and DateStyle are)
local ROWS = [[
INSERT INTO wire VALUES
  (1, 'NaN', '-0', 1.10, 3.5, '2024-02-29 23:59:59.999999+05:45', '1999-12-31 12:00:00.5', '2000-01-01',
   '1 day 02:00:00', '{"b": [1, 2.50], "a": {"y": null, "x": "é"}}', '{"x","y,z",NULL}',
   '{"2024-01-01 00:00:00+00"}', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'Grüße', true),
  (2, '-0', 'Infinity', -0.000001, 0, 'infinity', '-infinity', 'infinity', '-1 mon', '[]', '{}', NULL, '', NULL,
   '', false),
  (3, 1e-310, 3.4028235e38, 12345678901234567890.123456789, 999999.99, '1900-06-01 00:00:00+00',
   '0044-03-15 12:00:00 BC', '0001-01-01 BC', '178000000 years', '{"k": 1e400}', '{"\"q\""}',
   '{NULL}', '\x5c', '00000000-0000-0000-0000-000000000000', E'line\nbreak', NULL),
  (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (5, 0.1 + 0.2, 0.1, 0, -1.5, '2038-01-19 03:14:08+00', '2262-04-11 23:47:16.854775', '2262-04-11',
   '00:00:00.000001', 'null', '{}', '{}', decode(repeat('ab', 100), 'hex'), '6ba7b810-9dad-11d1-80b4-00c04fd430c8', 'x', true);
INSERT INTO pairs VALUES ('B', 1, 'upper'), ('a', 1, 'lower'), ('a', 2, 'lower2'), ('é', 1, 'accent'), ('B', 2, 'u2');
INSERT INTO secret VALUES (1, '1234');
]]

describe("pksync.digest", function()
  local a_db, a_ci, b_db, b_ci, a, b, srv, conn, url

  local function remote(fields, hash)
    fields.auth_token_hash = hash or conn.auth_token_hash
    local status, body = helper.http("POST", url .. "/phoenix_kit/sync/api/table-digest", core.json_encode(fields))
    return status, core.json_decode(body)
  end

  local function local_ranges(fields)
    local db = assert(b:database())
    return assert(digest.ranges(db, assert(digest.describe(db, "public", fields.table_name)), fields))
  end

  local WIRE_COLS = { "id", "f8", "f4", "n", "n2", "ts", "lt", "d", "iv", "j", "tags", "stamps", "b", "u", "t", "flag" }

  lazy_setup(function()
    a_db, a_ci = helper.create_database("digest_a")
    b_db, b_ci = helper.create_database("digest_b")
    helper.set_database_defaults(a_db, helper.ODD_OUTPUT.sender)
    helper.set_database_defaults(b_db, helper.ODD_OUTPUT.receiver)
    helper.psql(a_db, WIRE .. ROWS)
    helper.psql(b_db, WIRE .. ROWS)
    a = pksync.new { db = a_ci, site_url = "https://a.example", digest_max_rows = 4,
      policy = { redact = function(_, t) if t == "secret" then return { "pin" } end end } }
    assert(a:migrate())
    assert(a:set_settings { enabled = true, incoming_mode = "auto_accept" })
    conn = helper.sender_connection(a)
    local port = helper.free_port()
    url = "http://127.0.0.1:" .. port
    srv = helper.start_nginx { name = "digest", port = port, server = ([[
      location /phoenix_kit/sync/api/ {
        content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q, digest_max_rows = 4 } }
      }]]):format(a_ci, url) }
    b = pksync.new { db = b_ci, site_url = "https://b.example" }
  end)

  lazy_teardown(function()
    if srv then srv.stop() end
    if a then a:close() end
    if b then b:close() end
    helper.drop_database(a_db)
    helper.drop_database(b_db)
  end)

  it("gives equal digests for equal rows of every wire type under different server defaults", function()
    for _, range_rows in ipairs { 1, 2, 4 } do
      local status, body = remote { table_name = "wire", columns = WIRE_COLS, range_rows = range_rows }
      assert.equals(200, status)
      assert.is_true(body.success)
      assert.same({ "id" }, body.key)
      local mine = local_ranges { table_name = "wire", columns = WIRE_COLS, range_rows = range_rows, max_rows = 4 }
      assert.equals(#mine.ranges, #body.ranges)
      for i, r in ipairs(mine.ranges) do
        assert.equals(r.digest, body.ranges[i].digest, "range " .. i .. " of " .. range_rows)
        assert.equals(r.rows, body.ranges[i].rows)
      end
      assert.matches("^%d+$", body.ranges[1].digest)
    end
  end)

  it("sees every real change, including ones = would miss", function()
    local base = local_ranges { table_name = "wire", columns = WIRE_COLS, range_rows = 1 }
    local changes = {
      { "UPDATE wire SET n = 1.1 WHERE id = 1", true },                   -- same number, other scale
      { "UPDATE wire SET f8 = 0 WHERE id = 2", true },                    -- -0 to 0
      { "UPDATE wire SET j = '{\"k\": 1e400}' WHERE id = 3", false },    -- the same value again
      { "UPDATE wire SET j = '{\"b\": [1, 2.5], \"a\": {\"y\": null, \"x\": \"é\"}}' WHERE id = 1", true },
      { "UPDATE wire SET t = 'x ' WHERE id = 5", true },
      { "UPDATE wire SET tags = NULL WHERE id = 4", false },              -- NULL to NULL
      { "UPDATE wire SET iv = '26:00:00' WHERE id = 1", true },           -- = holds, the value differs
      { "UPDATE wire SET stamps = '{\"2024-01-01 05:45:00+05:45\"}' WHERE id = 1", false }, -- the same instant
    }
    local db = assert(b:database())
    for _, c in ipairs(changes) do
      local change, changed = c[1], c[2]
      assert(db:exec("BEGIN"))
      assert(db:exec(change))
      local wire = assert(digest.describe(db, "public", "wire"))
      local now = assert(digest.ranges(db, wire, { columns = WIRE_COLS, range_rows = 1 }))
      assert(db:exec("ROLLBACK"))
      local differ = {}
      for i, r in ipairs(now.ranges) do
        if r.digest ~= base.ranges[i].digest then differ[#differ + 1] = i end
      end
      local id = tonumber(change:match("id = (%d+)"))
      assert.same(changed and { id } or {}, differ, change)
    end
  end)

  it("splits at range boundaries, continues after has_more, and covers empty ranges", function()
    local _, body = remote { table_name = "wire", columns = { "id" }, range_rows = 2 }
    -- four rows per request at most: two full ranges, then more
    assert.is_true(body.has_more)
    assert.same({ { "2" }, { "4" } }, { body.ranges[1].last, body.ranges[2].last })
    assert.same({ 2, 2 }, { body.ranges[1].rows, body.ranges[2].rows })
    local _, rest = remote { table_name = "wire", columns = { "id" }, range_rows = 2, after = { "4" } }
    assert.is_false(rest.has_more)
    assert.equals(1, #rest.ranges)
    assert.equals(1, rest.ranges[1].rows)
    assert.same({ "5" }, rest.ranges[1].last)
    -- a bounded range: (1, 3]
    local _, mid = remote { table_name = "wire", columns = { "id" }, after = { "1" }, upto = { "3" } }
    assert.equals(2, mid.ranges[1].rows)
    assert.is_false(mid.has_more)
    -- nothing after the last key: one empty range that still covers it
    local _, none = remote { table_name = "wire", columns = { "id" }, after = { "5" } }
    assert.same({ { rows = 0, digest = "0", last = core.null } }, none.ranges)
    -- a client may scan less than the server allows, never more
    local _, sample = remote { table_name = "wire", columns = { "id" }, range_rows = 1, scan_rows = 2 }
    assert.same({ 2, true }, { #sample.ranges, sample.has_more })
    local _, capped = remote { table_name = "wire", columns = { "id" }, range_rows = 1, scan_rows = 100 }
    assert.same({ 4, true }, { #capped.ranges, capped.has_more })
    -- a range larger than a request may scan is split, never hashed whole
    local _, big = remote { table_name = "wire", columns = { "id" }, range_rows = 1000 }
    assert.same({ 4 }, { big.ranges[1].rows })
    assert.is_true(big.has_more)
  end)

  it("digests many closed ranges in one statement exactly as one by one", function()
    local db = assert(b:database())
    for _, t in ipairs { { "wire", WIRE_COLS, { { "1" }, { "2" }, { "4" }, { "5" } } },
                         { "pairs", { "grp", "seq", "v" }, { { "B", "1" }, { "a", "1" }, { "a", "2" }, { "é", "1" } } } } do
      local name, cols, keys = t[1], t[2], t[3]
      local list = {}
      for i = 1, #keys - 1 do list[i] = { after = keys[i], upto = keys[i + 1] } end
      local facts = assert(digest.describe(db, "public", name))
      local many = assert(digest.bounded(db, facts, cols, list))
      assert.equals(#list, #many)
      for i, r in ipairs(list) do
        local one = assert(digest.ranges(db, facts, { columns = cols, after = r.after, upto = r.upto }))
        assert.same({ rows = one.ranges[1].rows, digest = one.ranges[1].digest }, many[i])
      end
    end
    local wire = assert(digest.describe(db, "public", "wire"))
    assert.equals("invalid_bound", select(2, digest.bounded(db, wire, { "id" }, { { upto = { "3" } } })))
  end)

  it("orders composite and text keys the same way on both sides", function()
    local cols = { "grp", "seq", "v" }
    local _, body = remote { table_name = "pairs", columns = cols, range_rows = 1 }
    assert.same({ "grp", "seq" }, body.key)
    -- byte order ("C"): upper case first, then lower, then non-ASCII
    assert.same({ "B", "1" }, body.ranges[1].last)
    assert.same({ "B", "2" }, body.ranges[2].last)
    assert.same({ "a", "1" }, body.ranges[3].last)
    assert.same({ "a", "2" }, body.ranges[4].last)
    local mine = local_ranges { table_name = "pairs", columns = cols, range_rows = 1, max_rows = 4 }
    for i, r in ipairs(mine.ranges) do assert.equals(r.digest, body.ranges[i].digest) end
    local _, rest = remote { table_name = "pairs", columns = cols, range_rows = 1, after = { "a", "2" } }
    assert.equals(1, rest.ranges[1].rows)
    local again = local_ranges { table_name = "pairs", columns = cols, after = { "a", "2" } }
    assert.equals(again.ranges[1].digest, rest.ranges[1].digest)
  end)

  it("refuses keyless tables, unknown or redacted columns, bad bounds, and bad credentials", function()
    local function refused(fields, code)
      local status, body = remote(fields)
      assert.equals(400, status, code)
      assert.equals(code, body.error_code)
      assert.is_false(body.success)
    end
    refused({ table_name = "loose", columns = { "v" } }, "not_digestible")
    refused({ table_name = "wire", columns = { "nope" } }, "unknown_column")
    refused({ table_name = "wire" }, "unknown_column")
    refused({ table_name = "wire", columns = { "id" }, after = { "x" } }, "invalid_bound")
    refused({ table_name = "wire", columns = { "id" }, after = { "1", "2" } }, "invalid_bound")
    refused({ table_name = "wire", columns = { "id" }, upto = { 1 } }, "invalid_bound")
    refused({ table_name = "pairs", columns = { "v" }, after = { "a" } }, "invalid_bound")
    -- through the site's policy: a hidden column is never hashed
    local res = a:handle { method = "POST", path = "/phoenix_kit/sync/api/table-digest", remote_addr = "127.0.0.1",
      headers = {}, body = core.json_encode { auth_token_hash = conn.auth_token_hash, table_name = "secret",
        columns = { "id", "pin" } } }
    assert.equals(400, res.status)
    assert.equals("unknown_column", core.json_decode(res.body).error_code)
    res = a:handle { method = "POST", path = "/phoenix_kit/sync/api/table-digest", remote_addr = "127.0.0.1",
      headers = {}, body = core.json_encode { auth_token_hash = conn.auth_token_hash, table_name = "secret",
        columns = { "id" } } }
    assert.equals(200, res.status)
    local status = remote { table_name = "pksync_connections", columns = { "uuid" } }
    assert.equals(404, status)
    local s2, body2 = remote({ table_name = "wire", columns = { "id" } }, ("0"):rep(64))
    assert.equals(401, s2)
    assert.equals("Invalid connection", body2.error)
  end)

  it("pull-data answers exactly the rows of a range, paged inside it", function()
    local function pull(fields)
      fields.auth_token_hash = conn.auth_token_hash
      fields.uuid_format = "text"
      local status, body = helper.http("POST", url .. "/phoenix_kit/sync/api/pull-data", core.json_encode(fields))
      return status, core.json_decode(body)
    end
    local function keys_of(data, ...)
      local out = {}
      for i, r in ipairs(data) do
        local k = {}
        for j, c in ipairs { ... } do k[j] = tostring(r[c]) end
        out[i] = table.concat(k, "/")
      end
      return out
    end
    local status, body = pull { table_name = "wire", key_after = { "1" }, key_upto = { "3" } }
    assert.equals(200, status)
    assert.is_true(body.ranged)
    assert.same({ "2", "3" }, keys_of(body.data, "id"))
    -- paged inside the range: the cursor never leaves it
    local seen = {}
    local fields = { table_name = "pairs", key_after = { "B", "1" }, key_upto = { "a", "2" }, limit = 1 }
    repeat
      status, body = pull(fields)
      assert.equals(200, status)
      for _, k in ipairs(keys_of(body.data, "grp", "seq")) do seen[#seen + 1] = k end
      fields.after = body.next_after
    until not body.has_more
    assert.same({ "B/2", "a/1", "a/2" }, seen)
    -- the rows of a range are the ones its digest counted
    local _, d = remote { table_name = "pairs", columns = { "grp" }, range_rows = 2 }
    _, body = pull { table_name = "pairs", key_upto = d.ranges[1].last }
    assert.equals(d.ranges[1].rows, #body.data)
    _, body = pull { table_name = "pairs", key_after = d.ranges[2].last }
    assert.same({ "é/1" }, keys_of(body.data, "grp", "seq"))
    status, body = pull { table_name = "loose", key_after = { "x" } }
    assert.equals(400, status)
    assert.equals("not_digestible", body.error_code)
    status, body = pull { table_name = "wire", key_after = { "one" } }
    assert.equals(400, status)
    assert.equals("invalid_bound", body.error_code)
    status, body = pull { table_name = "wire", key_after = "1" }
    assert.equals(400, status)
    assert.equals("invalid_bound", body.error_code)
  end)

  it("is not offered by a server with extensions off", function()
    local plain = pksync.new { db = a_ci, site_url = "https://a.example", extensions = false }
    local res = plain:handle { method = "POST", path = "/phoenix_kit/sync/api/table-digest", remote_addr = "127.0.0.1",
      headers = {}, body = core.json_encode { auth_token_hash = conn.auth_token_hash, table_name = "wire",
        columns = { "id" } } }
    plain:close()
    assert.equals(404, res.status)
  end)
end)
