-- The admin page's JSON API (pksync.admin through pksync.nginx.admin)
-- against two real sites on nginx and PostgreSQL: access (off without a
-- password, sessions, CSRF, logout, expiry, the login rate limit) and
-- every action of the page.
local helper = require "helper"
local sites = require "sites"
local pksync = require "pksync"

local json = pksync.json
local PASSWORD = "correct horse battery"

local function decode(body)
  local ok, doc = pcall(json.decode, body or "")
  return ok and doc or nil
end

--- One API call. session: {sid=, csrf=} (either may be missing).
-- @return status, decoded body, headers, raw body
local function call(site, method, path, body, session)
  local headers = {}
  if session and session.sid then headers.cookie = "pksync_admin=" .. session.sid end
  if session and session.csrf then headers["x-csrf-token"] = session.csrf end
  local raw = body and json.encode(body) or (method == "POST" and "{}" or nil)
  local status, resp, h = helper.http(method, site.srv.admin .. "api/" .. path, raw, headers)
  return status, decode(resp), h, resp
end

local function login(site, password)
  local status, doc, h = call(site, "POST", "login", { password = password or PASSWORD })
  if status ~= 200 then return nil, status, doc, h end
  local sid = (h["set-cookie"] or ""):match("pksync_admin=([^;]+)")
  return { sid = sid, csrf = doc.csrf }, status, doc, h
end

--- Call until the job has ended (bounded: a sync of the sample shop takes seconds).
local function wait_job(site, session, uuid)
  local deadline = helper.now() + 60
  while helper.now() < deadline do
    local status, doc = call(site, "GET", "jobs/" .. uuid, nil, session)
    assert(status == 200, tostring(status))
    if doc.job.status == "done" or doc.job.status == "failed" then return doc.job end
    helper.sleep(0.1)
  end
  error("job " .. uuid .. " did not end")
end

describe("admin page", function()
  local a, b, sa, sb

  lazy_setup(function()
    a, b = sites.start_admin_pair()
  end)

  lazy_teardown(function()
    if a then sites.stop_admin_pair(a, b) end
  end)

  it("is off (404) until an admin password is set", function()
    assert.equals(404, (helper.http("GET", a.srv.admin)))
    assert.equals(404, (call(a, "POST", "login", { password = "" })))
    assert.equals(404, (call(a, "GET", "overview")))
    assert(a.client:set_settings { admin_password = PASSWORD })
    assert(b.client:set_settings { admin_password = PASSWORD })
    local status, body, h = helper.http("GET", a.srv.admin)
    assert.equals(200, status)
    assert.matches("text/html", h["content-type"])
    assert.matches('src="admin.js"', body)
    assert.matches("default%-src 'self'", h["content-security-policy"])
    assert.equals(200, (helper.http("GET", a.srv.admin .. "admin.js")))
    assert.equals(200, (helper.http("GET", a.srv.admin .. "admin.css")))
    assert.equals(404, (helper.http("GET", a.srv.admin .. "../admin.lua")))
    assert.equals(404, (helper.http("GET", a.srv.admin .. "nope.html")))
  end)

  it("logs in with the password: an HttpOnly SameSite=Strict cookie on the location, only its digest stored", function()
    local status, doc = call(a, "POST", "login", { password = "wrong" })
    assert.equals(401, status)
    assert.equals("wrong_password", doc.error)
    assert.equals("Wrong password.", doc.message)
    local h
    sa, status, doc, h = login(a)
    assert.equals(200, status, doc and doc.message)
    local cookie = h["set-cookie"]
    assert.matches("HttpOnly", cookie)
    assert.matches("SameSite=Strict", cookie)
    assert.matches("Path=/pksync/admin/;", cookie)
    assert.is_nil(cookie:find("Secure", 1, true), "no Secure flag over plain http")
    assert.equals(43, #sa.sid)
    assert.equals(64, #sa.csrf)
    local stored = a.sql("SELECT id_hash FROM pksync_admin_sessions")
    assert.equals(64, #stored)
    assert.is_nil(stored:find(sa.sid, 1, true))
    assert.equals("0", a.sql("SELECT count(*) FROM pksync_admin_logins"), "a good login clears the failures")
    status, doc = call(a, "GET", "session", nil, { sid = sa.sid })
    assert.equals(200, status)
    assert.equals(sa.csrf, doc.csrf)
    sb = assert(login(b))
  end)

  it("refuses every API call without a session, and changes without the right CSRF token", function()
    for _, c in ipairs { { "GET", "overview" }, { "GET", "connections" }, { "POST", "settings" },
                         { "POST", "connections" }, { "GET", "transfers" }, { "POST", "logout" } } do
      local status, doc = call(a, c[1], c[2], {})
      assert.equals(401, status, c[2])
      assert.equals("not_logged_in", doc.error)
    end
    local status, doc = call(a, "GET", "overview", nil, { sid = "made-up-session-id" })
    assert.equals(401, status)
    status, doc = call(a, "POST", "settings", { incoming_mode = "deny_all" }, { sid = sa.sid })
    assert.equals(403, status)
    assert.equals("bad_csrf_token", doc.error)
    status = call(a, "POST", "settings", { incoming_mode = "deny_all" }, { sid = sa.sid, csrf = sb.csrf })
    assert.equals(403, status, "another session's token")
    status = call(a, "POST", "settings", { incoming_mode = "deny_all" }, { sid = sa.sid, csrf = ("0"):rep(64) })
    assert.equals(403, status)
    assert.equals("auto_accept", a.client:get_settings().incoming_mode)
    -- reading needs no token
    assert.equals(200, (call(a, "GET", "overview", nil, { sid = sa.sid })))
  end)

  it("shows the overview and changes settings (the incoming password is never shown)", function()
    local status, doc = call(a, "GET", "overview", nil, sa)
    assert.equals(200, status)
    assert.is_true(doc.settings.enabled)
    assert.equals("auto_accept", doc.settings.incoming_mode)
    assert.is_false(doc.settings.password_set)
    assert.equals(a.url, doc.site_url)
    status, doc = call(a, "POST", "settings", { incoming_mode = "require_password", incoming_password = "pw-in" }, sa)
    assert.equals(200, status)
    assert.is_true(doc.settings.password_set)
    assert.equals("require_password", doc.settings.incoming_mode)
    assert.is_true(a.client:check_incoming_password("pw-in"))
    status, doc = call(a, "POST", "settings", { incoming_mode = "open" }, sa)
    assert.equals(400, status)
    assert.matches("incoming_mode", doc.message)
    status, doc = call(a, "POST", "settings", { admin_password = "x" }, sa)
    assert.equals(400, status, "the admin password is the command line's")
    status, doc = call(a, "POST", "settings", { incoming_mode = "auto_accept", incoming_password = "" }, sa)
    assert.is_false(doc.settings.password_set)
  end)

  local sender_uuid, receiver_uuid, raw_token

  it("creates a sender with everything the page can set; the raw token once; hashes cut to 8 characters", function()
    local status, doc, _, raw = call(a, "POST", "connections", {
      name = "A to B", site_url = b.url, allowed_tables = { "customers", "orders", "products" },
      excluded_tables = { "reviews" }, expires_at = "2099-01-01T00:00:00Z", max_downloads = 50,
      max_records_total = 100000, max_records_per_request = 500, rate_limit_requests_per_minute = 0,
      ip_whitelist = { "127.0.0.1" }, allowed_hours_start = 0, allowed_hours_end = 23,
      download_password = "dl-pw", auto_sync_enabled = true, auto_sync_tables = { "orders" },
      auto_sync_interval_minutes = 30, default_conflict_strategy = "overwrite" }, sa)
    assert.equals(200, status, raw)
    raw_token = doc.token
    assert.equals(43, #raw_token)
    sender_uuid = doc.connection.uuid
    assert.equals("pending", doc.connection.status)
    assert.equals("pending", doc.registration.notification_status, "B approves by hand")
    assert.is_true(doc.registration.notification_success)
    local hash = pksync.token.hash(raw_token)
    assert.equals(hash:sub(1, 8), doc.connection.token_hash_prefix)
    assert.is_nil(raw:find(hash, 1, true))
    assert.is_nil(raw:find("dl-pw", 1, true))
    assert.is_true(doc.connection.download_password_set)
    assert.equals("{customers,orders,products}|{reviews}|50|500|{127.0.0.1}|t|30|overwrite", a.sql(
      "SELECT allowed_tables, excluded_tables, max_downloads, max_records_per_request, ip_whitelist, " ..
      "auto_sync_enabled, auto_sync_interval_minutes, default_conflict_strategy FROM pksync_connections"))
    -- the list never shows the token again, nor a whole hash
    status, doc, _, raw = call(a, "GET", "connections", nil, sa)
    assert.equals(200, status)
    assert.equals(1, #doc.connections)
    assert.is_nil(raw:find(raw_token, 1, true))
    assert.is_nil(raw:find(hash, 1, true))
    -- wrong input is refused in words
    status, doc = call(a, "POST", "connections", { name = "x", site_url = "ftp://nope" }, sa)
    assert.equals(400, status)
    assert.matches("site_url", doc.message)
    status, doc = call(a, "POST", "connections", { name = "x", site_url = b.url, max_downloads = "many" }, sa)
    assert.equals(400, status)
    assert.matches("max_downloads", doc.message)
    status, doc = call(a, "POST", "connections", { name = "again", site_url = b.url }, sa)
    assert.equals(409, status)
    assert.equals("already_exists", doc.error)
  end)

  it("lists with direction and status filters, approves on the receiver, checks both sides live", function()
    local status, doc = call(b, "GET", "connections?direction=receiver&status=pending", nil, sb)
    assert.equals(200, status)
    assert.equals(1, #doc.connections)
    receiver_uuid = doc.connections[1].uuid
    assert.equals(0, #select(2, call(b, "GET", "connections?direction=sender", nil, sb)).connections)
    assert.equals(0, #select(2, call(b, "GET", "connections?status=active", nil, sb)).connections)
    status, doc = call(b, "POST", "connections/" .. receiver_uuid .. "/approve", nil, sb)
    assert.equals(200, status)
    assert.equals("active", doc.connection.status)
    assert.equals("skipped", doc.remote, "a receiver tells nobody")
    -- the receiver asks the sender: A's pending connection becomes active on first contact
    status, doc = call(b, "POST", "connections/" .. receiver_uuid .. "/check", nil, sb)
    assert.equals(200, status)
    assert.equals("active", doc.connection)
    assert.is_true(doc.reachable)
    assert.is_true(doc.site.enabled)
    status, doc = call(a, "POST", "connections/" .. sender_uuid .. "/check", nil, sa)
    assert.equals("exists", doc.connection)
    status, doc = call(a, "GET", "overview", nil, sa)
    assert.equals(1, doc.counts.sender.active)
    status, doc = call(b, "POST", "connections/00000000-0000-0000-0000-000000000000/approve", nil, sb)
    assert.equals(404, status)
    -- the token is the sender's to give
    local hash = b.sql("SELECT auth_token_hash FROM pksync_connections")
    status, doc = call(b, "POST", "connections/" .. receiver_uuid .. "/regenerate", nil, sb)
    assert.equals(400, status)
    assert.equals("not_a_sender", doc.error)
    assert.equals(hash, b.sql("SELECT auth_token_hash FROM pksync_connections"))
  end)

  it("shows the sender's tables beside the local ones, with their parents", function()
    local status, doc = call(b, "GET", "connections/" .. receiver_uuid .. "/tables", nil, sb)
    assert.equals(200, status, doc and doc.message)
    local by = {}
    for _, t in ipairs(doc.tables) do by[t.name] = t end
    assert.equals(500, by.customers.remote.row_count)
    assert.equals(0, by.customers["local"].row_count)
    assert.equals("differs", by.customers.state)
    assert.same({ "customers" }, by.orders.parents)
    assert.is_nil(by.reviews, "excluded on the sender")
    assert.equals("differs", by.products.state)
    b.sql("DROP TABLE products CASCADE")
    status, doc = call(b, "GET", "connections/" .. receiver_uuid .. "/tables", nil, sb)
    for _, t in ipairs(doc.tables) do by[t.name] = t end
    assert.equals("missing", by.products.state)
    assert.equals(pksync.null, by.products["local"])
    -- the sender's side of a connection has no tables to pull
    status, doc = call(a, "GET", "connections/" .. sender_uuid .. "/tables", nil, sa)
    assert.equals(400, status)
    assert.equals("not_a_receiver", doc.error)
  end)

  it("runs a dry run and a sync as jobs, with per-table progress and the report", function()
    local status, doc = call(b, "POST", "connections/" .. receiver_uuid .. "/sync",
      { tables = { "customers", "orders" }, strategies = { orders = "merge" }, dry_run = true }, sb)
    assert.equals(202, status, doc and doc.message)
    local job = wait_job(b, sb, doc.job.uuid)
    assert.equals("done", job.status, job.error)
    assert.is_true(job.report.dry_run)
    assert.equals("0", b.sql("SELECT count(*) FROM orders"), "a dry run writes nothing")

    status, doc = call(b, "POST", "connections/" .. receiver_uuid .. "/sync",
      { tables = { "customers", "orders" }, strategies = { orders = "merge", customers = "overwrite" } }, sb)
    job = wait_job(b, sb, doc.job.uuid)
    assert.equals("done", job.status, job.error)
    assert.equals("1500", b.sql("SELECT count(*) FROM orders"))
    assert.equals(500, job.progress.customers.rows)
    assert.is_true(job.progress.orders.done)
    local strategy = {}
    for _, t in ipairs(job.report.tables) do strategy[t.name] = t.strategy end
    assert.same({ customers = "overwrite", orders = "merge" }, strategy)
    assert.equals(2000, job.report.totals.transferred)
    -- the next look shows them unchanged
    status, doc = call(b, "GET", "connections/" .. receiver_uuid .. "/tables", nil, sb)
    for _, t in ipairs(doc.tables) do
      if t.name == "orders" or t.name == "customers" then assert.equals("unchanged", t.state) end
    end
    -- refused in words
    status, doc = call(b, "POST", "connections/" .. receiver_uuid .. "/sync", { tables = {} }, sb)
    assert.equals(400, status)
    assert.equals("Choose at least one table.", doc.message)
    status, doc = call(b, "POST", "connections/" .. receiver_uuid .. "/sync",
      { tables = { "orders" }, strategies = { orders = "drop" } }, sb)
    assert.equals(400, status)
    status = call(b, "POST", "connections/" .. receiver_uuid .. "/sync", { tables = { "orders" } }, { sid = sb.sid })
    assert.equals(403, status)
  end)

  it("keeps the site's policy hooks under the page's strategies", function()
    local admin = require "pksync.admin"
    local transformed = 0
    local client = pksync.new { db = b.conninfo, site_url = b.url, policy = {
      transform = function(t, row)
        if t == "customers" then transformed = transformed + 1 row.name = row.name:upper() end
        return row
      end,
      strategy = function() return "skip" end } }
    local writer = pksync.new { db = b.conninfo, site_url = b.url }
    b.sql("UPDATE customers SET name = 'changed here' WHERE id = 1")
    local job = assert(client:create_admin_job(receiver_uuid, { tables = { "customers", "orders" },
      strategies = { customers = "overwrite" } }))
    assert(admin.run_job(client, writer, job.uuid))
    job = assert(writer:get_admin_job(job.uuid))
    assert.equals("done", job.status, job.error)
    local by = {}
    for _, t in ipairs(job.report.tables) do by[t.name] = t end
    assert.equals("overwrite", by.customers.strategy, "the page's strategy")
    assert.equals("unchanged", by.orders.action)
    -- an incremental re-sync pulls only the key range holding the changed row
    assert.is_true(transformed > 0 and transformed < 500, "the policy's transform ran: " .. transformed)
    assert.equals(a.sql("SELECT upper(name) FROM customers WHERE id = 1"),
      b.sql("SELECT name FROM customers WHERE id = 1"))
    -- a job runs once
    assert.equals("not_queued", select(2, admin.run_job(client, writer, job.uuid)))
    client:close()
    writer:close()
  end)

  it("lists transfers with filters and pages, and shows one with its counts", function()
    local status, doc = call(b, "GET", "transfers?direction=receive", nil, sb)
    assert.equals(200, status)
    assert.is_true(#doc.transfers >= 2)
    assert.equals(1, doc.page)
    local tables = {}
    for _, t in ipairs(doc.transfers) do tables[t.table_name] = true end
    assert.is_true(tables.orders and tables.customers)
    assert.equals(0, #select(2, call(b, "GET", "transfers?direction=send", nil, sb)).transfers)
    assert.equals(0, #select(2, call(b, "GET", "transfers?status=failed", nil, sb)).transfers)
    local n = #select(2, call(b, "GET", "transfers?connection=" .. receiver_uuid, nil, sb)).transfers
    assert.equals(#doc.transfers, n)
    local first = doc.transfers[1]
    status, doc = call(b, "GET", "transfers/" .. first.uuid, nil, sb)
    assert.equals(200, status)
    assert.equals(first.table_name, doc.transfer.table_name)
    assert.equals("completed", doc.transfer.status)
    -- pages of 25: add enough failed ones to need a second page
    b.sql("INSERT INTO pksync_transfers (direction, table_name, status, error_message) " ..
      "SELECT 'receive', 'orders', 'failed', 'boom ' || g FROM generate_series(1, 30) g")
    status, doc = call(b, "GET", "transfers?status=failed", nil, sb)
    assert.equals(25, #doc.transfers)
    assert.is_true(doc.has_more)
    status, doc = call(b, "GET", "transfers?status=failed&page=2", nil, sb)
    assert.equals(5, #doc.transfers)
    assert.is_false(doc.has_more)
    assert.equals(2, doc.page)
    assert.equals(404, (call(b, "GET", "transfers/00000000-0000-0000-0000-000000000000", nil, sb)))
  end)

  it("shows the schedule of the receiver connections: next due, last result, failures", function()
    local status, doc = call(b, "GET", "schedule", nil, sb)
    assert.equals(200, status)
    assert.equals(1, #doc.connections)
    local c = doc.connections[1]
    assert.equals(receiver_uuid, c.uuid)
    assert.is_false(c.auto_sync_enabled)
    b.sql("UPDATE pksync_connections SET auto_sync_enabled = true, auto_sync_interval_minutes = 30, " ..
      "last_auto_sync_at = now(), last_auto_sync_status = 'offline', last_auto_sync_error = 'offline: gone', " ..
      "auto_sync_failures = 2, next_auto_sync_at = now() + interval '5 minutes' WHERE uuid = '" .. receiver_uuid .. "'")
    local raw
    status, doc, _, raw = call(b, "GET", "schedule", nil, sb)
    c = doc.connections[1]
    assert.same({ true, 30, false, "offline", "offline: gone", 2 }, { c.auto_sync_enabled,
      c.auto_sync_interval_minutes, c.due, c.last_auto_sync_status, c.last_auto_sync_error, c.auto_sync_failures })
    assert.is_string(c.next_due_at)
    assert.is_nil(raw:find("auth_token", 1, true))
    -- A's sender connection is not scheduled: A's page lists no receiver
    assert.equals(0, #select(2, call(a, "GET", "schedule", nil, sa)).connections)
    b.sql("UPDATE pksync_connections SET auto_sync_enabled = false, last_auto_sync_at = NULL, " ..
      "last_auto_sync_status = NULL, last_auto_sync_error = NULL, auto_sync_failures = 0, next_auto_sync_at = NULL")
  end)

  it("suspends, reactivates, regenerates, revokes and deletes, each with the peer's answer", function()
    local path = "connections/" .. sender_uuid .. "/"
    local status, doc = call(a, "POST", path .. "suspend", { reason = "maintenance" }, sa)
    assert.equals(200, status)
    assert.equals("suspended", doc.connection.status)
    assert.equals("maintenance", doc.connection.suspended_reason)
    assert.equals("updated", doc.remote)
    assert.equals("suspended", b.sql("SELECT status FROM pksync_connections"))
    status, doc = call(a, "POST", path .. "reactivate", nil, sa)
    assert.equals("active", doc.connection.status)
    assert.equals("updated", doc.remote)
    assert.equals("active", b.sql("SELECT status FROM pksync_connections"))
    status, doc = call(a, "POST", path .. "regenerate", nil, sa)
    assert.equals(200, status)
    assert.equals(43, #doc.token)
    assert.not_equals(raw_token, doc.token)
    assert.equals(pksync.token.hash(doc.token):sub(1, 8), doc.connection.token_hash_prefix)
    assert.equals("pending", doc.registration.notification_status, "B approves by hand")
    status, doc = call(a, "POST", path .. "revoke", { reason = "done" }, sa)
    assert.equals("revoked", doc.connection.status)
    status, doc = call(a, "POST", path .. "delete", nil, sa)
    assert.equals(200, status)
    assert.is_true(doc.deleted)
    assert.equals("deleted", doc.remote)
    assert.equals("0", a.sql("SELECT count(*) FROM pksync_connections"))
    assert.equals(404, (call(a, "POST", path .. "delete", nil, sa)))
  end)

  it("refuses a session after logout, and after it expired", function()
    local status = call(a, "POST", "logout", nil, { sid = sa.sid })
    assert.equals(403, status, "logging out changes something: it needs the token")
    local h
    status, _, h = call(a, "POST", "logout", nil, sa)
    assert.equals(200, status)
    assert.matches("pksync_admin=;.*Max%-Age=0", h["set-cookie"])
    assert.equals(401, (call(a, "GET", "overview", nil, sa)))
    assert.equals("0", a.sql("SELECT count(*) FROM pksync_admin_sessions"))

    sa = assert(login(a))
    assert.equals(200, (call(a, "GET", "overview", nil, sa)))
    a.sql("UPDATE pksync_admin_sessions SET expires_at = now() - interval '1 second'")
    local doc
    status, doc = call(a, "GET", "overview", nil, sa)
    assert.equals(401, status)
    assert.matches("expired", doc.message)
  end)

  it("limits failed logins per client address, then lets it in once the window has passed", function()
    for _ = 1, 5 do
      assert.equals(401, (call(a, "POST", "login", { password = "guess" })))
    end
    local status, doc, h = call(a, "POST", "login", { password = PASSWORD })
    assert.equals(429, status, "the right password too, while the limit holds")
    assert.equals("too_many_attempts", doc.error)
    assert.matches("try again in 15 minutes", doc.message)
    assert.is_true(tonumber(h["retry-after"]) > 0)
    -- another site's counter is its own
    assert.truthy(login(b))
    -- the window passes (moved in the store, not waited for)
    a.sql("UPDATE pksync_admin_logins SET window_start = now() - interval '16 minutes'")
    assert.truthy(login(a))
  end)

  it("marks the cookie Secure over https, and behind a TLS proxy when told", function()
    local admin = require "pksync.admin"
    local client = pksync.new { db = a.conninfo }
    local function cookie_of(scheme, opts)
      local res = admin.handle(client, { method = "POST", path = "/pksync/admin/api/login", scheme = scheme,
        body = json.encode { password = PASSWORD }, headers = {}, remote_addr = "192.0.2.7" }, opts)
      assert.equals(200, res.status, res.body)
      return res.headers["set-cookie"]
    end
    assert.matches("; Secure$", cookie_of("https"))
    assert.is_nil(cookie_of("http"):find("Secure", 1, true))
    assert.matches("; Secure$", cookie_of("http", { secure_cookie = true }))
    client:close()
  end)
end)
