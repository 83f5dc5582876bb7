-- The admin page in a real browser: spec/browser/admin.test.js drives
-- Debian's chromium (playwright-core, installed by scripts/browser-deps.sh
-- into build/node) through two real sites on loopback, then the databases
-- are checked here. Screenshots go to build/test-output/screenshots/;
-- PKSYNC_UPDATE_SCREENSHOT=1 also copies the sync page's to
-- docs/admin-sync.png (the README's picture).
--
-- The sites run in nginx on LuaJIT whatever the busted runtime, so the
-- browser runs once: under Lua 5.4, not again under LuaJIT or the
-- sanitizer build.
local helper = require "helper"
local sites = require "sites"

local PASSWORD = "browser test password"
local once = helper.runtime == "54" and os.getenv("PKSYNC_LABEL") ~= "asan"

describe("admin page in a browser", function()
  if not once then
    pending("runs once, under Lua 5.4")
    return
  end

  local a, b
  local shots = helper.repo .. "/build/test-output/screenshots"
  local playwright = helper.repo .. "/build/node/node_modules/playwright-core"

  lazy_setup(function()
    a, b = sites.start_admin_pair()
    assert(a.client:set_settings { admin_password = PASSWORD })
    assert(b.client:set_settings { admin_password = PASSWORD })
  end)

  lazy_teardown(function()
    if a then sites.stop_admin_pair(a, b) end
  end)

  it("logs in, creates a sender, approves it on the receiver, syncs two related tables, finds the transfer, logs out",
    function()
      assert(helper.read_file(playwright .. "/package.json"), "playwright-core is missing: run scripts/browser-deps.sh")
      assert(helper.read_file("/usr/bin/chromium"), "chromium is missing: run scripts/browser-deps.sh")
      local env = { A_ADMIN = a.srv.admin, B_ADMIN = b.srv.admin, B_URL = b.url, PASSWORD = PASSWORD,
        SHOTS = shots, PLAYWRIGHT_CORE = playwright }
      local parts = {}
      for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. helper.shell_quote(v) end
      local out, ok = helper.run(("env %s node %s"):format(table.concat(parts, " "),
        helper.shell_quote(helper.repo .. "/spec/browser/admin.test.js")))
      assert(ok, out)
      assert.matches("ok %- logged out on site B", out)
      assert.is_nil(out:find("not ok", 1, true), out)
      -- what the browser did is in the databases
      assert.equals("1500|500", b.sql("SELECT (SELECT count(*) FROM orders) || '|' || (SELECT count(*) FROM customers)"))
      assert.equals(sites.fingerprint(a, "orders"), sites.fingerprint(b, "orders"))
      assert.equals("active", a.sql("SELECT status FROM pksync_connections"), "the receiver's sync activated it")
      assert.equals("1", b.sql("SELECT count(*) FROM pksync_admin_sessions"), "the logout ended its session; the phone's is left")
      for _, name in ipairs { "overview", "connections", "sync", "history", "transfer", "connections-390" } do
        assert.truthy(helper.read_file(shots .. "/" .. name .. ".png"), name .. ".png")
      end
      if os.getenv("PKSYNC_UPDATE_SCREENSHOT") == "1" then
        assert(os.execute(("cp %s %s"):format(helper.shell_quote(shots .. "/sync.png"),
          helper.shell_quote(helper.repo .. "/docs/admin-sync.png"))))
      end
    end)
end)
