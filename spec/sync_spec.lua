-- client:sync_connection against a real sender.
local helper = require "helper"
local sites = require "sites"

describe("sync_connection", function()
  local a, b

  lazy_setup(function() a, b = sites.start() end)
  lazy_teardown(function() sites.stop(a, b) end)

  local function by_name(report)
    local t = {}
    for _, e in ipairs(report.tables) do t[e.name] = e end
    return t
  end

  it("activates the sender, pulls every table parents first, and reports", function()
    assert.equals("pending", assert(a.client:get_connection(a.sender.uuid)).status)
    local report = assert(b.client:sync_connection(b.conn))
    assert.equals("active", report.sender_status)
    assert.is_false(report.dry_run)
    local pos = {}
    for i, n in ipairs(report.order) do pos[n] = i end
    assert.is_true(pos.customers < pos.orders and pos.orders < pos.order_items and pos.products < pos.reviews)
    local t = by_name(report)
    for _, name in ipairs(sites.TABLES) do
      assert.equals("pulled", t[name].action, name)
      assert.equals("skip", t[name].strategy)
      assert.equals(0, t[name].failed)
      assert.equals(sites.fingerprint(a, name), sites.fingerprint(b, name), name)
    end
    assert.equals(3375, t.order_items.imported)
    assert.equals(500 + 200 + 1500 + 3375 + 600, report.totals.imported)
    assert.is_number(report.seconds)
    local transfers = assert(b.client:list_transfers { connection_uuid = b.conn.uuid })
    assert.equals(5, #transfers)
  end)

  it("skips tables whose checksum already matches, pulls the changed one", function()
    a.sql("UPDATE products SET price = price + 1, updated_at = now() WHERE id = 7")
    local report = assert(b.client:sync_connection(b.conn, { strategy = "overwrite" }))
    local t = by_name(report)
    assert.equals("unchanged", t.customers.action)
    assert.equals("checksum matches", t.customers.reason)
    assert.equals("pulled", t.products.action)
    -- a re-sync compares digests and moves the changed row's leaf range only
    assert.equals("incremental", t.products.path)
    assert.equals(1, t.products.updated)
    assert.is_true(t.products.transferred <= 10, tostring(t.products.transferred))
    assert.equals(t.products.transferred - 1, t.products.unchanged)
    assert.equals(sites.fingerprint(a, "products"), sites.fingerprint(b, "products"))
  end)

  it("reports what would change in a dry run, and writes nothing", function()
    b.sql("DELETE FROM reviews WHERE id IN (SELECT id FROM reviews ORDER BY id LIMIT 10)")
    local before = b.sql("SELECT count(*) FROM pksync_transfers")
    local report = assert(b.client:sync_connection(b.conn, { dry_run = true }))
    assert.is_true(report.dry_run)
    local t = by_name(report)
    assert.equals(10, t.reviews.imported)
    assert.equals("incremental", t.reviews.path)
    assert.is_true(t.reviews.transferred < 30, tostring(t.reviews.transferred))
    assert.equals("590", b.sql("SELECT count(*) FROM reviews"))
    assert.equals(before, b.sql("SELECT count(*) FROM pksync_transfers"))
    report = assert(b.client:sync_connection(b.conn, { tables = { "reviews" } }))
    assert.equals(1, #report.tables)
    assert.equals("600", b.sql("SELECT count(*) FROM reviews"))
  end)

  it("refuses when the sender is not active, unknown or offline", function()
    assert(a.client:suspend_connection(a.sender.uuid, "audit"))
    local none, err, detail = b.client:sync_connection(b.conn)
    assert.is_nil(none)
    assert.equals("sender_not_active", err)
    assert.equals("suspended", detail.status)
    assert(a.client:reactivate_connection(a.sender.uuid))
    none, err = b.client:sync_connection({ site_url = a.url, auth_token_hash = ("0"):rep(64) })
    assert.equals("not_found", err)
    none, err = b.client:sync_connection({ site_url = "http://127.0.0.1:" .. helper.free_port(),
      auth_token_hash = ("0"):rep(64) })
    assert.equals("offline", err)
    assert.has_error(function() b.client:sync_connection(nil) end)
  end)
end)
