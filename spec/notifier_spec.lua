-- The client side of the protocol against a scripted peer in real nginx.
local helper = require "helper"
local cjson = require "cjson"
local pksync = require "pksync"

local API = "/phoenix_kit/sync/api/"
local HASH = ("ab"):rep(32)

describe("pksync notifier", function()
  local peer, client, conn

  lazy_setup(function()
    peer = helper.start_peer()
    client = pksync.new { site_url = "https://me.example", timeout = 2000, connect_timeout = 1000 }
    conn = { direction = "sender", site_url = peer.url .. "/", name = "Staging",
             uuid = "00000000-0000-0000-0000-000000000001", auth_token_hash = HASH }
  end)

  lazy_teardown(function()
    client:close()
    if peer then peer.stop() end
  end)

  before_each(function() peer.reset() end)

  local function last_request()
    local reqs = peer.requests()
    assert.is_true(#reqs >= 1, "the peer received no request")
    local r = reqs[#reqs]
    r.json = r.body ~= "" and cjson.decode(r.body) or nil
    return r
  end

  local function assert_protocol_headers(r)
    assert.equals("application/json", r.headers["content-type"])
    assert.equals("application/json", r.headers["accept"])
    assert.matches("^PhoenixKit%-Sync/1%.0", r.headers["user-agent"])
  end

  describe("notify_remote_site", function()
    local path = API .. "register-connection"

    it("sends the registration and maps 200 to registered", function()
      peer.scenario(path, { status = 200, body = { success = true, message = "Connection registered and activated",
        connection_status = "active", connection_uuid = "u-1" } })
      local res = client:notify_remote_site(conn, "raw-token-xyz", { password = "pw" })
      assert.same({ success = true, status = "registered", message = "Connection registered and activated",
        remote_connection_uuid = "u-1", http_status = 200 }, res)
      local r = last_request()
      assert.equals("POST", r.method)
      assert.equals(path, r.path)
      assert_protocol_headers(r)
      assert.same({ sender_url = "https://me.example", connection_name = "Staging",
        auth_token = "raw-token-xyz", password = "pw" }, r.json)
    end)

    it("omits the password when none is given and reports pending", function()
      peer.scenario(path, { status = 200, body = { success = true, connection_status = "pending", connection_id = 7 } })
      local res = client:notify_remote_site(conn, "tok")
      assert.equals("pending", res.status)
      assert.equals("7", res.remote_connection_uuid)
      assert.equals("Connection registered", res.message)
      assert.is_nil(last_request().json.password)
    end)

    local failures = {
      { 401, { success = false, error = "Invalid password" }, "Invalid password" },
      { 401, nil, "Password required or invalid" },
      { 403, { success = false, error = "Incoming connections are not allowed" }, "Incoming connections are not allowed" },
      { 409, { success = false, error = "Connection already exists for this site" }, "Connection already exists for this site" },
      { 400, { success = false, error = "Missing required fields", fields = { "auth_token" } }, "Missing required fields" },
      { 500, { success = false, error = "Failed to create connection" }, "Failed to create connection" },
      { 503, nil, "DB Sync module disabled on remote site" },
      { 418, nil, "HTTP error 418" },
    }
    for _, case in ipairs(failures) do
      it(("maps HTTP %d to failed (%s)"):format(case[1], case[3]), function()
        if case[2] then peer.scenario(path, { status = case[1], body = case[2] })
        else peer.scenario(path, { status = case[1], raw = "<html>oops</html>" }) end
        local res = client:notify_remote_site(conn, "tok")
        assert.same({ success = false, status = "failed", http_status = case[1], message = case[3], error = case[3] }, res)
      end)
    end

    it("maps a 200 that is not JSON to failed", function()
      peer.scenario(path, { status = 200, raw = "<html>hello</html>" })
      local res = client:notify_remote_site(conn, "tok")
      assert.equals("failed", res.status)
      assert.equals("Invalid JSON response", res.error)
    end)

    it("maps success=false in a 200 to failed with the peer's text", function()
      peer.scenario(path, { status = 200, body = { success = false, error = "nope" } })
      local res = client:notify_remote_site(conn, "tok")
      assert.same({ success = false, status = "failed", http_status = 200, message = "nope", error = "nope" }, res)
    end)

    it("skips receiver connections without a request", function()
      local res = client:notify_remote_site({ direction = "receiver", site_url = peer.url }, "tok")
      assert.is_true(res.success)
      assert.equals("skipped", res.status)
      assert.equals(0, #peer.requests())
    end)

    it("reports an unreachable peer as failed", function()
      local res = client:notify_remote_site({ direction = "sender", site_url = "http://127.0.0.1:" .. helper.free_port(),
        name = "x" }, "tok")
      assert.is_false(res.success)
      assert.equals("failed", res.status)
      assert.equals("Failed to contact remote site", res.message)
      assert.is_nil(res.http_status)
    end)

    it("raises on misuse", function()
      assert.has_error(function() client:notify_remote_site(nil, "tok") end)
      assert.has_error(function() client:notify_remote_site(conn, nil) end)
    end)
  end)

  describe("check_remote_status", function()
    it("reads the status and the pksync extension block", function()
      peer.scenario(API .. "status", { status = 200, raw =
        '{"enabled":true,"incoming_mode":"require_password","password_required":true,' ..
        '"pksync":{"version":"0.1.0","features":["paged_pull"]}}' })
      local st = assert(client:check_remote_status(peer.url))
      assert.is_true(st.enabled)
      assert.equals("require_password", st.incoming_mode)
      assert.is_true(st.password_required)
      assert.same({ "paged_pull" }, st.pksync.features)
      local r = last_request()
      assert.equals("GET", r.method)
      assert.equals(API .. "status", r.path)
    end)

    it("maps other statuses, bad bodies and unreachable peers", function()
      peer.scenario(API .. "status", { status = 500, raw = "boom" })
      local st, err, detail = client:check_remote_status(peer.url)
      assert.is_nil(st)
      assert.equals("unexpected_response", err)
      assert.equals(500, detail.http_status)
      peer.scenario(API .. "status", { status = 200, raw = "not json" })
      st, err = client:check_remote_status(peer.url)
      assert.equals("invalid_response", err)
      peer.scenario(API .. "status", { status = 200, raw = "[1,2]" })
      st, err = client:check_remote_status(peer.url)
      assert.equals("invalid_response", err)
      st, err = client:check_remote_status("http://127.0.0.1:" .. helper.free_port())
      assert.equals("offline", err)
    end)

    it("uses a custom prefix", function()
      peer.scenario("/admin/sync/api/status", { status = 200, body = { enabled = false, incoming_mode = "deny_all",
        password_required = false } })
      local st = assert(client:check_remote_status(peer.url, { prefix = "admin/" }))
      assert.is_false(st.enabled)
      assert.equals("deny_all", st.incoming_mode)
    end)
  end)

  -- delete / update-status / verify share one mapping
  local lifecycle = {
    { name = "notify_delete", endpoint = "delete-connection", ok = "deleted",
      call = function(c, cn, o) return c:notify_delete(cn, o) end, extra = {} },
    { name = "notify_status_change", endpoint = "update-status", ok = "updated",
      call = function(c, cn, o) return c:notify_status_change(cn, "suspended", o) end, extra = { status = "suspended" } },
    { name = "verify_connection", endpoint = "verify-connection", ok = "exists",
      call = function(c, cn, o) return c:verify_connection(cn, o) end, extra = {} },
  }
  for _, m in ipairs(lifecycle) do
    describe(m.name, function()
      local path = API .. m.endpoint

      it("sends sender_url and the hash, maps 200 and 204", function()
        peer.scenario(path, { status = 200, body = { success = true } })
        assert.equals(m.ok, m.call(client, conn))
        local r = last_request()
        assert.equals(path, r.path)
        assert_protocol_headers(r)
        local want = { sender_url = "https://me.example", auth_token_hash = HASH }
        for k, v in pairs(m.extra) do want[k] = v end
        assert.same(want, r.json)
        peer.scenario(path, { status = 204, raw = "" })
        assert.equals(m.ok, m.call(client, conn))
      end)

      it("maps 404 to not_found", function()
        peer.scenario(path, { status = 404, body = { success = false, error = "Connection not found" } })
        assert.equals("not_found", m.call(client, conn))
      end)

      for _, status in ipairs { 400, 401, 403, 409, 500, 503 } do
        it("maps HTTP " .. status .. " to unexpected_response", function()
          peer.scenario(path, { status = status, body = { success = false, error = "e" .. status } })
          local v, err, detail = m.call(client, conn)
          assert.is_nil(v)
          assert.equals("unexpected_response", err)
          assert.equals(status, detail.http_status)
          assert.equals("e" .. status, detail.message)
        end)
      end

      it("maps an unreachable peer to offline", function()
        local far = { site_url = "http://127.0.0.1:" .. helper.free_port(), auth_token_hash = HASH }
        assert.equals("offline", m.call(client, far))
        assert.equals("offline", m.call(client, { site_url = "https://pksync-no-such-host.invalid", auth_token_hash = HASH }))
      end)

      it("maps a response slower than the timeout to offline", function()
        peer.scenario(path, { status = 200, delay = 1.5, body = { success = true } })
        assert.equals("offline", m.call(client, conn, { timeout = 300 }))
      end)

      it("reports a body cut mid-way as a transport error", function()
        peer.scenario(path, { status = 200, body = { success = true, pad = ("x"):rep(4000) }, mode = "close_mid_body" })
        local v, err = m.call(client, conn)
        assert.is_nil(v)
        assert.is_string(err)
        assert.are_not.equal("offline", err)
      end)

      it("refuses connections without credentials, before any request", function()
        local v, err = m.call(client, { site_url = peer.url })
        assert.is_nil(v)
        assert.equals("missing_connection_info", err)
        assert.equals(0, #peer.requests())
      end)
    end)
  end

  it("refuses an invalid new status before any request", function()
    assert.has_error(function() client:notify_status_change(conn, "pending") end)
    assert.has_error(function() client:notify_status_change(conn, "expired") end)
    assert.equals(0, #peer.requests())
  end)

  describe("query_sender_status", function()
    local path = API .. "get-connection-status"
    local rconn = { direction = "receiver", site_url = peer and peer.url, auth_token_hash = HASH }

    before_each(function() rconn.site_url = peer.url end)

    it("sends receiver_url and returns the status", function()
      peer.scenario(path, { status = 200, body = { success = true, status = "active", name = "Prod" } })
      assert.equals("active", client:query_sender_status(rconn))
      assert.same({ receiver_url = "https://me.example", auth_token_hash = HASH }, last_request().json)
    end)

    it("maps 404, success=false, other statuses and bad bodies", function()
      peer.scenario(path, { status = 404, body = { success = false, error = "Connection not found" } })
      assert.equals("not_found", client:query_sender_status(rconn))
      peer.scenario(path, { status = 200, body = { success = false } })
      assert.equals("not_found", client:query_sender_status(rconn))
      peer.scenario(path, { status = 200, body = { success = true } })
      local v, err = client:query_sender_status(rconn)
      assert.is_nil(v)
      assert.equals("invalid_response", err)
      peer.scenario(path, { status = 200, raw = "{truncated" })
      v, err = client:query_sender_status(rconn)
      assert.equals("invalid_response", err)
      for _, status in ipairs { 400, 401, 403, 500, 503 } do
        peer.scenario(path, { status = status, body = { success = false, error = "x" } })
        v, err = client:query_sender_status(rconn)
        assert.equals("unexpected_response", err)
      end
      assert.equals("offline", client:query_sender_status({ site_url = "http://127.0.0.1:" .. helper.free_port(),
        auth_token_hash = HASH }))
    end)
  end)

  describe("data endpoints", function()
    it("fetch_sender_tables returns exact numbers and maps errors", function()
      local path = API .. "list-tables"
      peer.scenario(path, { status = 200, raw = '{"success":true,"tables":[' ..
        '{"name":"posts","row_count":9007199254740993,"size_bytes":16384,"checksum":"abc","depends_on":["users"]},' ..
        '{"name":"users","row_count":0,"size_bytes":8192,"checksum":"empty","depends_on":[]},' ..
        '{"name":"big","row_count":20000,"size_bytes":1,"checksum":null}]}' })
      local tables = assert(client:fetch_sender_tables(conn))
      assert.equals(3, #tables)
      assert.equals("posts", tables[1].name)
      assert.equals("9007199254740993", tostring(tables[1].row_count):gsub("%.0$", ""))
      if math.type then assert.equals(9007199254740993, tables[1].row_count) end
      assert.same({ "users" }, tables[1].depends_on)
      assert.equals(pksync.null, tables[3].checksum)
      assert.same({}, tables[3].depends_on)
      local r = last_request()
      assert.same({ auth_token_hash = HASH }, r.json)
      assert_protocol_headers(r)

      local cases = {
        { 401, "Invalid connection", "unauthorized" },
        { 403, "Connection is not active", "forbidden" },
        { 404, "Not found", "not_found" },
        { 429, "Rate limit exceeded", "rate_limited" },
        { 503, "DB Sync module is disabled", "disabled" },
        { 500, "Failed", "unexpected_response" },
        { 409, "?", "unexpected_response" },
      }
      for _, c in ipairs(cases) do
        peer.scenario(path, { status = c[1], body = { success = false, error = c[2] } })
        local v, err, detail = client:fetch_sender_tables(conn)
        assert.is_nil(v)
        assert.equals(c[3], err)
        assert.equals(c[1], detail.http_status)
        assert.equals(c[2], detail.message)
      end
      peer.scenario(path, { status = 200, body = { success = false, error = "peer says no" } })
      local v, err = client:fetch_sender_tables(conn)
      assert.is_nil(v)
      assert.equals("peer says no", err)
      peer.scenario(path, { status = 200, body = { success = true, tables = "nope" } })
      v, err = client:fetch_sender_tables(conn)
      assert.equals("invalid_response", err)
      peer.scenario(path, { status = 200, body = { success = true, tables = { { row_count = 1 } } } })
      v, err = client:fetch_sender_tables(conn)
      assert.equals("invalid_response", err)
      peer.scenario(path, { status = 200, raw = "<!doctype html>" })
      v, err = client:fetch_sender_tables(conn)
      assert.equals("invalid_response", err)
      v, err = client:fetch_sender_tables({ site_url = "http://127.0.0.1:" .. helper.free_port(), auth_token_hash = HASH })
      assert.equals("offline", err)
    end)

    it("fetch_table_schema returns the schema and maps 404 to table_not_found", function()
      local path = API .. "table-schema"
      peer.scenario(path, { status = 200, body = { success = true, schema = { table_name = "posts", columns = {
        { column_name = "id", data_type = "bigint", is_nullable = "NO", column_default = cjson.null,
          character_maximum_length = cjson.null } } } } })
      local schema = assert(client:fetch_table_schema(conn, "posts"))
      assert.equals("posts", schema.table_name)
      assert.equals("id", schema.columns[1].column_name)
      assert.equals(pksync.null, schema.columns[1].column_default)
      assert.same({ auth_token_hash = HASH, table_name = "posts" }, last_request().json)
      peer.scenario(path, { status = 404, body = { success = false, error = "Table not found" } })
      local v, err = client:fetch_table_schema(conn, "posts")
      assert.is_nil(v)
      assert.equals("table_not_found", err)
      peer.scenario(path, { status = 400, body = { success = false, error = "Missing required fields: table_name" } })
      v, err = client:fetch_table_schema(conn, "posts")
      assert.equals("unexpected_response", err)
      peer.scenario(path, { status = 200, body = { success = true, schema = { columns = "x" } } })
      v, err = client:fetch_table_schema(conn, "posts")
      assert.equals("invalid_response", err)
      -- a name that is no identifier is data: not found there, and not asked for
      local asked = #peer.requests()
      for _, call in ipairs { "fetch_table_schema", "fetch_table_records", "fetch_pull_page" } do
        v, err = client[call](client, conn, "posts; DROP TABLE x")
        assert.is_nil(v)
        assert.equals("table_not_found", err, call)
      end
      assert.equals(asked, #peer.requests())
      assert.has_error(function() client:fetch_table_schema(conn, nil) end)
      assert.has_error(function() client:fetch_table_records(conn, 42) end)
    end)

    it("fetch_table_records sends limit, offset and filters and keeps values exact", function()
      local path = API .. "table-records"
      peer.scenario(path, { status = 200, raw = '{"success":true,"records":[' ..
        '{"id":9223372036854775807,"price":"12.50","ratio":0.10000000149011612,"note":null,"tags":[]}]}' })
      local recs = assert(client:fetch_table_records(conn, "posts", { limit = 5, offset = 10 }))
      assert.equals(1, #recs)
      assert.equals("9223372036854775807", tostring(recs[1].id))
      assert.equals("12.50", recs[1].price)
      assert.equals(0.10000000149011612, recs[1].ratio)
      assert.equals(pksync.null, recs[1].note)
      assert.equals("[]", pksync.json.encode(recs[1].tags))
      assert.same({ auth_token_hash = HASH, table_name = "posts", limit = 5, offset = 10 }, last_request().json)

      assert(client:fetch_table_records(conn, "posts", { ids = { 1, 2, 3 } }))
      local r = last_request().json
      assert.same({ 1, 2, 3 }, r.ids)
      assert.equals(10, r.limit)
      assert.equals(0, r.offset)
      assert(client:fetch_table_records(conn, "posts", { id_range = { 5, 9 } }))
      r = last_request().json
      assert.equals(5, r.id_start)
      assert.equals(9, r.id_end)

      peer.reset()
      local v, err = client:fetch_table_records(conn, "posts", { ids = {} })
      assert.is_nil(v)
      assert.equals("invalid_filter", err)
      v, err = client:fetch_table_records(conn, "posts", { ids = { 1.5 } })
      assert.equals("invalid_filter", err)
      assert.equals(0, #peer.requests())

      peer.scenario(path, { status = 404, body = { success = false, error = "Table not found" } })
      v, err = client:fetch_table_records(conn, "posts")
      assert.equals("table_not_found", err)
      peer.scenario(path, { status = 400, body = { success = false, error = "Filter needs a single-column primary key",
        error_code = "filter_needs_single_key" } })
      v, err = client:fetch_table_records(conn, "posts", { ids = { 1 } })
      assert.equals("filter_needs_single_key", err)
      peer.scenario(path, { status = 200, raw = '{"success":true,"records":[1,2' })
      v, err = client:fetch_table_records(conn, "posts")
      assert.equals("invalid_response", err)
    end)

    it("refuses connections without credentials", function()
      local v, err = client:fetch_sender_tables({ site_url = peer.url })
      assert.is_nil(v)
      assert.equals("missing_connection_info", err)
    end)
  end)

  it("never sends a token or hash over plain http outside loopback (require_tls)", function()
    local far = { direction = "sender", site_url = "http://sync.example.invalid", name = "x", auth_token_hash = HASH }
    local v, err, detail = client:verify_connection(far)
    assert.is_nil(v)
    assert.equals("insecure_transport", err)
    assert.matches("plain http", detail.message)
    assert.equals("insecure_transport", select(2, client:fetch_sender_tables(far)))
    assert.equals("insecure_transport", select(2, client:query_sender_status(far)))
    local reg = client:notify_remote_site(far, "tok")
    assert.equals("failed", reg.status)
    assert.equals("insecure_transport", reg.error)
    assert.equals("insecure_transport", select(2, client:pull_table_data(far, "items")))
    -- GET status carries no credential; loopback and https are fine
    assert.equals("offline", select(2, client:check_remote_status("http://sync.example.invalid")))
    assert.equals("offline", client:verify_connection { site_url = "http://127.0.0.1:" .. helper.free_port(),
      auth_token_hash = HASH })
    assert.equals("offline", client:verify_connection { site_url = "http://localhost:" .. helper.free_port(),
      auth_token_hash = HASH })
    assert.equals("offline", client:verify_connection { site_url = "https://sync.example.invalid",
      auth_token_hash = HASH })
    local relaxed = pksync.new { site_url = "https://me.example", require_tls = false }
    assert.equals("offline", relaxed:verify_connection(far))
    relaxed:close()
  end)

  it("never logs raw tokens or full hashes", function()
    local lines = {}
    local logged = pksync.new { site_url = "https://me.example", logger = function(_, msg) lines[#lines + 1] = msg end }
    peer.scenario(API .. "register-connection", { status = 200, body = { success = true } })
    logged:notify_remote_site(conn, "SECRET-RAW-TOKEN-123")
    logged:notify_delete(conn)
    logged:close()
    local all = table.concat(lines, "\n")
    assert.is_true(#lines > 0)
    assert.is_nil(all:find("SECRET-RAW-TOKEN-123", 1, true))
    assert.is_nil(all:find(HASH, 1, true))
  end)
end)
