-- Exact values whatever the servers' defaults: the sender and the receiver
-- run under output settings that differ from each other and from
-- PostgreSQL's (a time zone with a 45-minute offset, German and SQL date
-- styles, intervals in SQL-standard and ISO 8601 form, extra_float_digits
-- below zero, bytea in escape form). pksync pins its own sessions'
-- settings once (src/pg.h), so floats, timestamps, intervals and bytes
-- arrive unchanged and both sides' checksums agree.
local helper = require "helper"
local pksync = require "pksync"
local sites = require "sites"

local SCHEMA = [[
CREATE TABLE vals (id int PRIMARY KEY, f8 float8, f4 real, ts timestamptz, local_ts timestamp, d date,
  iv interval, b bytea, n numeric, tz_time timetz);
INSERT INTO vals VALUES
  (1, 0.1::float8 + 0.2::float8, 0.1, '2024-02-29 23:59:59.999999+00', '1999-12-31 12:00:00.5', '2000-01-01',
   '1 year 2 mons 3 days 04:05:06.789', '\x00015c275c5c0aff', 123456789012345678901234567890.123456789,
   '23:59:59.25+05:45'),
  (2, 1e-310, 3.4028235e38, '1900-06-01 00:00:00+00', '0044-03-15 12:00:00 BC', '0001-01-01 BC',
   '-7 days -00:00:00.000001', '', -0.00000000000000000001, '00:00:00+00'),
  (3, -2.2250738585072014e-308, -1.17549435e-38, 'infinity', '-infinity', 'infinity',
   '178000000 years', decode(repeat('ff', 300), 'hex'), 'NaN', '12:34:56.789-11'),
  (4, 'Infinity', 'NaN', '2038-01-19 03:14:08+00', '2262-04-11 23:47:16.854775', '2262-04-11',
   '00:00:00.000001', '\x5c', 0, '12:00+14');
]]

describe("exact values under servers whose output defaults differ", function()
  local a_db, a_ci, b_db, b_ci, srv, b, conn

  lazy_setup(function()
    a_db, a_ci = helper.create_database("exact_a")
    b_db, b_ci = helper.create_database("exact_b")
    helper.psql(a_db, SCHEMA)
    helper.psql(b_db, SCHEMA:match("^(.-;)"))
    helper.set_database_defaults(a_db, helper.ODD_OUTPUT.sender)
    helper.set_database_defaults(b_db, helper.ODD_OUTPUT.receiver)
    -- the odd defaults are in force for plain sessions
    assert.equals("-3|Asia/Kathmandu", helper.psql(a_db, "SELECT current_setting('extra_float_digits') || '|' || " ..
      "current_setting('TimeZone')"))
    assert.equals("\\\\", helper.psql(b_db, "SELECT '\\x5c'::bytea"))
    local port = helper.free_port()
    local url = "http://127.0.0.1:" .. port
    local site = pksync.new { db = a_ci, site_url = url }
    assert(site:migrate())
    assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
    local _, raw = assert(site:create_connection { name = "exact", direction = "sender", status = "active",
      site_url = "https://b.example", notify = false, rate_limit_requests_per_minute = 0 })
    site:close()
    srv = sites.serve(a_ci, { name = "exact-a", port = port })
    b = pksync.new { db = b_ci, site_url = "https://b.example" }
    assert(b:migrate())
    conn = assert(b:create_connection { name = "exact", direction = "receiver", site_url = url, auth_token = raw })
  end)

  lazy_teardown(function()
    if srv then srv.stop() end
    if b then b:close() end
    helper.drop_database(a_db)
    helper.drop_database(b_db)
  end)

  it("pulls floats, timestamps, intervals, numerics and bytes unchanged", function()
    local r, err, detail = b:pull_table_data(conn, "vals", { conflict_strategy = "overwrite" })
    assert(r, tostring(err) .. " " .. require("pksync.core").json_encode(detail or {}))
    assert.equals(4, r.records_imported)
    assert.equals(0, r.records_failed)
    assert.equals(helper.fingerprint(a_db, "vals"), helper.fingerprint(b_db, "vals"))
    -- spot checks in the receiver's own odd session, compared as values
    assert.equals("t", helper.psql(b_db, "SELECT f8 = 0.1::float8 + 0.2::float8 AND f4 = 0.1::real " ..
      "AND ts = '2024-02-29 23:59:59.999999+00' AND b = '\\x00015c275c5c0aff'::bytea " ..
      "AND iv = '1 year 2 mons 3 days 04:05:06.789'::interval FROM vals WHERE id = 1"))
    assert.equals("t", helper.psql(b_db, "SELECT f8 = 1e-310::float8 AND f4 = 3.4028235e38::real " ..
      "AND local_ts = '0044-03-15 12:00:00 BC'::timestamp FROM vals WHERE id = 2"))
  end)

  it("the same rows give the same checksum on both sides, so a re-sync sees the table unchanged", function()
    local report = assert(b:sync_connection(conn, { tables = { "vals" } }))
    local e = report.tables[1]
    assert.equals("vals", e.name)
    assert.equals("unchanged", e.action)
    helper.psql(a_db, "UPDATE vals SET f8 = f8 + 1e-15 WHERE id = 1")
    report = assert(b:sync_connection(conn, { tables = { "vals" }, strategy = "overwrite" }))
    assert.are_not.equal("unchanged", report.tables[1].action)
    assert.equals(helper.fingerprint(a_db, "vals"), helper.fingerprint(b_db, "vals"))
  end)

  it("reads store timestamps in one form whatever the session defaults", function()
    local c = assert(b:get_connection(conn.uuid))
    assert.matches("^%d%d%d%d%-%d%d%-%d%d[ T]%d%d:%d%d:%d%d", tostring(c.inserted_at))
  end)
end)
