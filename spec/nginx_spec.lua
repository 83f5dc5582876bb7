-- pksync inside real nginx (LuaJIT build, thread pool): the API over HTTP,
-- cross-checked with curl, the event loop never blocked, and two sites
-- linked end to end.
local helper = require "helper"
local pksync = require "pksync"

local json = pksync.json
local API = "/phoenix_kit/sync/api/"

--- Start nginx serving a pksync site for database `conninfo`.
local function start_site(conninfo, extra_server)
  local port = helper.free_port()
  local url = "http://127.0.0.1:" .. port
  local config = ("{ db = %q, site_url = %q, timeout = 5000 }"):format(conninfo, url)
  local srv = helper.start_nginx { name = "site", port = port, server = ([[
    location /phoenix_kit/sync/api/ {
      content_by_lua_block { require("pksync.nginx").serve(%s) }
    }
    location = /__call_status {
      content_by_lua_block {
        local st, err = require("pksync.nginx").call(%s, "check_remote_status", ngx.var.arg_url)
        ngx.say(st and require("pksync").json.encode(st) or ("error " .. tostring(err)))
      }
    }
    location = /__timer_status {
      content_by_lua_block {
        local url = ngx.var.arg_url
        ngx.timer.at(0, function()
          local st, err = require("pksync.nginx").call(%s, "check_remote_status", url)
          ngx.shared.pksync_test:set("timer_result", st and st.incoming_mode or tostring(err))
        end)
        ngx.say("scheduled")
      }
    }
    location = /__timer_result {
      content_by_lua_block { ngx.say(ngx.shared.pksync_test:get("timer_result") or "none") }
    }
%s]]):format(config, config, config, extra_server or "") }
  srv.site_url = url
  return srv
end

local function curl(args)
  local out, ok = helper.run("curl -sS -m 10 " .. args)
  assert(ok, out)
  return out
end

local function timed_get(url)
  local t0 = helper.now()
  local status, body = helper.http("GET", url)
  return status, body, helper.now() - t0
end

describe("pksync in nginx", function()
  local dbname, conninfo, site, client, conn

  lazy_setup(function()
    dbname, conninfo = helper.create_database("ngx")
    helper.psql(dbname, [[CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(10,2));
      INSERT INTO items SELECT g, 'item ' || g, g * 0.25 FROM generate_series(1, 120) g;
      CREATE TABLE slow (id int PRIMARY KEY); INSERT INTO slow VALUES (1);]])
    site = start_site(conninfo)
    client = pksync.new { db = conninfo, site_url = site.site_url }
    assert(client:migrate())
    assert(client:set_settings { enabled = true, incoming_mode = "auto_accept" })
    conn = assert(client:create_connection { name = "to-b", direction = "sender",
      site_url = "https://b.example", notify = false, status = "active" })
  end)

  lazy_teardown(function()
    if site then site.stop() end
    client:close()
    helper.drop_database(dbname)
  end)

  it("serves the API, cross-checked with curl", function()
    local status = json.decode(curl(site.url .. API .. "status"))
    assert.is_true(status.enabled)
    assert.same({ "paged_pull", "uuid_text", "row_filters", "table_digest" }, status.pksync.features)
    local out = curl(("-X POST -H 'content-type: application/json' -d '{\"auth_token_hash\":\"%s\"}' %s"):format(
      conn.auth_token_hash, site.url .. API .. "list-tables"))
    local tables = json.decode(out).tables
    assert.equals("items", tables[1].name)
    assert.equals(120, tables[1].row_count)
    out = curl(("-X POST -d '{\"auth_token_hash\":\"%s\",\"table_name\":\"items\",\"limit\":50}' %s"):format(
      conn.auth_token_hash, site.url .. API .. "pull-data"))
    local page = json.decode(out)
    assert.equals(50, #page.data)
    assert.equals("0.25", page.data[1].price)
    assert.is_true(page.has_more)
    assert.equals("405", curl("-o /dev/null -w '%{http_code}' -X PUT " .. site.url .. API .. "list-tables"))
    assert.equals("404", curl("-o /dev/null -w '%{http_code}' " .. site.url .. API .. "nothing-here"))
    local big = helper.root .. "/big-body.json"
    helper.write_file(big, '{"x":"' .. ("a"):rep(2 * 1024 * 1024) .. '"}')
    assert.equals("413", curl("-o /dev/null -w '%{http_code}' -X POST --data-binary @" .. big .. " "
      .. site.url .. API .. "list-tables"))
    assert.equals("400", curl("-o /dev/null -w '%{http_code}' -X POST -d 'not json' " .. site.url .. API .. "list-tables"))
  end)

  it("keeps answering GET status while a request waits 2 s inside PostgreSQL", function()
    local core = require "pksync.core"
    local locker = assert(core.pg_connect(conninfo))
    assert(locker:exec("BEGIN; LOCK TABLE slow IN ACCESS EXCLUSIVE MODE"))
    local out = helper.root .. "/slow-pull.out"
    os.execute(("(curl -s -m 20 -o %s -w '%%{http_code} %%{time_total}' -X POST -d '%s' %s > %s.meta) &"):format(
      out, json.encode { auth_token_hash = conn.auth_token_hash, table_name = "slow" }, site.url .. API .. "pull-data", out))
    helper.sleep(0.3)
    local worst = 0
    for _ = 1, 5 do
      local status, _, elapsed = timed_get(site.url .. API .. "status")
      assert.equals(200, status)
      if elapsed > worst then worst = elapsed end
    end
    helper.sleep(1.9)
    assert(locker:exec("COMMIT"))
    locker:close()
    local meta
    for _ = 1, 100 do
      meta = helper.read_file(out .. ".meta")
      if meta and meta ~= "" then break end
      helper.sleep(0.05)
    end
    local code, total = meta:match("^(%d+) ([%d.]+)")
    assert.equals("200", code)
    assert.is_true(tonumber(total) >= 2.0, "the pull did wait for the lock: " .. meta)
    assert.equals(1, json.decode(helper.read_file(out)).data[1].id)
    assert.is_true(worst < 0.5, ("GET status took %.3f s while PostgreSQL was busy"):format(worst))
  end)

  it("loads policy files like pksync.policy.load: a misspelt hook is refused at load", function()
    local typo = helper.root .. "/" .. helper.unique("typo") .. ".lua"
    local good = helper.root .. "/" .. helper.unique("good") .. ".lua"
    helper.write_file(typo, "return { table_alowed = function() return false end }\n")
    helper.write_file(good, "return { table_allowed = function(conn, t) return t ~= 'slow' end }\n")
    local function location(name, file)
      local config = ("{ db = %q, site_url = %q, prefix = %q, policy_file = %q }")
        :format(conninfo, site.site_url, "/" .. name .. "/phoenix_kit", file)
      return ("location /%s/phoenix_kit/sync/api/ { content_by_lua_block { require('pksync.nginx').serve(%s) } }\n")
        :format(name, config)
    end
    local srv = start_site(conninfo, location("typo", typo) .. location("good", good))
    local body = json.encode { auth_token_hash = conn.auth_token_hash }
    -- the typo would silently have switched the check off: nothing is served instead
    local status = helper.http("POST", srv.site_url .. "/typo" .. API .. "list-tables", body)
    assert.equals(500, status)
    assert.matches('unknown hook "table_alowed"', srv.error_log(), 1, true)
    local text
    status, text = helper.http("POST", srv.site_url .. "/good" .. API .. "list-tables", body)
    assert.equals(200, status)
    local names = {}
    for _, t in ipairs(json.decode(text).tables) do names[t.name] = true end
    assert.is_true(names.items)
    assert.is_nil(names.slow)
    srv.stop()
  end)

  it("runs client calls from a handler and a timer off the event loop", function()
    local peer = helper.start_peer()
    peer.scenario(API .. "status", { status = 200, delay = 2, body = { enabled = true, incoming_mode = "deny_all",
      password_required = false } })
    local probe = helper.root .. "/probe.out"
    os.execute(("(curl -s -m 20 -o %s '%s/__call_status?url=%s') &"):format(probe, site.url, peer.url))
    helper.sleep(0.3)
    local status, _, elapsed = timed_get(site.url .. API .. "status")
    assert.equals(200, status)
    assert.is_true(elapsed < 0.5, ("GET status took %.3f s during a slow client call"):format(elapsed))
    local body
    for _ = 1, 100 do
      body = helper.read_file(probe)
      if body and body ~= "" then break end
      helper.sleep(0.05)
    end
    assert.equals("deny_all", json.decode(body).incoming_mode)

    assert.equals("scheduled\n", select(2, helper.http("GET", site.url .. "/__timer_status?url=" .. peer.url)))
    helper.sleep(0.3)
    status, _, elapsed = timed_get(site.url .. API .. "status")
    assert.is_true(elapsed < 0.5, ("GET status took %.3f s during a timer's call"):format(elapsed))
    local result
    for _ = 1, 100 do
      result = select(2, helper.http("GET", site.url .. "/__timer_result"))
      if result ~= "none\n" then break end
      helper.sleep(0.05)
    end
    assert.equals("deny_all\n", result)
    peer.stop()
  end)
end)

describe("examples/nginx.conf", function()
  it("is a valid nginx configuration", function()
    local out, ok = helper.run(("cd %s && nginx -t -p %s -c examples/nginx.conf"):format(helper.repo, helper.repo))
    assert.is_true(ok, out)
  end)
end)

describe("two pksync sites", function()
  local a, b = {}, {}

  lazy_setup(function()
    for _, s in ipairs { a, b } do
      s.dbname, s.conninfo = helper.create_database("two")
      s.srv = start_site(s.conninfo)
      s.client = pksync.new { db = s.conninfo, site_url = s.srv.site_url }
      assert(s.client:migrate())
      assert(s.client:set_settings { enabled = true, incoming_mode = "auto_accept" })
    end
    helper.psql(a.dbname, [[CREATE TABLE products (sku text, region int, name text, price numeric(12,2),
        PRIMARY KEY (sku, region));
      INSERT INTO products SELECT 'sku-' || (g % 17), g / 17, 'Product ' || g, g * 1.10 FROM generate_series(0, 250) g;]])
  end)

  lazy_teardown(function()
    for _, s in ipairs { a, b } do
      if s.srv then s.srv.stop() end
      s.client:close()
      helper.drop_database(s.dbname)
    end
  end)

  it("link, read, page, suspend, reactivate and delete, both sides in step", function()
    -- A creates the sender connection; B registers it
    local sender, raw = assert(a.client:create_connection { name = "A to B", direction = "sender",
      site_url = b.srv.site_url })
    assert.equals(43, #raw)
    assert.equals("registered", sender.metadata.remote_notification.notification_status)
    local receivers = assert(b.client:list_connections { direction = "receiver" })
    assert.equals(1, #receivers)
    local recv = receivers[1]
    assert.equals("From: A to B", recv.name)
    assert.equals(a.srv.site_url, recv.site_url)
    assert.equals(sender.auth_token_hash, recv.auth_token_hash)

    -- the sender's side is pending until the receiver asks for its status
    assert.equals("forbidden", select(2, b.client:fetch_sender_tables(recv)))
    assert.equals("active", b.client:query_sender_status(recv))
    assert.equals("active", assert(a.client:get_connection(sender.uuid)).status)
    assert.equals("exists", a.client:verify_connection(sender))

    -- B reads A's tables, schema and records
    local tables = assert(b.client:fetch_sender_tables(recv))
    assert.equals(1, #tables)
    assert.equals("products", tables[1].name)
    assert.equals(251, tables[1].row_count)
    local schema = assert(b.client:fetch_table_schema(recv, "products"))
    assert.same({ "sku", "region" }, schema.primary_key)
    local recs = assert(b.client:fetch_table_records(recv, "products", { limit = 3 }))
    assert.equals(3, #recs)
    assert.equals("sku-0", recs[1].sku)

    -- paged_pull through a composite key: every row exactly once
    local seen, after, pages = {}, nil, 0
    repeat
      local page = assert(b.client:fetch_pull_page(recv, "products", { limit = 40, after = after }))
      pages = pages + 1
      for _, r in ipairs(page.data) do
        local k = r.sku .. "/" .. r.region
        assert.is_nil(seen[k])
        seen[k] = true
      end
      after = page.next_after
    until not page.has_more
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.equals(251, n)
    assert.equals(7, pages)

    -- A suspends: B mirrors it and is refused data
    local _, remote = assert(a.client:suspend_connection(sender.uuid, "maintenance"))
    assert.equals("updated", remote)
    assert.equals("suspended", assert(b.client:get_connection(recv.uuid)).status)
    assert.equals("suspended", b.client:query_sender_status(recv))
    local none, err, detail = b.client:fetch_sender_tables(recv)
    assert.is_nil(none)
    assert.equals("forbidden", err)
    assert.equals("Connection is not active", detail.message)
    assert.equals("exists", a.client:verify_connection(sender))

    -- A reactivates
    _, remote = assert(a.client:reactivate_connection(sender.uuid))
    assert.equals("updated", remote)
    assert.equals("active", assert(b.client:get_connection(recv.uuid)).status)
    assert(b.client:fetch_sender_tables(recv))

    -- A deletes: both sides end clean
    local ok
    ok, remote = a.client:delete_connection(sender.uuid)
    assert.is_true(ok)
    assert.equals("deleted", remote)
    assert.same({}, assert(a.client:list_connections()))
    assert.same({}, assert(b.client:list_connections()))
    assert.equals("not_found", b.client:query_sender_status(recv))
    assert.equals("not_found", a.client:verify_connection(sender))
  end)
end)
