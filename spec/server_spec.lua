-- client:handle, endpoint by endpoint, against a real PostgreSQL store.
local helper = require "helper"
local pksync = require "pksync"

local json = pksync.json
local API = "/phoenix_kit/sync/api/"

local SCHEMA = [[
CREATE TABLE users (id bigint PRIMARY KEY, email text UNIQUE NOT NULL, name text, password_hash text);
CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id), title text, body text);
CREATE TABLE tags (a int, b text, note text, PRIMARY KEY (a, b));
CREATE TABLE nopk (x int, y text);
CREATE TABLE secrets (id int PRIMARY KEY, v text);
CREATE TABLE big (id int PRIMARY KEY);
CREATE TABLE empty_one (id int PRIMARY KEY);
CREATE TABLE uuids (id uuid PRIMARY KEY, v text);
INSERT INTO users SELECT g, 'u' || g || '@example.com', 'User ' || g, 'hash' || g FROM generate_series(1, 30) g;
INSERT INTO posts SELECT g, 1 + g % 30, 'Post ' || g, repeat('x', g) FROM generate_series(1, 45) g;
INSERT INTO tags SELECT g / 3, 'tag' || (g % 3), 'n' FROM generate_series(0, 20) g;
INSERT INTO nopk SELECT g, 'row ' || g FROM generate_series(1, 23) g;
INSERT INTO secrets VALUES (1, 'top secret');
INSERT INTO big SELECT generate_series(1, 10001);
INSERT INTO uuids VALUES ('ff000000-0000-0000-0000-00000000000a', 'a'), ('ff000000-0000-0000-0000-00000000000b', 'b');
]]

describe("pksync server (client:handle)", function()
  local dbname, conninfo, site, conn, logs

  local function sql(q) return helper.psql(dbname, q) end

  local function request(method, endpoint, body, extra)
    extra = extra or {}
    local raw = type(body) == "string" and body or (body and json.encode(body)) or ""
    local res = site:handle { method = method, path = extra.path or (API .. endpoint), body = raw,
      headers = extra.headers or { ["user-agent"] = "spec-agent" }, remote_addr = extra.remote_addr or "127.0.0.1" }
    return res.status, json.decode(res.body), res
  end
  local function post(endpoint, body, extra) return request("POST", endpoint, body, extra) end

  local function new_sender(attrs)
    attrs = attrs or {}
    attrs.name = attrs.name or "to-b"
    attrs.direction = "sender"
    attrs.site_url = attrs.site_url or ("https://" .. helper.unique("b") .. ".example")
    attrs.notify = false
    attrs.status = attrs.status or "active"
    local c = assert(site:create_connection(attrs))
    return c
  end

  lazy_setup(function()
    dbname, conninfo = helper.create_database("server")
    sql(SCHEMA)
    logs = {}
    site = pksync.new { db = conninfo, site_url = "https://a.example",
      logger = function(level, msg) logs[#logs + 1] = level .. " " .. msg end }
    assert(site:migrate())
    assert(site:set_settings { enabled = true, incoming_mode = "auto_accept" })
    conn = new_sender { rate_limit_requests_per_minute = 1000000 }
  end)

  lazy_teardown(function()
    site:close()
    helper.drop_database(dbname)
  end)

  describe("routing and bodies", function()
    it("answers GET status with the pksync extension block", function()
      local status, body, res = request("GET", "status")
      assert.equals(200, status)
      assert.equals("application/json; charset=utf-8", res.headers["content-type"])
      assert.same({ enabled = true, incoming_mode = "auto_accept", password_required = false,
        pksync = { version = pksync._VERSION, features = { "paged_pull", "uuid_text", "row_filters", "table_digest" } } }, body)
    end)

    it("answers status even when disabled, and 503 elsewhere", function()
      assert(site:set_settings { enabled = false })
      local status, body = request("GET", "status")
      assert.equals(200, status)
      assert.is_false(body.enabled)
      for _, ep in ipairs { "register-connection", "delete-connection", "update-status", "verify-connection",
                            "get-connection-status", "list-tables", "table-schema", "table-records", "pull-data",
                            "table-digest" } do
        local s, b = post(ep, {})
        assert.equals(503, s, ep)
        assert.same({ success = false, error = "DB Sync module is disabled" }, b)
      end
      assert(site:set_settings { enabled = true })
    end)

    it("gives 404 for unknown paths and 405 for wrong methods", function()
      assert.equals(404, (post("no-such-endpoint", {})))
      assert.equals(404, (post(nil, {}, { path = "/other/sync/api/status" })))
      assert.equals(404, (post(nil, {}, { path = "/phoenix_kit/sync/api/" })))
      local status, _, res = post("status", {})
      assert.equals(405, status)
      assert.equals("GET", res.headers.allow)
      status, _, res = request("GET", "list-tables")
      assert.equals(405, status)
      assert.equals("POST", res.headers.allow)
      assert.equals(200, (request("GET", nil, nil, { path = API .. "status?x=1" })))
    end)

    it("refuses bodies over the cap, bodies that are not a JSON object, and hostile JSON", function()
      local small = pksync.new { db = conninfo, max_request_body = 1000 }
      local res = small:handle { method = "POST", path = API .. "list-tables", body = ("x"):rep(1001) }
      small:close()
      assert.equals(413, res.status)
      for _, bad in ipairs { "", "not json", "[1,2]", '"str"', "42", '{"a":', ("["):rep(5000),
                             '{"auth_token_hash": "\255"}', '{"a":1} trailing' } do
        local status, body = post("list-tables", bad)
        assert.equals(400, status, bad:sub(1, 20))
        assert.equals("Request body must be a JSON object", body.error)
      end
    end)

    it("turns a crashing handler into a 500 without details, and raises on misuse", function()
      local broken = pksync.new { db = conninfo, policy = { table_allowed = function() error("boom") end } }
      assert.has_error(function() broken:handle() end)
      assert.has_error(function() broken:handle { method = "GET" } end)
      broken:close()
    end)
  end)

  describe("register-connection", function()
    local function register(body, extra)
      return post("register-connection", body, extra)
    end

    it("creates an active receiver connection with PhoenixKit's name and metadata", function()
      local status, body = register({ sender_url = "https://sender1.example", connection_name = "Shop",
        auth_token = "raw-1" }, { remote_addr = "10.1.2.3", headers = { ["user-agent"] = "PhoenixKit-Sync/1.0" } })
      assert.equals(200, status)
      assert.is_true(body.success)
      assert.equals("active", body.connection_status)
      assert.equals("Connection registered and activated", body.message)
      local c = assert(site:get_connection(body.connection_uuid))
      assert.equals("From: Shop", c.name)
      assert.equals("receiver", c.direction)
      assert.equals("https://sender1.example", c.site_url)
      assert.equals(pksync.token.hash("raw-1"), c.auth_token_hash)
      assert.equals("api", c.metadata.registered_via)
      assert.equals("10.1.2.3", c.metadata.remote_ip)
      assert.equals("PhoenixKit-Sync/1.0", c.metadata.user_agent)
      assert.is_string(c.metadata.registered_at)
    end)

    it("answers 409 for a second receiver from the same site", function()
      local status, body = register { sender_url = "https://sender1.example", connection_name = "Again", auth_token = "x" }
      assert.equals(409, status)
      assert.same({ success = false, error = "Connection already exists for this site" }, body)
    end)

    it("checks deny_all before the fields, then the fields in declared order", function()
      assert(site:set_settings { incoming_mode = "deny_all" })
      local status, body = register {}
      assert.equals(403, status)
      assert.equals("Incoming connections are not allowed", body.error)
      assert(site:set_settings { incoming_mode = "auto_accept" })
      status, body = register { connection_name = "", auth_token = pksync.null }
      assert.equals(400, status)
      assert.same({ success = false, error = "Missing required fields",
        fields = { "sender_url", "connection_name", "auth_token" } }, body)
      status, body = register { sender_url = 5, connection_name = {}, auth_token = "t" }
      assert.equals(400, status)
      assert.same({ "sender_url", "connection_name" }, body.fields)
      status, body = register { sender_url = "javascript:alert(1)", connection_name = "x", auth_token = "t" }
      assert.equals(400, status)
    end)

    it("checks the incoming password in require_password mode", function()
      assert(site:set_settings { incoming_mode = "require_password", incoming_password = "" })
      -- no stored password: nobody gets in, with or without one (PhoenixKit 0.2)
      local status, body = register { sender_url = "https://nopw.example", connection_name = "n", auth_token = "t" }
      assert.equals(401, status)
      assert.equals("Password required for incoming connections", body.error)
      status = register { sender_url = "https://nopw.example", connection_name = "n", auth_token = "t",
        password = "anything" }
      assert.equals(401, status)
      assert.same({}, site:list_connections { site_url = "https://nopw.example" })
      assert(site:set_settings { incoming_password = "open sesame" })
      status, body = register { sender_url = "https://pw.example", connection_name = "n", auth_token = "t" }
      assert.equals(401, status)
      assert.equals("Password required for incoming connections", body.error)
      status, body = register { sender_url = "https://pw.example", connection_name = "n", auth_token = "t",
        password = "wrong" }
      assert.equals(401, status)
      assert.equals("Invalid password", body.error)
      status = register { sender_url = "https://pw.example", connection_name = "n", auth_token = "t",
        password = "open sesame" }
      assert.equals(200, status)
      assert(site:set_settings { incoming_mode = "auto_accept", incoming_password = "" })
    end)

    it("leaves connections pending in require_approval mode", function()
      assert(site:set_settings { incoming_mode = "require_approval" })
      local status, body = register { sender_url = "https://approve.example", connection_name = "n", auth_token = "t" }
      assert(site:set_settings { incoming_mode = "auto_accept" })
      assert.equals(200, status)
      assert.equals("pending", body.connection_status)
      assert.equals("pending", assert(site:get_connection(body.connection_uuid)).status)
    end)

    it("lets a policy refuse incoming connections with a reason", function()
      local strict = pksync.new { db = conninfo, policy = { accept_incoming = function(r)
        if r.sender_url:match("%.trusted%.example$") then return true end
        return false, "Only trusted sites may connect"
      end } }
      local res = strict:handle { method = "POST", path = API .. "register-connection", body = json.encode {
        sender_url = "https://evil.example", connection_name = "e", auth_token = "t" } }
      assert.equals(403, res.status)
      assert.equals("Only trusted sites may connect", json.decode(res.body).error)
      res = strict:handle { method = "POST", path = API .. "register-connection", body = json.encode {
        sender_url = "https://shop.trusted.example", connection_name = "e", auth_token = "t" } }
      assert.equals(200, res.status)
      strict:close()
    end)
  end)

  describe("connection endpoints", function()
    local peer_url = "https://peer-of-a.example"
    local c

    before_each(function()
      sql("DELETE FROM pksync_connections WHERE site_url = '" .. peer_url .. "'")
      c = assert(site:create_connection { name = "r", direction = "receiver", site_url = peer_url, auth_token = "tok" })
    end)

    local function creds(extra)
      local b = { sender_url = peer_url, auth_token_hash = c.auth_token_hash }
      for k, v in pairs(extra or {}) do b[k] = v end
      return b
    end

    it("verify-connection: 200 exists / 404 not", function()
      local status, body = post("verify-connection", creds())
      assert.equals(200, status)
      assert.same({ success = true, exists = true }, body)
      status, body = post("verify-connection", creds { auth_token_hash = ("0"):rep(64) })
      assert.equals(404, status)
      assert.same({ success = false, exists = false }, body)
      status, body = post("verify-connection", creds { sender_url = peer_url .. "/" })
      assert.equals(404, status)
      status, body = post("verify-connection", { sender_url = peer_url })
      assert.equals(400, status)
      assert.same({ "auth_token_hash" }, body.fields)
    end)

    it("update-status: validates the status, updates, 404s", function()
      local status, body = post("update-status", creds { status = "pending" })
      assert.equals(400, status)
      assert.equals("Invalid status value", body.error)
      status, body = post("update-status", creds { status = "suspended" })
      assert.equals(200, status)
      assert.same({ success = true, message = "Status updated to suspended" }, body)
      local now = assert(site:get_connection(c.uuid))
      assert.equals("suspended", now.status)
      assert.is_string(now.suspended_at)
      status = post("update-status", creds { status = "active" })
      assert.equals(200, status)
      assert.equals("active", assert(site:get_connection(c.uuid)).status)
      status, body = post("update-status", creds { status = "revoked", auth_token_hash = ("1"):rep(64) })
      assert.equals(404, status)
      assert.equals("Connection not found", body.error)
      status, body = post("update-status", { status = "active" })
      assert.same({ "sender_url", "auth_token_hash" }, body.fields)
    end)

    it("delete-connection: deletes, then 404", function()
      local status, body = post("delete-connection", creds())
      assert.equals(200, status)
      assert.same({ success = true, message = "Connection deleted" }, body)
      assert.equals("not_found", select(2, site:get_connection(c.uuid)))
      status, body = post("delete-connection", creds())
      assert.equals(404, status)
      assert.same({ success = false, error = "Connection not found" }, body)
    end)

    it("get-connection-status: activates a pending sender, 404 otherwise", function()
      local pending = new_sender { status = "pending", name = "pend" }
      local status, body = post("get-connection-status", { receiver_url = "https://x.example",
        auth_token_hash = pending.auth_token_hash })
      assert.equals(200, status)
      assert.same({ success = true, status = "active", name = "pend" }, body)
      local now = assert(site:get_connection(pending.uuid))
      assert.equals("active", now.status)
      assert.is_true(now.metadata.auto_activated)
      -- a receiver's hash is not a sender connection
      status = post("get-connection-status", { receiver_url = "x", auth_token_hash = c.auth_token_hash })
      assert.equals(404, status)
      status, body = post("get-connection-status", { auth_token_hash = c.auth_token_hash })
      assert.equals(400, status)
      assert.same({ "receiver_url" }, body.fields)
    end)
  end)

  describe("data endpoints", function()
    local function data(ep, extra, who)
      local b = { auth_token_hash = (who or conn).auth_token_hash }
      for k, v in pairs(extra or {}) do b[k] = v end
      return post(ep, b)
    end

    it("authenticate: missing fields, unknown hash, inactive connection", function()
      local status, body = post("list-tables", {})
      assert.equals(400, status)
      assert.same({ "auth_token_hash" }, body.fields)
      status, body = post("table-schema", { auth_token_hash = conn.auth_token_hash })
      assert.equals(400, status)
      assert.same({ success = false, error = "Missing required fields: table_name" }, body)
      status, body = post("table-records", {})
      assert.equals("Missing required fields: auth_token_hash, table_name", body.error)
      status, body = post("pull-data", {})
      assert.same({ "auth_token_hash", "table_name" }, body.fields)
      for _, ep in ipairs { "list-tables", "table-schema", "table-records", "pull-data", "table-digest" } do
        status, body = post(ep, { auth_token_hash = ("9"):rep(64), table_name = "users" })
        assert.equals(401, status, ep)
        assert.same({ success = false, error = "Invalid connection" }, body)
      end
      local suspended = new_sender { status = "suspended" }
      status, body = data("list-tables", nil, suspended)
      assert.equals(403, status)
      assert.equals("Connection is not active", body.error)
      status = post("list-tables", { auth_token_hash = 12345 })
      assert.equals(400, status)
    end)

    it("list-tables: rows, sizes, checksums and dependencies, never the store", function()
      local status, body = data("list-tables")
      assert.equals(200, status)
      local by = {}
      for _, t in ipairs(body.tables) do by[t.name] = t end
      assert.is_nil(by.pksync_connections)
      assert.is_nil(by.pksync_transfers)
      assert.is_nil(by.pksync_settings)
      assert.equals(30, by.users.row_count)
      assert.equals(sql("SELECT pg_total_relation_size('users')"), tostring(by.users.size_bytes))
      assert.equals(sql("SELECT md5(string_agg(t::text, '' ORDER BY t::text)) FROM users t"), by.users.checksum)
      assert.equals("empty", by.empty_one.checksum)
      assert.equals(pksync.null, by.big.checksum)
      assert.same({ "users" }, by.posts.depends_on)
      assert.same({}, by.users.depends_on)
      local names = {}
      for _, t in ipairs(body.tables) do names[#names + 1] = t.name end
      assert.same({ "big", "empty_one", "nopk", "posts", "secrets", "tags", "users", "uuids" }, names)
      assert.is_string(assert(site:get_connection(conn.uuid)).last_connected_at)
    end)

    it("apply allowed_tables, excluded_tables and the policy", function()
      local limited = new_sender { allowed_tables = { "users", "posts", "secrets" }, excluded_tables = { "secrets" } }
      local _, body = data("list-tables", nil, limited)
      local names = {}
      for _, t in ipairs(body.tables) do names[#names + 1] = t.name end
      assert.same({ "posts", "users" }, names)
      for _, ep in ipairs { "table-schema", "table-records", "pull-data" } do
        local status, b = data(ep, { table_name = "secrets" }, limited)
        assert.equals(403, status, ep)
        assert.equals("This connection is not authorised to access that table", b.error)
        status = data(ep, { table_name = "tags" }, limited)
        assert.equals(403, status, ep)
      end
      local policed = pksync.new { db = conninfo, policy = { table_allowed = function(_, t) return t ~= "users" end } }
      local res = policed:handle { method = "POST", path = API .. "pull-data",
        body = json.encode { auth_token_hash = conn.auth_token_hash, table_name = "users" } }
      assert.equals(403, res.status)
      policed:close()
    end)

    it("answer 404 for unknown, store-owned and SQL-looking tables", function()
      for _, name in ipairs { "no_such", "pksync_connections", "users; DROP TABLE users", "users\"--", ("a"):rep(64),
                              "pg_class", "1users" } do
        for _, ep in ipairs { "table-schema", "table-records", "pull-data" } do
          local status, body = data(ep, { table_name = name })
          assert.equals(404, status, ep .. " " .. name)
          assert.equals("Table not found", body.error)
        end
      end
      assert.equals("30", sql("SELECT count(*) FROM users"))
    end)

    it("table-schema: columns in order with the primary key, redacted columns hidden", function()
      local status, body = data("table-schema", { table_name = "users" })
      assert.equals(200, status)
      local s = body.schema
      assert.equals("users", s.table_name)
      assert.same({ "id" }, s.primary_key)
      assert.same({ column_name = "id", data_type = "bigint", is_nullable = "NO", column_default = pksync.null,
        character_maximum_length = pksync.null }, s.columns[1])
      local names = {}
      for _, c in ipairs(s.columns) do names[#names + 1] = c.column_name end
      assert.same({ "id", "email", "name", "password_hash" }, names)
      local _, tb = data("table-schema", { table_name = "tags" })
      assert.same({ "a", "b" }, tb.schema.primary_key)
      local redacting = pksync.new { db = conninfo, policy = { redact = function(_, t)
        if t == "users" then return { "password_hash" } end end } }
      local res = redacting:handle { method = "POST", path = API .. "table-schema",
        body = json.encode { auth_token_hash = conn.auth_token_hash, table_name = "users" } }
      local cols = {}
      for _, c in ipairs(json.decode(res.body).schema.columns) do cols[#cols + 1] = c.column_name end
      assert.same({ "id", "email", "name" }, cols)
      res = redacting:handle { method = "POST", path = API .. "pull-data",
        body = json.encode { auth_token_hash = conn.auth_token_hash, table_name = "users" } }
      assert.is_nil(res.body:find("password_hash", 1, true))
      assert.is_nil(res.body:find("hash1", 1, true))
      redacting:close()
    end)

    it("table-records: limit clamped to 1..100, offset, key order, filters", function()
      local _, body = data("table-records", { table_name = "posts" })
      assert.equals(10, #body.records)
      assert.equals(1, body.records[1].id)
      _, body = data("table-records", { table_name = "posts", limit = 1000 })
      assert.equals(45, #body.records) -- capped at 100, table has 45
      _, body = data("table-records", { table_name = "big", limit = 1000 })
      assert.equals(100, #body.records)
      _, body = data("table-records", { table_name = "posts", limit = 0 })
      assert.equals(1, #body.records)
      _, body = data("table-records", { table_name = "posts", limit = "5", offset = 40 })
      assert.equals(5, #body.records)
      assert.equals(41, body.records[1].id)
      _, body = data("table-records", { table_name = "posts", limit = "junk" })
      assert.equals(10, #body.records)
      _, body = data("table-records", { table_name = "posts", ids = { 7, 3, 99 } })
      assert.equals(2, #body.records)
      assert.equals(3, body.records[1].id)
      _, body = data("table-records", { table_name = "posts", id_start = 10, id_end = 12 })
      assert.same({ 10, 11, 12 }, { body.records[1].id, body.records[2].id, body.records[3].id })
      local status
      status, body = data("table-records", { table_name = "tags", ids = { 1 } })
      assert.equals(400, status)
      assert.equals("filter_needs_single_key", body.error_code)
      status, body = data("table-records", { table_name = "posts", ids = { 1 }, id_start = 2 })
      assert.equals("invalid_filter", body.error_code)
      status, body = data("table-records", { table_name = "posts", ids = { "1; DROP TABLE posts" } })
      assert.equals(400, status)
      assert.equals("invalid_filter", body.error_code)
      _, body = data("table-records", { table_name = "uuids", ids = { "ff000000-0000-0000-0000-00000000000b" },
        uuid_format = "text" })
      assert.equals("ff000000-0000-0000-0000-00000000000b", body.records[1].id)
      -- PhoenixKit's own form by default: the 16 raw bytes in the binary wrapper
      _, body = data("table-records", { table_name = "uuids", limit = 1 })
      assert.equals("\255" .. ("\0"):rep(14) .. "\10",
        require("pksync.core").base64_decode(body.records[1].id.__phoenix_kit_binary__))
      status, body = data("table-records", { table_name = "uuids", id_start = 1 })
      assert.equals("invalid_filter", body.error_code)
    end)

    local function pull_all(tbl, limit, who)
      local seen, pages, after = {}, 0, nil
      repeat
        local status, body = data("pull-data", { table_name = tbl, limit = limit, after = after }, who)
        assert.equals(200, status, body and body.error)
        pages = pages + 1
        for _, r in ipairs(body.data) do seen[#seen + 1] = r end
        after = body.next_after
        assert.equals(body.has_more, after ~= pksync.null)
      until not body.has_more
      return seen, pages
    end

    it("pull-data: PhoenixKit's single page, truncated when cut", function()
      local cut = new_sender { max_records_per_request = 20 }
      local status, body = data("pull-data", { table_name = "posts", conflict_strategy = "overwrite" }, cut)
      assert.equals(200, status)
      assert.equals("posts", body.table)
      assert.equals(20, #body.data)
      assert.is_true(body.truncated)
      assert.is_true(body.has_more)
      assert.equals(1, body.data[1].id)
      _, body = data("pull-data", { table_name = "users" })
      assert.equals(30, #body.data)
      assert.is_nil(body.truncated)
      assert.is_false(body.has_more)
      assert.equals(pksync.null, body.next_after)
      _, body = data("pull-data", { table_name = "posts", ids = { 2, 4 } })
      assert.is_true(body.filtered)
      assert.equals(2, #body.data)
    end)

    it("pull-data: paged_pull walks single, composite and keyless tables exactly once", function()
      for _, case in ipairs { { "posts", 7, 45 }, { "tags", 4, 21 }, { "nopk", 5, 23 }, { "big", 3000, 10001 } } do
        local rows, pages = pull_all(case[1], case[2])
        assert.equals(case[3], #rows, case[1])
        assert.equals(math.ceil(case[3] / case[2]), pages, case[1])
        local keys = {}
        for _, r in ipairs(rows) do
          local k = case[1] == "tags" and (r.a .. "/" .. r.b) or tostring(r.id or r.x)
          assert.is_nil(keys[k], "duplicate " .. k)
          keys[k] = true
          assert.is_nil(r.__pksync_ctid)
        end
      end
    end)

    it("pull-data: refuses forged cursors", function()
      for _, bad in ipairs { "!!", pksync.core and "x" or "x", pksync.json.encode({ k = { 1 } }),
                             require("pksync.core").base64_encode('{"k":["1","2"]}'),
                             require("pksync.core").base64_encode('{"k":[1]}') } do
        local status, body = data("pull-data", { table_name = "posts", after = bad })
        assert.equals(400, status)
        assert.equals("invalid_cursor", body.error_code)
      end
      -- a well-formed cursor with a hostile value is only ever a parameter
      local status, body = data("pull-data", { table_name = "posts",
        after = require("pksync.core").base64_encode('{"k":["1) OR (1=1"]}') })
      assert.equals(400, status)
      assert.equals("invalid_cursor", body.error_code)
      assert.equals("45", sql("SELECT count(*) FROM posts"))
    end)

    it("pull-data: counts downloads and records, and records send transfers", function()
      local counted = new_sender { name = "counted", rate_limit_requests_per_minute = 0 }
      pull_all("posts", 20, counted)
      local c = assert(site:get_connection(counted.uuid))
      assert.equals(1, c.downloads_used)
      assert.equals(45, c.records_downloaded)
      assert.equals(1, c.total_transfers)
      assert.equals(45, c.total_records_transferred)
      assert.is_true(c.total_bytes_transferred > 0)
      assert.is_string(c.last_transfer_at)
      local t = assert(site:list_transfers { connection_uuid = counted.uuid })
      assert.equals(1, #t)
      assert.equals("send", t[1].direction)
      assert.equals("completed", t[1].status)
      assert.equals(45, t[1].records_transferred)
    end)
  end)

  describe("limits", function()
    local function pull(who, extra)
      local b = { auth_token_hash = who.auth_token_hash, table_name = "users" }
      for k, v in pairs(extra or {}) do b[k] = v end
      return post("pull-data", b, { remote_addr = extra and extra.ip or "127.0.0.1" })
    end

    it("refuses expired connections", function()
      local c = new_sender { expires_at = "2000-01-01T00:00:00Z" }
      local status, body = pull(c)
      assert.equals(403, status)
      assert.equals("Connection has expired", body.error)
      c = new_sender { expires_at = "2999-01-01T00:00:00Z" }
      assert.equals(200, (pull(c)))
    end)

    it("applies the IP whitelist (addresses and IPv4 CIDR blocks)", function()
      local c = new_sender { ip_whitelist = { "10.0.0.0/8", "192.168.1.7", "::1" } }
      local status, body = post("list-tables", { auth_token_hash = c.auth_token_hash }, { remote_addr = "127.0.0.1" })
      assert.equals(403, status)
      assert.equals("IP address not allowed", body.error)
      for _, ip in ipairs { "10.200.3.4", "192.168.1.7", "::1" } do
        assert.equals(200, (post("list-tables", { auth_token_hash = c.auth_token_hash }, { remote_addr = ip })), ip)
      end
      assert.equals(403, (post("list-tables", { auth_token_hash = c.auth_token_hash }, { remote_addr = "192.168.1.8" })))
    end)

    it("applies allowed hours (UTC)", function()
      local hour = tonumber(sql("SELECT extract(hour FROM now() AT TIME ZONE 'UTC')::int"))
      local outside = new_sender { allowed_hours_start = (hour + 2) % 24, allowed_hours_end = (hour + 3) % 24 }
      local status, body = pull(outside)
      assert.equals(403, status)
      assert.equals("Access is not allowed at this hour", body.error)
      local inside = new_sender { allowed_hours_start = hour, allowed_hours_end = hour }
      assert.equals(200, (pull(inside)))
    end)

    it("rate-limits per minute with 429 and Retry-After", function()
      local c = new_sender { rate_limit_requests_per_minute = 3 }
      for _ = 1, 3 do assert.equals(200, (post("list-tables", { auth_token_hash = c.auth_token_hash }))) end
      local status, body, res = post("list-tables", { auth_token_hash = c.auth_token_hash })
      assert.equals(429, status)
      assert.equals("Rate limit exceeded", body.error)
      assert.is_truthy(tonumber(res.headers["retry-after"]))
      -- a new window starts after a minute
      sql("UPDATE pksync_connections SET rate_window_start = now() - interval '61 seconds' WHERE uuid = '" .. c.uuid .. "'")
      assert.equals(200, (post("list-tables", { auth_token_hash = c.auth_token_hash })))
    end)

    it("enforces max_downloads per pull and max_records_total", function()
      local c = new_sender { max_downloads = 2 }
      assert.equals(200, (pull(c)))
      assert.equals(200, (pull(c)))
      local status, body = pull(c)
      assert.equals(403, status)
      assert.equals("Download limit reached", body.error)
      local r = new_sender { max_records_total = 40 }
      local _, first = post("pull-data", { auth_token_hash = r.auth_token_hash, table_name = "posts", limit = 30 })
      assert.equals(30, #first.data)
      local _, second = post("pull-data", { auth_token_hash = r.auth_token_hash, table_name = "posts", limit = 30,
        after = first.next_after })
      assert.equals(10, #second.data) -- the budget caps the page
      assert.is_true(second.has_more)
      status, body = post("pull-data", { auth_token_hash = r.auth_token_hash, table_name = "posts",
        after = second.next_after })
      assert.equals(403, status)
      assert.equals("Record limit reached", body.error)
    end)
  end)

  it("never logs a token hash", function()
    local all = table.concat(logs, "\n")
    assert.is_nil(all:find(conn.auth_token_hash, 1, true))
  end)
end)
