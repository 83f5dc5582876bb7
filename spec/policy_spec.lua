-- Policy files and every hook, against real sites.
local helper = require "helper"
local pksync = require "pksync"
local sites = require "sites"

local EXAMPLES = helper.repo .. "/examples/policies/"

describe("policy.load", function()
  local function write(text)
    local path = helper.root .. "/" .. helper.unique("policy") .. ".lua"
    helper.write_file(path, text)
    return path
  end

  it("loads example files and tables, with their globals kept apart", function()
    for _, f in ipairs { "only_some_tables", "newest_wins", "mask_emails", "trusted_domains" } do
      assert(pksync.policy.load(EXAMPLES .. f .. ".lua"))
    end
    local p = assert(pksync.policy.load(write("counter = 1\nreturn { on_progress = function() counter = counter + 1 end }")))
    assert.is_function(p.on_progress)
    assert.is_nil(rawget(_G, "counter"))
    assert(pksync.policy.load { strategy = function() return "skip" end })
  end)

  it("refuses broken policies with a clear error", function()
    local cases = {
      { "return 42", "must return a table" },
      { "return { transfrom = function() end }", 'unknown hook "transfrom"' },
      { "return { transform = 'upper' }", "must be a function" },
      { "return {", "cannot load policy" },
      { "error('boom')", "failed to load: .*boom" },
    }
    for _, c in ipairs(cases) do
      local p, err = pksync.policy.load(write(c[1]))
      assert.is_nil(p)
      assert.matches(c[2], err)
    end
    local p, err = pksync.policy.load("/nonexistent/policy.lua")
    assert.is_nil(p)
    assert.matches("cannot load policy", err)
    assert.has_error(function() pksync.policy.load(42) end)
  end)
end)

describe("policy hooks in sync_connection", function()
  local a, b

  lazy_setup(function() a, b = sites.start() end)
  lazy_teardown(function() sites.stop(a, b) end)

  local function reset_b()
    b.sql("TRUNCATE reviews, order_items, orders, products, customers")
  end

  local function entry(report, name)
    for _, e in ipairs(report.tables) do
      if e.name == name then return e end
    end
  end

  it("tables: pulls only what the policy picks, in its order", function()
    reset_b()
    local report = assert(b.client:sync_connection(b.conn, { policy = EXAMPLES .. "only_some_tables.lua" }))
    assert.same({ "customers", "products", "orders", "order_items" }, report.order)
    assert.equals("0", b.sql("SELECT count(*) FROM reviews"))
    assert.equals("3375", b.sql("SELECT count(*) FROM order_items"))
  end)

  it("transform: rewrites rows on their way in (masked e-mails)", function()
    reset_b()
    local report = assert(b.client:sync_connection(b.conn, { policy = EXAMPLES .. "mask_emails.lua",
      tables = { "customers" } }))
    assert.equals(500, entry(report, "customers").imported)
    assert.matches("^c%*%*%*%x%x%x%x%x%x@example%.com$", b.sql("SELECT email FROM customers WHERE id = 1"))
    assert.equals("0", b.sql("SELECT count(*) FROM customers WHERE email LIKE 'customer%'"))
  end)

  it("transform: nil drops a row (counted as filtered)", function()
    reset_b()
    local report = assert(b.client:sync_connection(b.conn, { tables = { "products" }, policy = {
      transform = function(_, row) if row.active then return row end end } }))
    local e = entry(report, "products")
    assert.equals(185, e.imported)
    assert.equals(15, e.filtered)
    assert.equals(15, report.totals.filtered)
    assert.equals("0", b.sql("SELECT count(*) FROM products WHERE NOT active"))
    -- values keep their exact values through a hook (compared in SQL; on
    -- LuaJIT a jsonb 1.0 comes back as 1, the same jsonb value)
    local remote = a.sql("SELECT attributes::text || '|' || price::text FROM products WHERE id = 10")
    local attrs, price = remote:match("^(.*)|(.*)$")
    assert.equals("t", b.sql(("SELECT attributes = '%s'::jsonb AND price = %s FROM products WHERE id = 10"):format(attrs, price)))
  end)

  it("strategy + resolve: newest updated_at wins, row by row", function()
    reset_b()
    assert(b.client:sync_connection(b.conn, { tables = { "customers" } }))
    b.sql([[UPDATE customers SET name = 'newer locally', updated_at = '2030-01-01' WHERE id = 1;
      UPDATE customers SET name = 'older locally', updated_at = '2000-01-01' WHERE id = 2]])
    a.sql("UPDATE customers SET name = 'changed remotely' WHERE id IN (1, 2, 3)")
    local report = assert(b.client:sync_connection(b.conn, { policy = EXAMPLES .. "newest_wins.lua",
      tables = { "customers" } }))
    local e = entry(report, "customers")
    assert.equals("custom", e.strategy)
    assert.equals("newer locally", b.sql("SELECT name FROM customers WHERE id = 1"))
    assert.equals("changed remotely", b.sql("SELECT name FROM customers WHERE id = 2"))
    -- id 3: same updated_at on both sides, so the local row stays
    assert.equals("Customer 3", b.sql("SELECT name FROM customers WHERE id = 3"))
    assert.equals(1, e.updated)
    -- a re-sync: only the leaf range of the changed rows travels
    assert.equals("incremental", e.path)
    assert.equals(e.transferred - 1, e.skipped)
    a.sql("UPDATE customers SET name = 'Customer ' || id WHERE id IN (1, 2, 3)")
  end)

  it("resolve: a local row edited in place is written, an untouched one is not, all in one page", function()
    reset_b()
    assert(b.client:sync_connection(b.conn, { tables = { "customers" } }))
    a.sql("UPDATE customers SET name = 'changed remotely' WHERE id <= 300")
    local seen = 0
    local r = assert(b.client:pull_table_data(b.conn, "customers", { conflict_strategy = "custom",
      resolve = function(loc, remote)
        seen = seen + 1
        if loc.id % 3 == 0 and loc.id <= 300 then loc.name = remote.name .. " (merged)" end
        return loc
      end }))
    assert.equals(300, seen)   -- rows equal to the local ones are no conflict
    assert.equals(100, r.records_updated)
    assert.equals(400, r.records_skipped)
    assert.equals("100", b.sql("SELECT count(*) FROM customers WHERE name = 'changed remotely (merged)'"))
    assert.equals("0", b.sql("SELECT count(*) FROM customers WHERE name = 'changed remotely'"))
    assert.equals("0", b.sql("SELECT count(*) FROM customers WHERE id % 3 = 0 AND id <= 300 " ..
      "AND name <> 'changed remotely (merged)'"))
    a.sql("UPDATE customers SET name = 'Customer ' || id WHERE id <= 300")
  end)

  it("resolve: the chosen rows keep every value exactly (real, numeric, jsonb, bytea, timestamptz)", function()
    reset_b()
    assert(b.client:sync_connection(b.conn, { tables = { "products" } }))
    a.sql([[UPDATE products SET price = price + 0.01, weight_kg = 0.1 + id / 3.0,
      attributes = jsonb_build_object('n', 1.10, 'big', 12345678901234567890, 's', E'tab\there'),
      thumbnail = decode('00ff5c0a', 'hex'), updated_at = '2031-02-03 04:05:06.789012+02' WHERE id % 2 = 0]])
    local r = assert(b.client:pull_table_data(b.conn, "products", { conflict_strategy = "custom",
      resolve = function(_, remote) return remote end }))
    assert.is_true(r.records_updated > 0)
    -- every column's text is equal; jsonb values are compared as jsonb (a
    -- number in a document goes through a Lua number: 1.10 comes back as 1.1)
    local cols = "(id, sku, name, price, weight_kg, thumbnail, active, updated_at)"
    local function fingerprint(site)
      return site.sql("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SELECT md5(string_agg(" .. cols ..
        "::text, ',' ORDER BY id)) FROM products")
    end
    assert.equals(fingerprint(a), fingerprint(b))
    local docs = a.sql("SELECT string_agg(format('(%s,%L)', id, attributes), ',') FROM products")
    assert.equals("0", b.sql("SELECT count(*) FROM products p JOIN (VALUES " .. docs ..
      ") v(id, doc) ON p.id = v.id WHERE p.attributes IS DISTINCT FROM v.doc::jsonb"))
    assert.equals(a.sql("SELECT count(*) FROM products"), b.sql("SELECT count(*) FROM products"))
  end)

  it("on_progress and on_error are called", function()
    reset_b()
    local progress, errors = 0, {}
    local report = assert(b.client:sync_connection(b.conn, { tables = { "customers", "nope" }, policy = {
      on_progress = function(ev) progress = progress + 1 assert(ev.table) end,
      on_error = function(ev) errors[#errors + 1] = ev.table .. ":" .. ev.error end } }))
    assert.is_true(progress >= 1)
    assert.same({ "nope:table_not_found" }, errors)
    assert.equals("failed", entry(report, "nope").action)
  end)

  it("a failing hook stops its table cleanly, names the hook, and loses nothing", function()
    reset_b()
    local report = assert(b.client:sync_connection(b.conn, { tables = { "customers", "products" }, policy = {
      transform = function(t, row)
        if t == "products" and row.id == 150 then error("cannot handle product 150") end
        return row
      end } }))
    local p = entry(report, "products")
    assert.equals("failed", p.action)
    assert.equals("hook_failed", p.error)
    assert.matches("transform", p.message)
    assert.matches("product 150", p.message)
    assert.equals("pulled", entry(report, "customers").action)
    assert.equals("500", b.sql("SELECT count(*) FROM customers"))
    -- the failing page was rolled back as a whole: no half page
    assert.equals("0", b.sql("SELECT count(*) FROM products"))
    report = assert(b.client:sync_connection(b.conn, { tables = { "products" }, policy = {
      strategy = function() error("no strategy today") end } }))
    assert.matches("strategy", entry(report, "products").message)
    report = assert(b.client:sync_connection(b.conn, { tables = { "products" } }))
    assert.equals(200, entry(report, "products").imported)
  end)

  it("refuses an invalid policy before doing anything", function()
    local none, err = b.client:sync_connection(b.conn, { policy = { bogus = function() end } })
    assert.is_nil(none)
    assert.equals("invalid_policy", err)
  end)
end)

describe("serving-side policy in nginx", function()
  local a, b

  lazy_setup(function() a, b = sites.start { a_policy = EXAMPLES .. "trusted_domains.lua" } end)
  lazy_teardown(function() sites.stop(a, b) end)

  it("accept_incoming refuses untrusted sites; redact keeps columns at home", function()
    local api = a.url .. "/phoenix_kit/sync/api/register-connection"
    local status, body = helper.http("POST", api, pksync.json.encode { sender_url = "https://evil.test",
      connection_name = "x", auth_token = "t" })
    assert.equals(403, status)
    assert.matches("accepted only from", body)
    status = helper.http("POST", api, pksync.json.encode { sender_url = "https://shop.example.com",
      connection_name = "x", auth_token = "t" })
    assert.equals(200, status)
    assert.equals("active", b.client:query_sender_status(b.conn))
    local recs = assert(b.client:fetch_table_records(b.conn, "customers", { limit = 3 }))
    assert.is_nil(recs[1].password_hash)
    assert.is_string(recs[1].email)
    local schema = assert(b.client:fetch_table_schema(b.conn, "customers"))
    for _, c in ipairs(schema.columns) do assert.are_not.equal("password_hash", c.column_name) end
  end)
end)
