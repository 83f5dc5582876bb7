-- pksync.access on its own: IP whitelist matching, allowed hours, pull
-- budgets, and authorize against a real store (rate window, expiry,
-- whitelist and hours as the database sees them).
local helper = require "helper"
local pksync = require "pksync"
local access = require "pksync.access"
local answer = require "pksync.answer"

local json = pksync.json

describe("pksync.access", function()
  describe("ip_matches", function()
    local function check(cases, want)
      for _, c in ipairs(cases) do
        assert.equals(want, access.ip_matches(c[1], c[2]), c[1] .. " vs " .. c[2])
      end
    end

    it("matches exact IPv4 addresses by value", function()
      check({ { "192.0.2.7", "192.0.2.7" }, { "0.0.0.0", "0.0.0.0" }, { "255.255.255.255", "255.255.255.255" },
              { "10.0.0.1", "10.0.0.1/32" } }, true)
      check({ { "192.0.2.7", "192.0.2.8" }, { "192.0.2.70", "192.0.2.7" }, { "192.0.2.7", "192.0.2.70" },
              { "10.0.0.1", "10.0.0.2/32" } }, false)
    end)

    it("matches IPv4 CIDR blocks at their boundaries", function()
      check({ { "192.168.1.0", "192.168.1.0/24" }, { "192.168.1.255", "192.168.1.0/24" },
              { "192.168.1.77", "192.168.1.0/24" }, { "10.255.255.255", "10.0.0.0/8" },
              { "172.31.0.1", "172.16.0.0/12" }, { "1.2.3.4", "0.0.0.0/0" }, { "255.255.255.255", "0.0.0.0/0" },
              -- host bits in the entry are ignored: the block is what counts
              { "192.168.1.9", "192.168.1.200/24" }, { "128.0.0.1", "128.0.0.0/1" } }, true)
      check({ { "192.168.0.255", "192.168.1.0/24" }, { "192.168.2.0", "192.168.1.0/24" },
              { "11.0.0.0", "10.0.0.0/8" }, { "172.32.0.1", "172.16.0.0/12" }, { "127.255.255.255", "128.0.0.0/1" },
              { "10.0.0.1", "10.0.0.0/32" } }, false)
    end)

    it("matches IPv6 addresses by value, in any spelling", function()
      check({ { "::1", "::1" }, { "0:0:0:0:0:0:0:1", "::1" }, { "::1", "0000:0000:0000:0000:0000:0000:0000:0001" },
              { "2001:DB8::A", "2001:db8::a" }, { "2001:db8:0:0:0:0:0:a", "2001:db8::a" },
              { "::", "0:0:0:0:0:0:0:0" }, { "1::", "1:0:0:0:0:0:0:0" }, { "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0" },
              { "::ffff:192.0.2.1", "::ffff:c000:201" }, { "fe80::1", "fe80::1/128" } }, true)
      check({ { "::1", "::2" }, { "::1", "1::" }, { "2001:db8::a", "2001:db8::a:0" }, { "fe80::1", "fe80::2/128" } },
        false)
    end)

    it("matches IPv6 CIDR blocks (/0, /32, /64, /128 and odd lengths)", function()
      check({ { "::1", "::/0" }, { "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::/0" },
              { "2001:db8::", "2001:db8::/32" }, { "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::/32" },
              { "2001:db8:0:0:ffff::1", "2001:db8::/64" }, { "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64" },
              { "2001:db8:7fff::", "2001:db8::/33" }, { "2001:db8::1", "2001:db8::1/128" },
              { "::ffff:10.1.2.3", "::ffff:0:0/96" }, { "fe80::abcd", "fe80::/10" }, { "febf::1", "fe80::/10" } }, true)
      check({ { "2001:db9::", "2001:db8::/32" }, { "2001:db7:ffff::", "2001:db8::/32" },
              { "2001:db8:0:1::", "2001:db8::/64" }, { "2001:db8:8000::", "2001:db8::/33" },
              { "2001:db8::2", "2001:db8::1/128" }, { "fec0::1", "fe80::/10" } }, false)
    end)

    it("never matches across address families", function()
      check({ { "1.2.3.4", "::/0" }, { "::1", "0.0.0.0/0" }, { "127.0.0.1", "::1" }, { "::1", "127.0.0.1" },
              { "10.1.2.3", "::ffff:10.1.2.3" }, { "::ffff:10.1.2.3", "10.1.2.3" },
              { "10.1.2.3", "::ffff:0:0/96" }, { "::ffff:10.1.2.3", "10.0.0.0/8" } }, false)
    end)

    it("never matches malformed entries or addresses, and never raises", function()
      local bad_entries = {
        "256.0.0.1", "1.2.3.256", "1.2.3", "1.2.3.4.5", "1..2.3", "1.2.3.4.", ".1.2.3.4", "01.2.3.4", "1.2.3.0004",
        "-1.2.3.4", "1.2.3.4/33", "1.2.3.4/-1", "1.2.3.4/", "/24", "1.2.3.4/24/1", "1.2.3.4/a", "1.2.3.4/1000",
        "1.2.3.4 ", " 1.2.3.4", "0x7f.0.0.1", "", "*", "any", "localhost", "1.2.3.4/32 ", "1.2.3.4\0",
        "::1/129", "::/200", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "1::2::3", ":::", ":1::", "1:::2", "::1:",
        "12345::1", "g::1", "fe80::1%eth0", "::1.2.3", "::256.1.2.3", "1.2.3.4::", "1:2:3:4:5:6:7:8::",
        "::ffff:1.2.3.4:5", "[::1]", ("1:"):rep(40) .. "1", ("9"):rep(500) .. ".1.1.1",
      }
      local ips = { "1.2.3.4", "256.0.0.1", "::1", "0.0.0.0", "::" }
      for _, entry in ipairs(bad_entries) do
        for _, ip in ipairs(ips) do
          local ok, r = pcall(access.ip_matches, ip, entry)
          assert.is_true(ok, entry)
          assert.is_false(r, ip .. " vs " .. entry)
          -- a malformed address matches nothing, not even itself
          ok, r = pcall(access.ip_matches, entry, entry)
          assert.is_true(ok, entry)
          assert.is_false(r, entry)
        end
        -- ... and no entry at all, however broad
        for _, broad in ipairs { "0.0.0.0/0", "::/0" } do
          assert.is_false(access.ip_matches(entry, broad), entry)
        end
      end
      -- a block is not an address
      assert.is_false(access.ip_matches("10.0.0.0/8", "10.0.0.0/8"))
      assert.is_false(access.ip_matches("::/0", "::/0"))
      for _, v in ipairs { 1, true, {}, pksync.null, function() end } do
        assert.is_false(access.ip_matches(v, "0.0.0.0/0"))
        assert.is_false(access.ip_matches("1.2.3.4", v))
      end
      assert.is_false(access.ip_matches(nil, "::/0"))
      assert.is_false(access.ip_matches("::1", nil))
    end)
  end)

  describe("hour_allowed", function()
    it("allows an inclusive window, and wraps past midnight when start > end", function()
      for h = 0, 23 do
        assert.equals(h >= 9 and h <= 17, access.hour_allowed(9, 17, h), "9..17 at " .. h)
        assert.equals(h >= 22 or h <= 6, access.hour_allowed(22, 6, h), "22..6 at " .. h)
        assert.equals(h == 5, access.hour_allowed(5, 5, h), "5..5 at " .. h)
        assert.is_true(access.hour_allowed(0, 23, h))
      end
    end)

    it("allows every hour when either end is unset", function()
      for _, pair in ipairs { { nil, 5 }, { 5, nil }, { pksync.null, 5 }, { 5, pksync.null }, { "9", "17" } } do
        assert.is_true(access.hour_allowed(pair[1], pair[2], 3))
      end
    end)
  end)

  describe("pull_budget", function()
    local function conn(attrs)
      local c = { max_records_per_request = 100, downloads_used = 0, records_downloaded = 0,
                  max_downloads = pksync.null, max_records_total = pksync.null }
      for k, v in pairs(attrs or {}) do c[k] = v end
      return c
    end
    local function budget(c, starting)
      local page, res = access.pull_budget(c, starting, answer.fail)
      if page then return page end
      return nil, res.status, json.decode(res.body).error
    end

    it("gives the per-request page when nothing else limits it", function()
      assert.equals(100, budget(conn(), true))
      assert.equals(7, budget(conn { max_records_per_request = 7 }, false))
    end)

    it("counts downloads only when a pull starts", function()
      local c = conn { max_downloads = 2, downloads_used = 1 }
      assert.equals(100, budget(c, true))
      c.downloads_used = 2
      local page, status, err = budget(c, true)
      assert.is_nil(page)
      assert.equals(403, status)
      assert.equals("Download limit reached", err)
      -- a pull already under way may finish
      assert.equals(100, budget(c, false))
      c.downloads_used = 5
      assert.is_nil((budget(c, true)))
    end)

    it("caps the page to what the record budget leaves, and refuses once it is spent", function()
      assert.equals(100, budget(conn { max_records_total = 1000, records_downloaded = 900 }, false))
      assert.equals(99, budget(conn { max_records_total = 1000, records_downloaded = 901 }, false))
      assert.equals(1, budget(conn { max_records_total = 1000, records_downloaded = 999 }, true))
      for _, used in ipairs { 1000, 1001 } do
        local page, status, err = budget(conn { max_records_total = 1000, records_downloaded = used }, false)
        assert.is_nil(page)
        assert.equals(403, status)
        assert.equals("Record limit reached", err)
      end
      local _, _, err = budget(conn { max_records_total = 0 }, true)
      assert.equals("Record limit reached", err)
    end)
  end)

  describe("authorize against a real store", function()
    local dbname, conninfo, site

    local function sql(q) return helper.psql(dbname, q) end

    local function sender(attrs) return helper.sender_connection(site, attrs) end

    -- returns conn or nil, status, error text, answer
    local function authorize(c, ip, client)
      local got, res = access.authorize(client or site, { remote_addr = ip or "127.0.0.1" },
        { auth_token_hash = type(c) == "table" and c.auth_token_hash or c }, answer.fail)
      if got then return got end
      return nil, res.status, json.decode(res.body).error, res
    end

    local function utc_hour() return tonumber(sql("SELECT extract(hour FROM now() AT TIME ZONE 'UTC')::int")) end

    lazy_setup(function()
      dbname, conninfo = helper.create_database("access")
      site = pksync.new { db = conninfo, site_url = "https://a.example" }
      assert(site:migrate())
    end)

    lazy_teardown(function()
      site:close()
      helper.drop_database(dbname)
    end)

    it("returns the connection for a known active sender's hash", function()
      local c = sender()
      local got = assert(authorize(c))
      assert.equals(c.uuid, got.uuid)
      assert.equals("sender", got.direction)
    end)

    it("refuses unknown hashes, receivers' hashes and connections that are not active", function()
      local _, status, err = authorize(("0"):rep(64))
      assert.equals(401, status)
      assert.equals("Invalid connection", err)
      local recv = assert(site:create_connection { name = "from-x", direction = "receiver",
        site_url = "https://" .. helper.unique("x") .. ".example", auth_token = helper.unique("tok") })
      _, status = authorize(recv)
      assert.equals(401, status)
      for _, s in ipairs { "pending", "suspended", "revoked" } do
        _, status, err = authorize(sender { status = s })
        assert.equals(403, status, s)
        assert.equals("Connection is not active", err)
      end
    end)

    it("answers 500 when the store cannot be reached", function()
      local lost = pksync.new { db = helper.conninfo("no_such_database_access") }
      local _, status, err = authorize(sender(), "127.0.0.1", lost)
      lost:close()
      assert.equals(500, status)
      assert.equals("Store unavailable", err)
    end)

    it("refuses a connection whose expiry has passed, by the database's clock", function()
      local c = sender { expires_at = "2999-01-01T00:00:00Z" }
      assert(authorize(c))
      sql(("UPDATE pksync_connections SET expires_at = now() - interval '1 second' WHERE uuid = '%s'"):format(c.uuid))
      local _, status, err = authorize(c)
      assert.equals(403, status)
      assert.equals("Connection has expired", err)
    end)

    it("applies the IP whitelist to the request's address (IPv4 and IPv6 blocks)", function()
      local c = sender { ip_whitelist = { "10.0.0.0/8", "2001:db8::/32", "::1", "not an address" } }
      for _, ip in ipairs { "10.9.8.7", "2001:db8:abcd::1", "2001:0DB8:0:0:0:0:0:1", "0:0:0:0:0:0:0:1" } do
        assert(authorize(c, ip), ip)
      end
      for _, ip in ipairs { "11.0.0.1", "2001:db9::1", "::2", "127.0.0.1", "not an address" } do
        local _, status, err = authorize(c, ip)
        assert.equals(403, status, ip)
        assert.equals("IP address not allowed", err)
      end
      -- no address at all is not on any whitelist
      local got, res = access.authorize(site, {}, { auth_token_hash = c.auth_token_hash }, answer.fail)
      assert.is_nil(got)
      assert.equals(403, res.status)
      -- an empty whitelist lets every address in
      assert(authorize(sender { ip_whitelist = {} }, "203.0.113.9"))
    end)

    it("applies allowed hours in UTC, wrapping past midnight", function()
      local h = utc_hour()
      local _, status, err = authorize(sender { allowed_hours_start = (h + 1) % 24, allowed_hours_end = (h + 23) % 24 })
      assert.equals(403, status)
      assert.equals("Access is not allowed at this hour", err)
      assert(authorize(sender { allowed_hours_start = h, allowed_hours_end = (h + 23) % 24 }))
      assert(authorize(sender { allowed_hours_start = (h + 1) % 24, allowed_hours_end = h }))
    end)

    it("counts requests in one per-minute window shared by every handle on the store", function()
      local c = sender { rate_limit_requests_per_minute = 3 }
      local other = pksync.new { db = conninfo } -- as another nginx worker would
      assert(authorize(c))
      assert(authorize(c, nil, other))
      assert(authorize(c))
      local _, status, err, res = authorize(c, nil, other)
      other:close()
      assert.equals(429, status)
      assert.equals("Rate limit exceeded", err)
      local retry = tonumber(res.headers["retry-after"])
      assert.is_truthy(retry and retry >= 1 and retry <= 60)
      assert.equals("4", sql(("SELECT rate_window_count FROM pksync_connections WHERE uuid = '%s'"):format(c.uuid)))
      -- the window restarts a minute after it opened
      sql(("UPDATE pksync_connections SET rate_window_start = now() - interval '60 seconds' WHERE uuid = '%s'")
        :format(c.uuid))
      assert(authorize(c))
      assert.equals("1", sql(("SELECT rate_window_count FROM pksync_connections WHERE uuid = '%s'"):format(c.uuid)))
    end)

    it("does not rate-limit when the limit is 0", function()
      local c = sender { rate_limit_requests_per_minute = 0 }
      for _ = 1, 25 do assert(authorize(c)) end
    end)
  end)
end)
