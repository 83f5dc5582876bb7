-- bench/pull_one.lua CONNINFO URL HASH TABLE STRATEGY PAGE_SIZE [transform|resolve]
-- One pull in its own process, so its peak RSS is the importer's alone.
-- With "transform", every row goes through an identity transform hook (the
-- cost of a Lua policy hook per row). With "resolve" (strategy custom), every
-- conflicting pair goes through a resolve hook that keeps the remote row for
-- even ids and the local one for odd ids. With "incremental" or "mirror",
-- the pull is incremental (and mirrors deletes). With "sync", the table is
-- synced through client:sync_connection, as users get it.
-- Prints one JSON line: the result plus peak_rss_kib (VmHWM).
local pksync = require "pksync"

local conninfo, url, hash, tbl, strategy, page_size = arg[1], arg[2], arg[3], arg[4], arg[5], arg[6]
local transform = arg[7] == "transform" and function(row) return row end or nil
local resolve = arg[7] == "resolve" and function(_, remote) if remote.id % 2 == 0 then return remote end end or nil
local incremental, mirror = arg[7] == "incremental", arg[7] == "mirror"
local client = pksync.new { db = conninfo, site_url = "http://127.0.0.1:1", timeout = 600000, pull_timeout = 600000 }
local conn = { site_url = url, auth_token_hash = hash }
local t0 = require("pksync.core").monotonic_ms()
local r, err, detail
if arg[7] == "sync" then
  -- as users get it: the runner, with its table-level checksum shortcut
  local report
  report, err, detail = client:sync_connection(conn, { tables = { tbl }, strategy = strategy,
    page_size = tonumber(page_size), timeout = 600000 })
  local e = report and report.tables[1]
  if e and e.action ~= "failed" then
    r = { records_transferred = e.transferred or 0, records_imported = e.imported or 0, records_updated = e.updated or 0,
          records_skipped = e.skipped or 0, records_unchanged = e.unchanged or 0, records_failed = e.failed or 0,
          pages = 0, path = e.path or e.action, bytes = e.bytes or 0, records_deleted = e.deleted,
          ranges_compared = e.ranges_compared, ranges_pulled = e.ranges_pulled }
  elseif e then
    err, detail = e.error, { message = e.message }
  end
else
  r, err, detail = client:pull_table_data(conn, tbl,
    { conflict_strategy = strategy, page_size = tonumber(page_size), timeout = 600000, transform = transform,
      resolve = resolve, incremental = incremental, mirror = mirror })
end
local elapsed = (require("pksync.core").monotonic_ms() - t0) / 1000
client:close()
local status = io.open("/proc/self/status"):read("a") or ""
local hwm = tonumber(status:match("VmHWM:%s*(%d+)")) or -1
if not r then
  io.stderr:write("pull failed: ", tostring(err), " ", tostring(detail and detail.message), "\n")
  os.exit(1)
end
print(pksync.json.encode { rows = r.records_transferred, imported = r.records_imported, updated = r.records_updated,
  skipped = r.records_skipped, unchanged = r.records_unchanged, failed = r.records_failed, pages = r.pages,
  seconds = elapsed, path = r.path, peak_rss_kib = hwm, bytes = r.bytes, deleted = r.records_deleted or 0,
  ranges_compared = r.ranges_compared or 0, ranges_pulled = r.ranges_pulled or 0 })
