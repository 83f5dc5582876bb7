-- A small version of `make load` (scripts/load.lua): 4 receivers, each a
-- separate process with its own database, pull 20,000 rows concurrently in
-- small pages from one nginx sender (2 workers, a thread pool). Asserts
-- completeness and zero errors, checked again here in SQL; no timing.
local helper = require "helper"

describe("load (4 receivers x 20,000 rows)", function()
  local load = dofile(helper.repo .. "/scripts/load.lua")
  local report

  lazy_setup(function()
    report = load.run { receivers = 4, rows = 20000, page_size = 250, workers = 2, threads = 4,
      runtime = helper.runtime, keep = true }
  end)

  lazy_teardown(function()
    if report then report.cleanup() end
  end)

  it("every receiver completes without an error, in many requests", function()
    assert.is_nil(report.failure)
    assert.equals(0, report.errors)
    for i, r in ipairs(report.results) do
      assert.is_true(r.ok, "receiver " .. i .. ": " .. tostring(r.err))
      assert.equals(20000, r.rows)
      assert.equals(20000, r.imported)
      assert.equals(0, r.failed)
      assert.equals(80, r.pages)
      assert.equals(80, #r.latencies)
    end
    assert.equals(320, report.pages)
  end)

  it("every receiver holds exactly the sender's rows (count and md5 in SQL)", function()
    local sum = "SET TimeZone = 'UTC'; SET extra_float_digits = 3; " ..
      "SELECT count(*) || ':' || md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM load_items t"
    local want = helper.psql(report.sender, sum)
    assert.matches("^20000:", want)
    assert.equals(4, #report.receiver_dbs)
    for _, db in ipairs(report.receiver_dbs) do
      assert.equals(want, helper.psql(db, sum))
      assert.equals("0", helper.psql(db, "SELECT count(*) FROM (SELECT id FROM load_items GROUP BY id " ..
        "HAVING count(*) > 1) d"))
    end
    assert.equals(4, report.checks.matches)
  end)

  it("the sender still answers, PostgreSQL still accepts connections, the counters add up", function()
    assert.is_true(report.checks.status)
    assert.is_true(report.checks.postgres)
    assert.equals(4, report.checks.counters)
    assert.equals("4", helper.psql(report.sender, "SELECT count(*) FROM pksync_transfers " ..
      "WHERE direction = 'send' AND status = 'completed' AND records_transferred = 20000"))
    assert.is_true(report.passed)
  end)
end)
