--- `pksync pull` and `pksync sync`: run `client:sync_connection` and
-- print its report (see pksync.sync for the report's shape).
-- @module pksync.cli_pull
local pksync = require "pksync"
local util = require "pksync.util"
local store = require "pksync.store"
local output = require "pksync.cli_output"
local commands = require "pksync.cli_commands"

local type, tostring, ipairs, io_open = type, tostring, ipairs, io.open
local str_format = string.format
local null = pksync.null

local _M = {}

local EXIT_OK, EXIT_OFFLINE, EXIT_PARTIAL = 0, 3, 4

------------------------------------------------------------------------------
-- arguments

-- "custom" hands conflicts to the policy's resolve hook (pksync.sync).
local function strategy_opt(ctx)
  local s = ctx.opts.strategy
  if s and not store.STRATEGIES[s] and s ~= "custom" then
    ctx:usage("--strategy must be skip, overwrite, merge, append or custom")
  end
  return s
end

--- The --policy file (checked to be readable), or nil.
function _M.policy_opt(ctx)
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
-- running and reporting

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
  local on_progress, finish = progress(ctx, conn)
  opts.on_progress = on_progress
  local r, err, detail = ctx:client():sync_connection(conn, opts)
  finish()
  return ctx:check("syncing with " .. conn.site_url, r, err, detail)
end

--- The exit code a report earns, and a summary of what failed.
local EXIT_OF = { ok = EXIT_OK, offline = EXIT_OFFLINE, partial = EXIT_PARTIAL }

local function outcome(ctx, report)
  local kind, summary = ctx:client():report_outcome(report)
  return EXIT_OF[kind], summary
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
  local code, summary = outcome(ctx, report)
  if code ~= EXIT_OK then
    ctx.stderr:write("pksync: ", report.dry_run and "dry run against " or "pulling from ", conn.site_url,
      report.dry_run and ": would be incomplete (" or ": incomplete (", summary, ")\n")
  end
  return code
end

--- The re-sync options: incremental unless --full, deletes with --mirror.
local function resync_opts(ctx, opts)
  if ctx.opts.mirror and ctx.opts.full then ctx:usage("--mirror needs an incremental pull: drop --full") end
  opts.dry_run = ctx.opts["dry-run"] == true
  opts.mirror = ctx.opts.mirror == true
  opts.incremental = ctx.opts.full ~= true
  return opts
end

--- pksync pull CONN [TABLE...] [--strategy S] [--policy FILE] [--dry-run] [--mirror|--full]
function _M.pull(ctx)
  local opts = resync_opts(ctx, { tables = tables_arg(ctx), strategy = strategy_opt(ctx), policy = _M.policy_opt(ctx) })
  local conn = commands.receiver(ctx)
  return finish(ctx, conn, run(ctx, conn, opts))
end

--- pksync sync CONN [--policy FILE] [--dry-run] [--mirror|--full]
function _M.sync(ctx)
  local opts = resync_opts(ctx, { policy = _M.policy_opt(ctx) })
  local conn = commands.receiver(ctx)
  return finish(ctx, conn, run(ctx, conn, opts))
end

return _M
