-- The connection store in a real PostgreSQL database.
local helper = require "helper"
local pksync = require "pksync"
local cjson = require "cjson"

describe("pksync store", function()
  local dbname, conninfo, client, peer

  lazy_setup(function()
    dbname, conninfo = helper.create_database("store")
    peer = helper.start_peer()
    client = pksync.new { site_url = "https://me.example", db = conninfo, timeout = 2000 }
    assert(client:migrate())
  end)

  lazy_teardown(function()
    client:close()
    peer.stop()
    helper.drop_database(dbname)
  end)

  before_each(function() peer.reset() end)

  local function sql(q) return helper.psql(dbname, q) end

  it("migrates idempotently, with the expected tables and constraints", function()
    assert(client:migrate())
    assert(client:migrate())
    assert.equals("pksync_admin_jobs,pksync_admin_logins,pksync_admin_sessions,pksync_connections," ..
      "pksync_settings,pksync_transfers", sql(
      "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'pksync_%'"))
    local cols = sql("SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns " ..
      "WHERE table_name = 'pksync_connections'")
    for _, c in ipairs { "approval_mode", "allowed_tables", "excluded_tables", "auto_approve_tables", "expires_at",
      "max_downloads", "downloads_used", "max_records_total", "records_downloaded", "max_records_per_request",
      "rate_limit_requests_per_minute", "download_password_hash", "ip_whitelist", "allowed_hours_start",
      "allowed_hours_end", "default_conflict_strategy", "auto_sync_enabled", "approved_at", "suspended_reason",
      "revoked_reason", "last_connected_at", "last_transfer_at", "total_records_transferred", "metadata",
      "inserted_at", "updated_at" } do
      assert.is_truthy(cols:find(c, 1, true), c)
    end
    assert.equals("10000|60", sql("SELECT column_default FROM information_schema.columns WHERE table_name = " ..
      "'pksync_connections' AND column_name = 'max_records_per_request'") .. "|" ..
      sql("SELECT column_default FROM information_schema.columns WHERE table_name = 'pksync_connections' " ..
      "AND column_name = 'rate_limit_requests_per_minute'"))
  end)

  it("uses custom table names and rejects invalid ones", function()
    local c = pksync.new { db = conninfo, store_tables = { connections = "my_conns", transfers = "my_xfers",
      settings = "my_settings" } }
    assert(c:migrate())
    c:close()
    assert.equals("1", sql("SELECT count(*) FROM pg_tables WHERE tablename = 'my_conns'"))
    assert.has_error(function() pksync.new { db = conninfo, store_tables = { connections = "x; drop" } } end)
    assert.has_error(function() pksync.new { db = conninfo, store_tables = { nope = "x" } } end)
  end)

  it("creates a sender: raw token once, only its hash stored, registration recorded", function()
    peer.scenario("/phoenix_kit/sync/api/register-connection", { status = 200, body = { success = true,
      connection_status = "active", connection_uuid = "remote-1", message = "Connection registered and activated" } })
    local conn, raw = assert(client:create_connection { name = "To B", direction = "sender", site_url = peer.url,
      password = "pw", allowed_tables = { "posts" } })
    assert.equals(43, #raw)
    assert.equals(pksync.token.hash(raw), conn.auth_token_hash)
    assert.equals("pending", conn.status)
    assert.same({ "posts" }, conn.allowed_tables)
    local note = conn.metadata.remote_notification
    assert.is_true(note.notification_success)
    assert.equals("registered", note.notification_status)
    assert.equals("remote-1", note.remote_connection_uuid)
    local req = peer.requests()[1]
    local body = cjson.decode(req.body)
    assert.same({ sender_url = "https://me.example", connection_name = "To B", auth_token = raw, password = "pw" }, body)
    -- the raw token exists nowhere in the database
    assert.equals("0", sql(("SELECT count(*) FROM pksync_connections t WHERE t::text LIKE '%%%s%%'"):format(raw)))
  end)

  it("records a failed registration without failing the creation", function()
    local far = "http://127.0.0.1:" .. helper.free_port()
    local conn = assert(client:create_connection { name = "Far", direction = "sender", site_url = far })
    assert.is_false(conn.metadata.remote_notification.notification_success)
    assert.equals("failed", conn.metadata.remote_notification.notification_status)
  end)

  it("creates receivers from a raw token or a hash, and refuses duplicates", function()
    local conn = assert(client:create_connection { name = "From A", direction = "receiver",
      site_url = "https://a.example", auth_token = "tok-a" })
    assert.equals("active", conn.status)
    assert.equals(pksync.token.hash("tok-a"), conn.auth_token_hash)
    local again, err = client:create_connection { name = "dup", direction = "receiver",
      site_url = "https://a.example", auth_token_hash = ("f"):rep(64) }
    assert.is_nil(again)
    assert.equals("already_exists", err)
    assert.has_error(function() client:create_connection { name = "x", direction = "receiver", site_url = "https://z" } end)
    assert.has_error(function() client:create_connection { name = "x", direction = "both", site_url = "https://z" } end)
    assert.has_error(function() client:create_connection { name = "x", direction = "receiver",
      site_url = "ftp://z", auth_token = "t" } end)
    assert.has_error(function() client:create_connection { name = "x", direction = "receiver",
      site_url = "https://z", auth_token = "t", uuid = "forced" } end)
  end)

  it("gets, lists, updates with checked fields, and stores hostile text verbatim", function()
    local evil = "Robert'); DROP TABLE pksync_connections; --"
    local conn = assert(client:create_connection { name = evil, direction = "receiver",
      site_url = "https://evil.example", auth_token = "t-evil", max_records_per_request = 500 })
    local got = assert(client:get_connection(conn.uuid))
    assert.equals(evil, got.name)
    assert.equals(500, got.max_records_per_request)
    local nf, err = client:get_connection("00000000-0000-0000-0000-000000000000")
    assert.is_nil(nf)
    assert.equals("not_found", err)
    nf, err = client:get_connection("not-a-uuid")
    assert.equals("not_found", err)

    local upd = assert(client:update_connection(conn.uuid, { excluded_tables = { "secrets", "a\"b" },
      expires_at = "2030-01-01T00:00:00Z", ip_whitelist = { "127.0.0.1" }, metadata = { note = "x" } }))
    assert.same({ "secrets", "a\"b" }, upd.excluded_tables)
    assert.matches("^2030%-01%-01 00:00:00%+00", upd.expires_at)
    assert.equals("x", upd.metadata.note)
    assert.has_error(function() client:update_connection(conn.uuid, { status = "active" }) end)
    assert.has_error(function() client:update_connection(conn.uuid, { auth_token_hash = "x" }) end)
    assert.has_error(function() client:update_connection(conn.uuid, { max_downloads = "ten" }) end)
    upd = assert(client:update_connection(conn.uuid, { download_password = "dl-pass" }))
    assert.matches("^pbkdf2%-sha256%$", upd.download_password_hash)

    local receivers = assert(client:list_connections { direction = "receiver" })
    assert.is_true(#receivers >= 2)
    for _, c in ipairs(receivers) do assert.equals("receiver", c.direction) end
    assert.equals("[]", pksync.json.encode(assert(client:list_connections { status = "expired" })))
    assert.equals("1", sql("SELECT count(*) FROM pg_tables WHERE tablename = 'pksync_connections'"))
  end)

  it("moves through the lifecycle, mirroring a sender's status on its receiver", function()
    peer.scenario("/phoenix_kit/sync/api/update-status", { status = 200, body = { success = true } })
    local conn = assert(client:create_connection { name = "Life", direction = "sender", site_url = peer.url .. "/life",
      notify = false })
    local c, remote = assert(client:approve_connection(conn.uuid))
    assert.equals("active", c.status)
    assert.is_string(c.approved_at)
    c, remote = assert(client:suspend_connection(conn.uuid, "audit"))
    assert.equals("suspended", c.status)
    assert.equals("audit", c.suspended_reason)
    assert.equals("not_found", remote) -- the peer answers 404 for its unknown /life prefix path
    peer.scenario("/life/phoenix_kit/sync/api/update-status", { status = 200, body = { success = true } })
    c, remote = assert(client:reactivate_connection(conn.uuid))
    assert.equals("active", c.status)
    assert.equals(pksync.null, c.suspended_reason)
    assert.equals("updated", remote)
    c, remote = assert(client:revoke_connection(conn.uuid, "gone"))
    assert.equals("revoked", c.status)
    assert.equals("gone", c.revoked_reason)
    local bodies = {}
    for _, r in ipairs(peer.requests()) do
      if r.path:find("update-status", 1, true) then bodies[#bodies + 1] = cjson.decode(r.body).status end
    end
    assert.same({ "active", "suspended", "active", "revoked" }, bodies)

    local recv = assert(client:create_connection { name = "R", direction = "receiver", site_url = "https://r.example",
      auth_token = "r" })
    local _, rremote = assert(client:suspend_connection(recv.uuid))
    assert.equals("skipped", rremote)
  end)

  it("regenerates a token and re-registers a sender; deletes with notification", function()
    peer.scenario("/phoenix_kit/sync/api/register-connection", { status = 200, body = { success = true } })
    peer.scenario("/phoenix_kit/sync/api/delete-connection", { status = 200, body = { success = true } })
    local conn, raw = assert(client:create_connection { name = "Regen", direction = "sender",
      site_url = peer.url .. "/", notify = false })
    local c2, raw2 = assert(client:regenerate_token(conn.uuid))
    assert.are_not.equal(raw, raw2)
    assert.equals(pksync.token.hash(raw2), c2.auth_token_hash)
    local paths = {}
    for _, r in ipairs(peer.requests()) do paths[#paths + 1] = r.path:match("[^/]+$") end
    assert.same({ "delete-connection", "register-connection" }, paths)
    local ok, remote = assert(client:delete_connection(conn.uuid))
    assert.is_true(ok)
    assert.equals("deleted", remote)
    assert.equals("not_found", select(2, client:get_connection(conn.uuid)))
  end)

  it("finds connections by hash in constant time", function()
    local conn = assert(client:create_connection { name = "Find", direction = "sender", site_url = "https://f.example",
      notify = false })
    local found = assert(client:find_sender_by_hash(conn.auth_token_hash))
    assert.equals(conn.uuid, found.uuid)
    assert.is_false(client:find_sender_by_hash(("0"):rep(64)))
    assert.equals(conn.uuid, assert(client:find_by_url_and_hash("https://f.example", conn.auth_token_hash)).uuid)
    assert.is_false(client:find_by_url_and_hash("https://f.example/", conn.auth_token_hash))
  end)

  it("keeps settings, with the incoming password hashed", function()
    local s = assert(client:get_settings())
    assert.same({ enabled = false, incoming_mode = "require_approval", password_set = false,
      admin_password_set = false }, s)
    assert.equals("unset", client:check_incoming_password("x"))
    s = assert(client:set_settings { enabled = true, incoming_mode = "require_password", incoming_password = "hunter2" })
    assert.same({ enabled = true, incoming_mode = "require_password", password_set = true,
      admin_password_set = false }, s)
    assert.is_true(client:check_incoming_password("hunter2"))
    assert.is_false(client:check_incoming_password("hunter3"))
    assert.is_false(client:check_incoming_password(nil))
    assert.equals("0", sql("SELECT count(*) FROM pksync_settings WHERE value::text LIKE '%hunter2%'"))
    s = assert(client:set_settings { incoming_password = "" })
    assert.is_false(s.password_set)
    assert.has_error(function() client:set_settings { incoming_mode = "open" } end)
    assert.has_error(function() client:set_settings { enabled = "yes" } end)
    assert.has_error(function() client:set_settings { colour = "red" } end)
    -- the admin password: hashed the same way, apart from the incoming one
    s = assert(client:set_settings { admin_password = "admin pw" })
    assert.is_true(s.admin_password_set)
    assert.is_false(s.password_set)
    assert.is_true(client:check_admin_password("admin pw"))
    assert.is_false(client:check_admin_password("hunter2"))
    assert.equals("unset", client:check_incoming_password("admin pw"))
    assert.equals("0", sql("SELECT count(*) FROM pksync_settings WHERE value::text LIKE '%admin pw%'"))
    assert.is_false(assert(client:set_settings { admin_password = "" }).admin_password_set)
  end)

  it("keeps admin sessions until they expire, counts failed logins per address in a window, and jobs", function()
    assert(client:create_admin_session("h1", "127.0.0.1", 30))
    assert.equals("127.0.0.1", assert(client:find_admin_session("h1")).client_ip)
    assert.is_false(client:find_admin_session("h2"))
    sql("UPDATE pksync_admin_sessions SET expires_at = now() - interval '1 second' WHERE id_hash = 'h1'")
    assert.is_false(client:find_admin_session("h1"))
    assert.equals("0", sql("SELECT count(*) FROM pksync_admin_sessions"))
    assert(client:create_admin_session("h3", nil, 30))
    assert(client:delete_admin_session("h3"))
    assert.is_false(client:find_admin_session("h3"))

    assert.equals(0, client:admin_login_failures("10.0.0.9", 15).failures)
    for _ = 1, 3 do assert(client:count_admin_login_failure("10.0.0.9", 15)) end
    local f = client:admin_login_failures("10.0.0.9", 15)
    assert.equals(3, f.failures)
    assert.is_true(f.retry_after > 0 and f.retry_after <= 900)
    assert.equals(0, client:admin_login_failures("10.0.0.8", 15).failures)
    sql("UPDATE pksync_admin_logins SET window_start = now() - interval '16 minutes'")
    assert.equals(0, client:admin_login_failures("10.0.0.9", 15).failures)
    assert(client:count_admin_login_failure("10.0.0.9", 15))
    assert.equals(1, client:admin_login_failures("10.0.0.9", 15).failures)
    assert(client:clear_admin_login_failures("10.0.0.9"))
    assert.equals(0, client:admin_login_failures("10.0.0.9", 15).failures)

    local job = assert(client:create_admin_job(nil, { tables = { "posts" }, dry_run = true }))
    assert.equals("queued", job.status)
    assert.same({ "posts" }, job.params.tables)
    assert(client:update_admin_job(job.uuid, { status = "running", progress = { posts = { rows = 5 } } }))
    assert(client:update_admin_job(job.uuid, { status = "done", report = { totals = { transferred = 5 } } }))
    job = assert(client:get_admin_job(job.uuid))
    assert.equals("done", job.status)
    assert.equals(5, job.progress.posts.rows)
    assert.equals(5, job.report.totals.transferred)
    assert.equals("not_found", select(2, client:get_admin_job("nope")))
    assert.equals("not_found", select(2, client:get_admin_job("00000000-0000-0000-0000-000000000000")))
  end)

  it("records transfers", function()
    local t = assert(client:create_transfer { direction = "receive", table_name = "posts", status = "in_progress",
      started_at = "now", conflict_strategy = "skip" })
    assert.equals("in_progress", t.status)
    -- LuaJIT has no 64-bit integers: an exact decimal carries the value there
    local big = math.type and 9007199254740993 or pksync.decimal("9007199254740993")
    t = assert(client:update_transfer(t.uuid, { status = "completed", records_transferred = big,
      completed_at = "now", metadata = { pages = 3 } }))
    assert.equals("completed", t.status)
    assert.equals("9007199254740993", sql("SELECT records_transferred FROM pksync_transfers WHERE uuid = '" .. t.uuid .. "'"))
    local list = assert(client:list_transfers { table_name = "posts" })
    assert.equals(t.uuid, list[1].uuid)
    assert.equals(t.uuid, assert(client:get_transfer(t.uuid)).uuid)
    assert.equals(3, client:get_transfer(t.uuid).metadata.pages)
    assert.equals("not_found", select(2, client:get_transfer("00000000-0000-0000-0000-000000000000")))
    -- pages: limit and offset
    local second = assert(client:create_transfer { direction = "receive", table_name = "posts", status = "failed" })
    list = assert(client:list_transfers { table_name = "posts", limit = 1 })
    assert.equals(1, #list)
    assert.equals(second.uuid, list[1].uuid)
    list = assert(client:list_transfers { table_name = "posts", limit = 1, offset = 1 })
    assert.equals(t.uuid, list[1].uuid)
    assert.equals(0, #assert(client:list_transfers { table_name = "posts", limit = 1, offset = 2 }))
    assert.has_error(function() client:create_transfer { direction = "receive", table_name = "x", bogus = 1 } end)
  end)

  it("reports a missing or unreachable database as an error value", function()
    local c = pksync.new {}
    local ok, err = c:migrate()
    assert.is_nil(ok)
    assert.equals("no_database", err)
    c = pksync.new { db = helper.conninfo("no_such_db_at_all") }
    ok, err = c:list_connections()
    assert.is_nil(ok)
    assert.equals("database_unavailable", err)
  end)
end)
