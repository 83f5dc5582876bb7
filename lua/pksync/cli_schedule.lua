--- `pksync sync --due`, `pksync sync --watch` and `pksync schedule`: the
-- scheduled sync from cron, systemd or a terminal (see pksync.schedule).
-- @module pksync.cli_schedule
local pksync = require "pksync"
local core = require "pksync.core"
local output = require "pksync.cli_output"
local pull = require "pksync.cli_pull"
local commands = require "pksync.cli_commands"
local util = require "pksync.util"

local type, tostring, tonumber, ipairs, pcall, math_min, math_floor = type, tostring, tonumber, ipairs, pcall, math.min, math.floor
local str_format = string.format
local null = pksync.null

local _M = {}

local EXIT_OK, EXIT_FAILED, EXIT_OFFLINE, EXIT_PARTIAL = 0, 1, 3, 4

-- Outcomes that end a run badly, worst first, with their exit codes; any
-- other outcome (ok, skipped, stopped) is a success.
local EXIT_OF = { failed = EXIT_FAILED, not_found = EXIT_FAILED, suspended = EXIT_FAILED,
                  revoked = EXIT_FAILED, offline = EXIT_OFFLINE, partial = EXIT_PARTIAL }
local SEVERITY = { [EXIT_OK] = 0, [EXIT_PARTIAL] = 1, [EXIT_OFFLINE] = 2, [EXIT_FAILED] = 3 }

--- The exit code of a round: 1 when a connection failed (or its sender
-- refused it), else 3 when a sender was offline, else 4 when rows or
-- tables failed, else 0 (also when nothing was due).
local function exit_code(round)
  local code = EXIT_OK
  for _, e in ipairs(round.connections) do
    local c = EXIT_OF[e.outcome] or EXIT_OK
    if SEVERITY[c] > SEVERITY[code] then code = c end
  end
  return code
end

local when = output.when

local function entry_line(e)
  local rows = e.rows and (output.int(e.rows) .. " rows") or "-"
  local line = str_format("%-9s %s  %s", e.outcome, output.cell(e.name, 40), rows)
  if e.error then line = line .. "  (" .. output.cell(e.error, 100) .. ")" end
  if e.outcome == "offline" or e.outcome == "failed" then
    line = line .. "  retry at " .. when(e.next_auto_sync_at)
  end
  return line
end

local function show_round(ctx, round)
  ctx:emit(round)
  if #round.connections == 0 then
    if not ctx.watching then ctx:say("nothing due") end
    return
  end
  for _, e in ipairs(round.connections) do ctx:say(entry_line(e)) end
end

local function run_opts(ctx)
  return { policy = pull.policy_opt(ctx), should_stop = core.stop_requested,
           retry_base_ms = tonumber(ctx.opts["retry-base"]) }
end

local function check_args(ctx)
  local o = ctx.opts
  if o.due and o.watch then ctx:usage("--due and --watch exclude each other") end
  if ctx.args.CONN then ctx:usage("--due and --watch run every due connection: drop CONN") end
  for _, k in ipairs { "dry-run", "mirror", "full" } do
    if o[k] then ctx:usage("--" .. k .. " does not apply to scheduled runs") end
  end
  for _, k in ipairs { "poll", "retry-base" } do
    local v = o[k] and tonumber(o[k])
    if o[k] and (not v or v <= 0) then ctx:usage("--" .. k .. " needs a positive number of milliseconds") end
  end
  if o.poll and not o.watch then ctx:usage("--poll applies to --watch") end
end

--- One round: every due connection once. Returns the round's report.
local function round(ctx, opts)
  local r, err, detail = ctx:store():run_due_connections(opts)
  return ctx:check("running the due connections", r, err, detail)
end

--- Sleep up to ms, in slices, so a stop request is seen within a second.
local function pause(ms)
  local left = ms
  while left > 0 and not core.stop_requested() do
    local slice = math_min(left, 1000)
    core.sleep_ms(slice)
    left = left - slice
  end
end

local function watch(ctx, opts)
  local poll = tonumber(ctx.opts.poll) or 60000
  ctx.watching = true
  ctx:note("watching for due connections every " .. output.seconds(poll / 1000) .. " (SIGTERM or ^C stops)")
  repeat
    local ok, r = pcall(round, ctx, opts)
    if ok then
      show_round(ctx, r)
    else
      -- a store that went away is tried again next round; nothing is held
      ctx:note("round failed: " .. output.cell(type(r) == "table" and (r.err or r.internal) or r, 200))
    end
    pause(poll)
  until core.stop_requested()
  ctx:note("stopped by " .. tostring(core.stop_requested()))
  return EXIT_OK
end

--- pksync sync [CONN] [--due | --watch [--poll MS]] [--policy FILE] ...
-- Without --due or --watch it is pksync.cli_pull's `sync CONN`.
function _M.sync(ctx)
  if not ctx.opts.due and not ctx.opts.watch then
    if not ctx.args.CONN then ctx:usage("missing argument CONN", "or --due / --watch for the scheduled runs") end
    if ctx.opts.poll or ctx.opts["retry-base"] then ctx:usage("--poll and --retry-base apply to --due / --watch") end
    return pull.sync(ctx)
  end
  check_args(ctx)
  ctx:site_url()
  local opts = run_opts(ctx)
  core.stop_signals_watch()
  if ctx.opts.watch then return watch(ctx, opts) end
  local r = round(ctx, opts)
  show_round(ctx, r)
  return exit_code(r)
end

------------------------------------------------------------------------------
-- pksync schedule

local function every(c)
  if not c.auto_sync_enabled then return "off" end
  return "every " .. tostring(c.auto_sync_interval_minutes) .. "m"
end

local function last_result(c)
  if c.last_auto_sync_status == null or c.last_auto_sync_status == nil then return "never run" end
  return c.last_auto_sync_status .. " at " .. when(c.last_auto_sync_at)
end

--- The auto-sync changes the options ask for, or nil when there are none.
local function schedule_changes(ctx)
  local o, attrs, any = ctx.opts, {}, false
  if o.enable and o.disable then ctx:usage("--enable and --disable exclude each other") end
  if o.enable or o.disable then attrs.auto_sync_enabled, any = o.enable == true, true end
  if o.every then
    local n = tonumber(o.every)
    if not n or n < 1 or n ~= math_floor(n) or n > 2 ^ 31 - 1 then ctx:usage("--every needs a whole number of minutes") end
    attrs.auto_sync_interval_minutes, any = n, true
  end
  if o.tables then
    local list = output.split_list(o.tables)
    for _, t in ipairs(list) do
      if not util.valid_ident(t) then ctx:usage("'" .. output.cell(t) .. "' is not a table name") end
    end
    attrs.auto_sync_tables, any = list, true
  end
  if o.now then attrs.next_auto_sync_at, any = "now", true end  -- PostgreSQL's 'now'
  return any and attrs or nil
end

--- pksync schedule [CONN [--enable|--disable] [--every MIN] [--tables a,b] [--now]]
function _M.schedule(ctx)
  local changes = schedule_changes(ctx)
  if changes and not ctx.args.CONN then ctx:usage("name the connection to change: pksync schedule CONN ...") end
  if ctx.args.CONN then
    local conn = commands.receiver(ctx)
    if changes then ctx:check("changing the schedule of " .. conn.site_url, ctx:client():update_connection(conn.uuid, changes)) end
  end
  local state = ctx:check("reading the schedule", ctx:store():schedule_state())
  local docs, rows = pksync.array(), {}
  for _, c in ipairs(state) do
    if c.direction == "receiver" then
      docs[#docs + 1] = c
      rows[#rows + 1] = { output.cell(c.name, 30), every(c), output.next_due(c), last_result(c),
        tostring(c.auto_sync_failures), output.int(c.rows_pulled),
        output.cell(c.last_auto_sync_error ~= null and c.last_auto_sync_error or "", 60) }
    end
  end
  ctx:emit(docs)
  if #rows == 0 then ctx:say("no receiver connections") return EXIT_OK end
  ctx:lines(output.table_lines({ { "NAME" }, { "AUTO SYNC" }, { "NEXT DUE" }, { "LAST RESULT" },
    { "FAILURES", right = true }, { "ROWS PULLED", right = true }, { "ERROR" } }, rows))
  return EXIT_OK
end

return _M
