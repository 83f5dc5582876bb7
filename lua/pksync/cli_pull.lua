--- `pksync pull` and `pksync sync`: run a pull through
-- `client:sync_connection` (pksync.runner) when the library has it, else
-- through `client:pull_tables`, and print one report either way.
--
-- The report has the shape sync_connection returns: `{sender_status,
-- dry_run, seconds, order, cycles, tables = {{name, action, strategy,
-- transferred, imported, updated, skipped, filtered, failed, seconds,
-- error, reason, path}, ...}, totals = {...}}`.
-- @module pksync.cli_pull
local pksync = require "pksync"
local util = require "pksync.util"
local store = require "pksync.store"
local output = require "pksync.cli_output"
local commands = require "pksync.cli_commands"

local type, tostring, ipairs, pcall, error, io_open = type, tostring, ipairs, pcall, error, io.open
local str_format = string.format
local null = pksync.null

local _M = {}

local EXIT_OK, EXIT_FAILED, EXIT_OFFLINE, EXIT_PARTIAL = 0, 1, 3, 4
local COUNTS = output.COUNTS

------------------------------------------------------------------------------
-- arguments

-- "custom" hands conflicts to the policy's resolve hook (pksync.runner).
local function strategy_opt(ctx)
  local s = ctx.opts.strategy
  if s and not store.STRATEGIES[s] and s ~= "custom" then
    ctx:usage("--strategy must be skip, overwrite, merge, append or custom")
  end
  return s
end

local function policy_opt(ctx)
  local path = ctx.opts.policy
  if not path then return nil end
  local f = io_open(path, "r")
  if not f then ctx:usage("cannot read the policy file " .. output.cell(path, 80)) end
  f:close()
  return path
end

local function tables_arg(ctx)
  if #ctx.rest == 0 then return nil end
  for _, name in ipairs(ctx.rest) do
    if not util.valid_ident(name) then ctx:usage("'" .. output.cell(name) .. "' is not a table name") end
  end
  return ctx.rest
end

------------------------------------------------------------------------------
-- the report

local function zero_counts(entry)
  for _, k in ipairs(COUNTS) do entry[k] = entry[k] or 0 end
  return entry
end

--- Counts over a table's passes (pull_tables keeps earlier passes in
-- `earlier`): rows are imported once, so imports add up; a later pass
-- updates the same rows again and skips the rows an earlier pass imported.
local function over_passes(r)
  local imported, earlier_imported, updated, seconds = 0, 0, 0, 0
  local p = r
  while p do
    imported = imported + (p.records_imported or 0)
    if p ~= r then earlier_imported = earlier_imported + (p.records_imported or 0) end
    if (p.records_updated or 0) > updated then updated = p.records_updated end
    seconds = seconds + (p.seconds or 0)
    p = p.earlier
  end
  local skipped = (r.records_skipped or 0) - earlier_imported
  return imported, updated, skipped > 0 and skipped or 0, seconds
end

--- One table of pull_tables' answer as a report entry.
local function entry_of(name, r, strategy)
  if type(r) ~= "table" then
    return zero_counts { name = name, action = "failed", strategy = strategy, error = "not_pulled" }
  end
  if r.error then
    local d = type(r.detail) == "table" and r.detail or {}
    local done = type(d.result) == "table" and d.result or {}
    return zero_counts { name = name, action = "failed", strategy = strategy, error = r.error, message = d.message,
      transferred = done.records_transferred, imported = done.records_imported, updated = done.records_updated,
      skipped = done.records_skipped, filtered = done.records_filtered, failed = done.records_failed,
      seconds = done.seconds }
  end
  local imported, updated, skipped, seconds = over_passes(r)
  return zero_counts { name = name, action = "pulled", strategy = strategy, path = r.path,
    transferred = r.records_transferred, imported = imported, updated = updated, skipped = skipped,
    filtered = r.records_filtered, failed = r.records_failed, seconds = seconds, passes = r.passes,
    error_sample = r.error_sample }
end

local function add_totals(report)
  local totals = zero_counts {}
  for _, t in ipairs(report.tables) do
    for _, k in ipairs(COUNTS) do
      if type(t[k]) == "number" then totals[k] = totals[k] + t[k] end
    end
  end
  report.totals = totals
  return report
end

------------------------------------------------------------------------------
-- without pksync.runner: pull_tables, and a dry run that only looks

local function exists_locally(client, name)
  local db = client:database()
  if not db then return false end
  local rows = db:query("SELECT to_regclass($1) IS NOT NULL AS present",
    util.quote_ident(client.schema) .. "." .. util.quote_ident(name))
  return rows and rows[1] and (rows[1].present == true or rows[1].present == "t")
end

--- Parents before children by depends_on, within the selection (a cycle
-- is cut where it closes; the pull itself reports it).
local function parents_first(deps_of, selected)
  local wanted, state, order = {}, {}, pksync.array()
  for _, n in ipairs(selected) do wanted[n] = true end
  local function visit(n)
    if state[n] then return end
    state[n] = "visiting"
    for _, d in ipairs(type(deps_of[n]) == "table" and deps_of[n] or {}) do
      if wanted[d] and d ~= n then visit(d) end
    end
    state[n] = "done"
    order[#order + 1] = n
  end
  for _, n in ipairs(selected) do visit(n) end
  return order
end

--- What a pull would do: the sender's tables in pull order, each checked
-- against the local database. Nothing is written anywhere.
local function plan_only(ctx, conn, opts)
  local client = ctx:client()
  local list = ctx:check("listing the tables of " .. conn.site_url, client:fetch_sender_tables(conn))
  local info, deps_of, selected = {}, {}, {}
  for _, t in ipairs(list) do
    info[t.name], deps_of[t.name] = t, t.depends_on
    if not opts.tables then selected[#selected + 1] = t.name end
  end
  for _, name in ipairs(opts.tables or {}) do selected[#selected + 1] = name end
  local order = parents_first(deps_of, selected)
  local report = { dry_run = true, order = order, tables = pksync.array(), seconds = 0 }
  for _, name in ipairs(order) do
    local e = zero_counts { name = name, strategy = opts.strategy or "skip", action = "planned" }
    if not info[name] then
      e.action, e.error, e.reason = "failed", "table_not_found", "the sender does not list it"
    elseif not exists_locally(client, name) then
      e.action, e.error, e.reason = "failed", "table_missing_locally", "create it here first"
    else
      e.reason = output.int(info[name].row_count) .. " rows on the sender"
    end
    report.tables[#report.tables + 1] = e
  end
  return add_totals(report)
end

local function pull_fallback(ctx, conn, opts)
  commands.check_sender(ctx, conn)
  if opts.dry_run then return plan_only(ctx, conn, opts) end
  local started = util.now_ms()
  local strategy = opts.strategy or "skip"
  local out = ctx:check("pulling from " .. conn.site_url, ctx:client():pull_tables(conn, opts.tables,
    { conflict_strategy = strategy, on_progress = opts.on_progress }))
  local report = { dry_run = false, sender_status = "active", order = out.order, cycles = out.cycles,
    passes = out.passes, tables = pksync.array() }
  for _, name in ipairs(out.order) do
    report.tables[#report.tables + 1] = entry_of(name, out.tables[name], strategy)
  end
  report.seconds = (util.now_ms() - started) / 1000
  return add_totals(report)
end

------------------------------------------------------------------------------
-- running and reporting

local function has_runner(client)
  return type(client.sync_connection) == "function"
end

--- The sender's row count per table, for the progress bar. Progress
-- events from a paged pull carry no row_count, so without this the bar
-- could show neither a fraction nor an ETA. Best effort: one request.
local function row_counts(client, conn)
  local counts = {}
  for _, t in ipairs(client:fetch_sender_tables(conn) or {}) do
    if type(t.row_count) == "number" then counts[t.name] = t.row_count end
  end
  return counts
end

local function progress(ctx, conn)
  if not ctx:show_progress() then return nil, function() end end
  local draw, finish = output.progress(ctx.stderr)
  local counts = row_counts(ctx:client(), conn)
  return function(ev)
    if ev.row_count == nil and counts[ev.table] then ev.row_count = counts[ev.table] end
    draw(ev)
  end, finish
end

local function run(ctx, conn, opts)
  local client = ctx:client()
  local on_progress, finish = progress(ctx, conn)
  opts.on_progress = on_progress
  local report
  if has_runner(client) then
    local r, err, detail = client:sync_connection(conn, opts)
    finish()
    report = ctx:check("syncing with " .. conn.site_url, r, err, detail)
  else
    if opts.policy then
      ctx:fail(EXIT_FAILED, "applying " .. opts.policy, "unsupported", "this pksync has no sync_connection (pksync.runner)")
    end
    local ok, r = pcall(pull_fallback, ctx, conn, opts)
    finish()
    if not ok then error(r, 0) end
    report = r
  end
  return report
end

--- The exit code a report earns, and a summary of what failed.
local function outcome(report)
  local failed_tables, offline = 0, 0
  for _, t in ipairs(report.tables or {}) do
    if t.action == "failed" then
      failed_tables = failed_tables + 1
      if t.error == "offline" then offline = offline + 1 end
    end
  end
  local rows = type(report.totals) == "table" and report.totals.failed or 0
  if failed_tables == 0 and (rows or 0) == 0 then return EXIT_OK end
  local summary = str_format("%s rows failed, %d of %d tables failed", output.int(rows or 0), failed_tables,
    #(report.tables or {}))
  if offline > 0 and offline == failed_tables and offline == #report.tables then return EXIT_OFFLINE, summary end
  return EXIT_PARTIAL, summary
end

local function show(ctx, conn, report)
  ctx:emit(report)
  if ctx.quiet or ctx.json then return end
  local status = report.sender_status
  ctx:say(str_format("%s %s%s", report.dry_run and "dry run against" or "pulled from", conn.site_url,
    (status and status ~= null) and (" (sender: " .. tostring(status) .. ")") or ""))
  ctx:lines(output.report_lines(report))
end

local function finish(ctx, conn, report)
  show(ctx, conn, report)
  local code, summary = outcome(report)
  if code ~= EXIT_OK then
    ctx.stderr:write("pksync: ", report.dry_run and "dry run against " or "pulling from ", conn.site_url,
      report.dry_run and ": would be incomplete (" or ": incomplete (", summary, ")\n")
  end
  return code
end

--- pksync pull CONN [TABLE...] [--strategy S] [--policy FILE] [--dry-run]
function _M.pull(ctx)
  local opts = { tables = tables_arg(ctx), strategy = strategy_opt(ctx), policy = policy_opt(ctx),
    dry_run = ctx.opts["dry-run"] == true }
  local conn = commands.receiver(ctx)
  return finish(ctx, conn, run(ctx, conn, opts))
end

--- pksync sync CONN [--policy FILE] [--dry-run]
function _M.sync(ctx)
  local opts = { policy = policy_opt(ctx), dry_run = ctx.opts["dry-run"] == true }
  local conn = commands.receiver(ctx)
  if not has_runner(ctx:client()) then
    -- without the runner a sync is a pull of every table with the
    -- connection's own strategy
    local s = conn.default_conflict_strategy
    opts.strategy = (type(s) == "string" and store.STRATEGIES[s]) and s or nil
  end
  return finish(ctx, conn, run(ctx, conn, opts))
end

_M._entry_of = entry_of
_M._outcome = outcome
return _M
