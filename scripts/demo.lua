-- scripts/demo.lua: `make demo`, the main job in one command.
--
-- Two pksync sites on loopback, each with its own PostgreSQL database and
-- nginx: A (a small shop with a few thousand rows) and B (the same schema,
-- empty). A creates a sender connection to B, B registers it, B syncs from A
-- under an example policy with the `pksync` command, and the demo proves in
-- SQL that B now holds exactly A's data; then B schedules the connection
-- and one scheduled run syncs A's next change. Both sites also serve the
-- admin page (password "demo"); its addresses are printed while the sites
-- are up, and PKSYNC_DEMO_KEEP=1 keeps them up until Enter is pressed. Run
-- through scripts/testenv.sh, which provides the throwaway PostgreSQL
-- cluster and removes everything.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = "build/54/?.so;" .. package.cpath
local helper = require "helper"
local sites = require "sites"
local ADMIN_PASSWORD = "demo"

local TABLES = { "customers", "products", "orders", "order_items", "reviews" }
local started = helper.now()

-- Bold headings on a terminal only, so logs stay plain text.
local BOLD, PLAIN = "", ""
if os.execute("test -t 1") == true or os.execute("test -t 1") == 0 then BOLD, PLAIN = "\27[1m", "\27[0m" end

local function step(fmt, ...)
  io.write("\n", BOLD, "==> ", fmt:format(...), PLAIN, "\n")
  io.flush()
end

local function note(fmt, ...)
  io.write("    ", fmt:format(...), "\n")
  io.flush()
end

--- Run the pksync command visibly; its output goes straight to the terminal.
local function pksync_cmd(site, args, expect_rc)
  local shown = {}
  for i, a in ipairs(args) do shown[i] = a:find("[%s\"']") and helper.shell_quote(a) or a end
  io.write(("\n  $ pksync %s\n"):format(table.concat(shown, " ")))
  io.flush()
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = helper.shell_quote(a) end
  local cmd = ("PKSYNC_PROGRESS=1 lua5.4 bin/pksync --db %s --site-url %s %s 2>&1 | sed -u 's/^/    /'")
    :format(helper.shell_quote(site.conninfo), site.url, table.concat(quoted, " "))
  local ok, _, rc = os.execute("bash -o pipefail -c " .. helper.shell_quote(cmd))
  rc = type(ok) == "number" and ok or rc
  if rc ~= (expect_rc or 0) then error(("pksync %s exited with %s"):format(args[1], tostring(rc)), 0) end
end

local function sql_file(dbname, file)
  local out, ok = helper.run(("psql -X -q -v ON_ERROR_STOP=1 -h %s -p %s -U postgres -d %s -f %s"):format(
    helper.shell_quote(helper.pghost), helper.pgport, dbname, helper.shell_quote(file)))
  assert(ok, out)
end

local function new_site(label)
  local s = { label = label }
  s.dbname, s.conninfo = helper.create_database("demo_" .. label:lower())
  s.port = helper.free_port()
  s.url = "http://127.0.0.1:" .. s.port
  sql_file(s.dbname, "examples/sample_schema.sql")
  return s
end

local function serve(s)
  s.srv = sites.serve_with_admin(s.conninfo, { name = "demo-" .. s.label, port = s.port })
end

local function fingerprint(s, tbl)
  return helper.psql(s.dbname, ("SET TimeZone = 'UTC'; SET extra_float_digits = 3; " ..
    "SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM %s t")
    :format(tbl))
end

local a, b = new_site("A"), new_site("B")
local ok, err = pcall(function()
  step("Site A: a shop with customers, products, orders, order items and reviews")
  sql_file(a.dbname, "examples/sample_data.sql")
  for _, t in ipairs(TABLES) do note("%-12s %s", t, fingerprint(a, t)) end
  note("site B has the same schema and no rows")

  step("Start both sites in nginx (LuaJIT, thread pool) on loopback")
  serve(a)
  serve(b)
  note("A serves %s/phoenix_kit/sync/api/", a.url)
  note("B serves %s/phoenix_kit/sync/api/", b.url)
  pksync_cmd(a, { "settings", "--enable", "--incoming-mode", "deny_all", "--site-url-set", a.url,
    "--admin-password", ADMIN_PASSWORD })
  pksync_cmd(b, { "settings", "--enable", "--incoming-mode", "auto_accept", "--site-url-set", b.url,
    "--admin-password", ADMIN_PASSWORD })
  pksync_cmd(a, { "status", b.url })

  step("A creates a sender connection to B; B registers it")
  pksync_cmd(a, { "connections", "add", "--name", "Shop to Warehouse", "--direction", "sender", "--url", b.url })
  pksync_cmd(b, { "connections", "list" })

  step("B looks at what A offers")
  pksync_cmd(b, { "tables", a.url })
  pksync_cmd(b, { "preview", a.url, "products", "--limit", "3" })

  step("B syncs from A under examples/policies/newest_wins.lua")
  pksync_cmd(b, { "sync", a.url, "--policy", "examples/policies/newest_wins.lua" })

  step("Proof: B's tables equal A's, row for row")
  local all_equal = true
  for _, t in ipairs(TABLES) do
    local fa, fb = fingerprint(a, t), fingerprint(b, t)
    note("%-12s %s  %s", t, fb, fa == fb and "= A" or ("DIFFERS from A: " .. fa))
    all_equal = all_equal and fa == fb
  end
  if not all_equal then error("B's data differs from A's", 0) end

  step("A changes two products; a second sync compares digests of key ranges, then of rows, and moves only those two")
  helper.psql(a.dbname, "UPDATE products SET price = price + 1, updated_at = now() WHERE id IN (3, 4)")
  pksync_cmd(b, { "sync", a.url, "--policy", "examples/policies/newest_wins.lua" })
  local fa, fb = fingerprint(a, "products"), fingerprint(b, "products")
  note("products     %s  %s", fb, fa == fb and "= A" or "DIFFERS")
  if fa ~= fb then error("products differ after the second sync", 0) end
  local store = pksync.new { db = b.conninfo, site_url = b.url }
  local last = assert(store:list_transfers { table_name = "products", direction = "receive", limit = 1 })[1]
  store:close()
  local moved = last and last.records_transferred
  note("products     %s rows transferred for 2 rows changed (path %s, the transfer B recorded)", tostring(moved),
    tostring(last and last.metadata and last.metadata.path))
  if moved ~= 2 then error("the second sync moved " .. tostring(moved) .. " rows of products, not the 2 that changed", 0) end

  step("B turns on auto-sync; A changes a product; a scheduled run (the cron line: pksync sync --due --policy FILE) brings it over")
  pksync_cmd(b, { "schedule", a.url, "--enable", "--every", "60" })
  helper.psql(a.dbname, "UPDATE products SET price = price + 2, updated_at = now() WHERE id = 9")
  pksync_cmd(b, { "sync", "--due", "--policy", "examples/policies/newest_wins.lua" })
  pksync_cmd(b, { "schedule" })
  fa, fb = fingerprint(a, "products"), fingerprint(b, "products")
  note("products     %s  %s", fb, fa == fb and "= A" or "DIFFERS")
  if fa ~= fb then error("products differ after the scheduled run", 0) end

  step("The admin pages (password %q)", ADMIN_PASSWORD)
  note("A: %s", a.srv.admin)
  note("B: %s   (Connections > Sync… on B's receiver connection; History)", b.srv.admin)
  if os.getenv("PKSYNC_DEMO_KEEP") == "1" then
    note("the sites stay up until you press Enter")
    io.read("*l")
  else
    note("PKSYNC_DEMO_KEEP=1 make demo keeps the sites up for a look")
  end
end)

for _, s in ipairs { a, b } do
  if s.srv then s.srv.stop() end
  helper.drop_database(s.dbname)
end
if not ok then
  io.stderr:write("\ndemo failed: ", tostring(err), "\n")
  os.exit(1)
end
step("Done in %.1f s: both sites stopped, databases dropped", helper.now() - started)
