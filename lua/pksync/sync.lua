--- The sync runner: one call that brings a whole connection up to date.
--
-- `client:sync_connection(conn, opts)` checks the sender's status, lists its
-- tables, lets the policy choose tables, strategies, transforms and
-- conflict resolution, skips tables whose checksum already matches, pulls
-- the rest parents first with key remapping, and returns a report.
-- @module pksync.sync
local core = require "pksync.core"
local util = require "pksync.util"
local catalog = require "pksync.catalog"
local policy_mod = require "pksync.policy"

local type, ipairs, tostring, tonumber, setmetatable = type, ipairs, tostring, tonumber, setmetatable
local str_format = string.format
local now = core.monotonic_ms

local _M = {}

local TOTALS = { "transferred", "imported", "updated", "unchanged", "skipped", "filtered", "failed", "deleted" }

--- How a local table stands against the sender's `list-tables` entry for
-- it: "missing", "unknown" (the sender sent no checksum), "unchanged" (same
-- checksum, computed the same way as the sender's) or "differs"; with the
-- local table's stats (`catalog.table_stats`) when it exists.
-- @return state, stats, or nil, err, detail
function _M.table_state(self, name, remote)
  local db, err, detail = self:database()
  if not db then return nil, err, detail end
  if not catalog.table_exists(db, self.schema, name) then return "missing" end
  local stats = catalog.table_stats(db, self.schema, name)
  if type(remote.checksum) ~= "string" then return "unknown", stats end
  return stats ~= nil and stats.checksum == remote.checksum and "unchanged" or "differs", stats
end

local function load_policy(self, opts)
  local source = opts.policy or self.policy
  if source == nil then return {} end
  return policy_mod.load(source)
end

--- The tables to pull: the caller's list, else the policy's, else all.
-- @return names, explicit order (true when the policy decided it), or nil, err
local function choose_tables(policy, list, conn, opts)
  if opts.tables then return opts.tables, false end
  if not policy_mod.has(policy, "tables") then
    local all = {}
    for _, t in ipairs(list) do all[#all + 1] = t.name end
    return all, false
  end
  local ok, names = policy_mod.call(policy, "tables", list, conn)
  if not ok then return nil, names end
  if type(names) ~= "table" then return nil, "hook tables: must return an array of table names" end
  for _, n in ipairs(names) do
    if type(n) ~= "string" then return nil, "hook tables: must return an array of table names" end
  end
  return names, true
end

local function table_options(policy, conn, opts)
  return function(name)
    local strategy = opts.strategy
    if not strategy then
      local ok, s = policy_mod.call(policy, "strategy", name, conn)
      if not ok then return nil, s end
      strategy = s
    end
    if not strategy then
      strategy = type(conn.default_conflict_strategy) == "string" and conn.default_conflict_strategy or "skip"
    end
    -- incremental by default: it runs only where the sender offers digests
    -- and the local table has rows, else the pull is a full one
    local o = { conflict_strategy = strategy, transform = policy_mod.transformer(policy, name, conn),
                incremental = opts.incremental ~= false, mirror = opts.mirror == true }
    if strategy == "custom" then
      o.resolve = policy_mod.resolver(policy, name, conn)
      if not o.resolve then return nil, "strategy custom for " .. name .. " needs a resolve hook" end
    end
    return o
  end
end

--- The progress callback: the caller's, then the policy's (a failing
-- policy hook stops the table like a failing caller's callback).
local function progress_hook(policy, opts)
  if not policy_mod.has(policy, "on_progress") and not opts.on_progress then return nil end
  return function(event)
    if opts.on_progress then opts.on_progress(event) end
    local ok, err = policy_mod.call(policy, "on_progress", event)
    if not ok then error(err, 0) end
  end
end

--- One report entry from a pull_tables entry.
local function entry_of(name, r, strategy_of)
  if r.action then
    r.name = name
    return r
  end
  if r.error then
    return { name = name, action = "failed", error = r.error, message = r.detail and r.detail.message,
             transferred = r.detail and r.detail.result and r.detail.result.records_transferred or 0 }
  end
  return { name = name, action = "pulled", strategy = r.strategy, path = r.path,
    transferred = r.records_transferred, imported = r.records_imported, updated = r.records_updated,
    skipped = r.records_skipped, unchanged = r.records_unchanged, filtered = r.records_filtered,
    failed = r.records_failed, deleted = r.records_deleted, ranges_compared = r.ranges_compared,
    ranges_pulled = r.ranges_pulled, bytes = r.bytes,
    seconds = r.seconds, error_sample = r.error_sample, unknown_columns = r.unknown_columns }
end

local function sender_ready(self, conn, opts)
  local status, err, detail = self:query_sender_status(conn, { timeout = opts.timeout })
  if not status then return nil, err, detail end
  if status == "offline" then return nil, "offline", { message = "the sender could not be reached" } end
  if status == "not_found" then return nil, "not_found", { message = "the sender does not know this connection" } end
  if status ~= "active" then
    return nil, "sender_not_active", { message = "the sender's connection is " .. tostring(status), status = status }
  end
  return status
end

--- What a sync report amounts to: "ok", "partial" (rows or tables
-- failed) or "offline" (every table failed because the sender went away),
-- and for the last two a summary of what failed.
function _M.report_outcome(_, report)
  local failed_tables, offline, tables = 0, 0, report.tables or {}
  for _, t in ipairs(tables) do
    if t.action == "failed" then
      failed_tables = failed_tables + 1
      if t.error == "offline" then offline = offline + 1 end
    end
  end
  local rows = type(report.totals) == "table" and tonumber(report.totals.failed) or 0
  if failed_tables == 0 and rows == 0 then return "ok" end
  local summary = str_format("%d rows failed, %d of %d tables failed", rows, failed_tables, #tables)
  if offline > 0 and offline == #tables then return "offline", summary end
  return "partial", summary
end

--- Sync a receiver connection from its sender.
-- @param conn the receiver connection
-- @param opts `tables` (names), `strategy` (for every table), `policy` (a
--   table of hooks or a policy file's path; default the client's),
--   `dry_run` (report what would change, write nothing), `on_progress`,
--   `timeout`, `page_size`, `incremental` (default true: re-sync by digests
--   where the sender offers them), `mirror` (also delete local rows the
--   sender no longer has; never the default)
-- @return report `{sender_status, dry_run, seconds, order, cycles, tables =
--   {{name, action = "pulled"|"unchanged"|"failed", strategy, transferred,
--   imported, updated, skipped, filtered, failed, seconds, error, message,
--   reason, path}...}, totals}` or nil, err, detail
function _M.sync_connection(self, conn, opts)
  if type(conn) ~= "table" then error("bad argument #1 to 'sync_connection' (connection table expected)", 2) end
  opts = opts or {}
  local started = now()
  local policy, perr = load_policy(self, opts)
  if not policy then return nil, "invalid_policy", { message = perr } end
  local status, err, detail = sender_ready(self, conn, opts)
  if not status then return nil, err, detail end
  local list
  list, err, detail = self:fetch_sender_tables(conn, { timeout = opts.timeout })
  if not list then return nil, err, detail end
  local names, explicit = choose_tables(policy, list, conn, opts)
  if not names then return nil, "hook_failed", { message = explicit } end
  -- the local database must answer before any table is pulled
  local db
  db, err, detail = self:database()
  if not db then return nil, err, detail end
  local out
  out, err, detail = self:pull_tables(conn, names, {
    dry_run = opts.dry_run, order = explicit and names or nil, timeout = opts.timeout,
    page_size = opts.page_size, on_progress = progress_hook(policy, opts),
    before_table = function(name, info)
      -- without a checksum from the sender there is nothing to compare: no local checksum either
      if type(info.checksum) == "string" and _M.table_state(self, name, info) == "unchanged" then
        return { action = "unchanged", reason = "checksum matches" }
      end
    end,
    table_options = table_options(policy, conn, opts),
  })
  if not out then return nil, err, detail end
  local report = { sender_status = status, dry_run = opts.dry_run == true, order = out.order, cycles = out.cycles,
                   passes = out.passes, tables = setmetatable({}, core.array_mt), totals = {} }
  for _, k in ipairs(TOTALS) do report.totals[k] = 0 end
  for _, name in ipairs(out.order) do
    local e = entry_of(name, out.tables[name])
    report.tables[#report.tables + 1] = e
    for _, k in ipairs(TOTALS) do report.totals[k] = report.totals[k] + (e[k] or 0) end
    if e.action == "failed" then
      policy_mod.call(policy, "on_error", { table = name, error = e.error, message = e.message })
    end
  end
  report.seconds = (now() - started) / 1000
  self:log("info", "sync from %s: %d tables, %d rows in, %d failed%s", util.base_url(conn.site_url),
    #report.tables, report.totals.transferred, report.totals.failed, report.dry_run and " (dry run)" or "")
  return report
end

return _M
