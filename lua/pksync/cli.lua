--- The `pksync` command-line tool: argument parsing, the command table,
-- error reporting and exit codes. The commands themselves live in
-- pksync.cli_commands, pksync.cli_pull and pksync.cli_serve.
--
--     local code = require("pksync.cli").main({ "status", "https://peer.example" })
--
-- Every failure is reported as one line on stderr
-- (`pksync: <what failed>: <err> (<message>)`) and an exit code; a Lua
-- traceback is never shown (set PKSYNC_DEBUG=1 to see one for internal errors).
-- @module pksync.cli
local pksync = require "pksync"
local output = require "pksync.cli_output"
local commands = require "pksync.cli_commands"
local pull = require "pksync.cli_pull"
local schedule = require "pksync.cli_schedule"

local type, tostring, tonumber, ipairs, pairs, error, xpcall, pcall = type, tostring, tonumber, ipairs, pairs, error, xpcall, pcall
local setmetatable, getmetatable = setmetatable, getmetatable
local math_min, math_floor = math.min, math.floor
local tbl_concat, tbl_insert = table.concat, table.insert
local os_getenv, os_execute = os.getenv, os.execute
local io = io
local traceback = debug.traceback

local _M = { _VERSION = pksync._VERSION }

--- Exit codes (also in `pksync --help` and docs/cli.md).
local EXIT = { ok = 0, failed = 1, usage = 2, offline = 3, partial = 4, internal = 70 }
_M.EXIT = EXIT

------------------------------------------------------------------------------
-- options and commands

-- Every option the tool knows; `value` options take an argument (--x V or --x=V).
local OPTIONS = {
  db = { value = "CONNINFO", help = "local database (libpq conninfo; default: libpq's PG* variables)" },
  ["site-url"] = { value = "URL", help = "our public URL (default: the site_url setting)" },
  json = { help = "print exactly one JSON document on stdout" },
  timeout = { value = "MS", help = "HTTP timeout per request (and per pull page), in ms" },
  quiet = { help = "no progress and no chatter (data and errors are still printed)" },
  help = { help = "show help" },
  prefix = { value = "P", help = "the peer's PhoenixKit prefix (default /phoenix_kit)" },
  direction = { value = "D", help = "sender or receiver" },
  status = { value = "S", help = "pending, active, suspended, revoked or expired" },
  name = { value = "N", help = "connection name" },
  url = { value = "URL", help = "the other site's URL" },
  token = { value = "RAW", help = "the raw token (a receiver needs the sender's)" },
  password = { value = "P", help = "the receiver's incoming password" },
  ["allowed-tables"] = { value = "a,b", help = "tables the peer may pull (default: all)" },
  ["excluded-tables"] = { value = "a,b", help = "tables the peer may never pull" },
  ["no-notify"] = { help = "do not register the sender on the receiver" },
  reason = { value = "R", help = "why (kept with the connection)" },
  limit = { value = "N", help = "rows to show (default 10, the peer caps at 100)" },
  offset = { value = "N", help = "rows to skip" },
  strategy = { value = "S", help = "skip, overwrite, merge, append or custom (default: the policy's, else the connection's)" },
  policy = { value = "FILE", help = "a Lua sync policy file" },
  ["dry-run"] = { help = "show what would happen, change nothing" },
  mirror = { help = "also delete local rows the sender no longer has (incremental re-syncs only)" },
  full = { help = "pull whole tables, never incrementally by digests" },
  listen = { value = "ADDR", help = "address:port for nginx (default 127.0.0.1:8080)" },
  threads = { value = "N", help = "threads in nginx's pksync pool (default 8)" },
  start = { help = "write the configuration and run nginx in the foreground" },
  dir = { value = "DIR", help = "nginx's directory for --start (default: a new temp dir)" },
  enable = { help = "enable (settings: the sync API; schedule CONN: auto-sync)" },
  disable = { help = "disable (settings: the sync API; schedule CONN: auto-sync)" },
  ["incoming-mode"] = { value = "M", help = "auto_accept, require_approval, require_password or deny_all" },
  ["incoming-password"] = { value = "P", help = "password for incoming connections (\"\" clears it)" },
  ["site-url-set"] = { value = "URL", help = "store our public URL as the site_url setting" },
  every = { value = "MIN", help = "auto-sync interval in minutes" },
  tables = { value = "a,b", help = "auto-sync only these tables (\"\": every table the sender lists)" },
  now = { help = "make the connection due now" },
  due = { help = "sync every connection whose auto-sync is due, once (no CONN)" },
  watch = { help = "stay in the foreground and sync connections as they fall due (no CONN)" },
  poll = { value = "MS", help = "--watch: how often to look for due connections (default 60000)" },
  ["retry-base"] = { value = "MS", help = "first retry delay of an offline sender, doubled per failure (default 60000)" },
  ["admin-password"] = { value = "P", help = "the admin page's password (\"-\" reads it from stdin, \"\" clears it)" },
}

local GLOBAL_OPTIONS = { "db", "site-url", "json", "timeout", "quiet", "help" }

local LIFECYCLE = { "approve", "suspend", "reactivate", "revoke", "delete" }

-- name, positional arguments, `rest` (any number more), options, handler.
local COMMANDS = {
  { "status", args = { "URL" }, opts = { "prefix" }, run = commands.status,
    summary = "ask a site whether it accepts connections" },
  { "connections list", opts = { "direction", "status" }, run = commands.list,
    summary = "list connections" },
  { "connections add", opts = { "name", "direction", "url", "token", "password", "prefix",
      "allowed-tables", "excluded-tables", "no-notify" }, run = commands.add,
    summary = "create a connection (a sender registers on its receiver)" },
  { "tables", args = { "CONN" }, run = commands.tables, summary = "list the sender's tables" },
  { "schema", args = { "CONN", "TABLE" }, run = commands.schema, summary = "show a sender table's columns" },
  { "preview", args = { "CONN", "TABLE" }, opts = { "limit", "offset" }, run = commands.preview,
    summary = "show some rows of a sender table" },
  { "pull", args = { "CONN" }, rest = "TABLE", opts = { "strategy", "policy", "dry-run", "mirror", "full" }, run = pull.pull,
    summary = "pull tables (default: all) into the local database" },
  { "sync", args = { "CONN" }, optional_args = true,
    opts = { "policy", "dry-run", "mirror", "full", "due", "watch", "poll", "retry-base" }, run = schedule.sync,
    summary = "sync a connection as its settings and policy say (--due, --watch: the scheduled ones)" },
  { "schedule", args = { "CONN" }, optional_args = true, opts = { "enable", "disable", "every", "tables", "now" },
    run = schedule.schedule,
    summary = "show (or with CONN, change) the receiver connections' auto-sync: next due, last result, failures" },
  { "serve", opts = { "listen", "threads", "start", "dir", "prefix" }, run = commands.serve,
    summary = "print (or --start) an nginx configuration serving this site" },
  { "settings", opts = { "enable", "disable", "incoming-mode", "incoming-password", "site-url-set",
      "admin-password" },
    run = commands.settings, summary = "show or change this site's sync settings" },
}
for i, verb in ipairs(LIFECYCLE) do
  local reason = (verb == "suspend" or verb == "revoke") and { "reason" } or nil
  tbl_insert(COMMANDS, 3 + i, { "connections " .. verb, args = { "CONN" }, opts = reason,
    run = commands.lifecycle, verb = verb, summary = verb .. " a connection (the peer is told)" })
end

local BY_NAME = {}
for _, c in ipairs(COMMANDS) do BY_NAME[c[1]] = c end

------------------------------------------------------------------------------
-- failures: raised as tables, turned into a line and an exit code by main

local Failure = {}

local function one_line(s)
  return (tostring(s):gsub("%s*\n%s*", " "):gsub("%c", " "):gsub("%s+$", ""))
end

local function raise(code, what, err, message)
  error(setmetatable({ code = code, what = what, err = err, message = message }, Failure), 0)
end

local function usage(err, message)
  raise(EXIT.usage, "usage", err, message or "see 'pksync --help'")
end

------------------------------------------------------------------------------
-- help

local function usage_line(c)
  local parts = { "pksync", c[1] }
  for _, a in ipairs(c.args or {}) do parts[#parts + 1] = c.optional_args and ("[" .. a .. "]") or a end
  if c.rest then parts[#parts + 1] = "[" .. c.rest .. "...]" end
  for _, o in ipairs(c.opts or {}) do
    local def = OPTIONS[o]
    parts[#parts + 1] = "[--" .. o .. (def.value and (" " .. def.value) or "") .. "]"
  end
  return tbl_concat(parts, " ")
end

local function option_lines(names)
  local items = {}
  for _, o in ipairs(names) do
    local def = OPTIONS[o]
    items[#items + 1] = { "--" .. o .. (def.value and (" " .. def.value) or ""), def.help }
  end
  return output.pairs_lines(items, "  ")
end

local EXIT_HELP = {
  "Exit codes:",
  "  0   success",
  "  1   the operation failed (the library or the peer said no)",
  "  2   usage error (unknown command or option, missing argument)",
  "  3   the peer is offline or unreachable",
  "  4   completed, but some rows or tables failed",
  "  70  internal error",
}

local function general_help()
  local lines = { "Usage: pksync COMMAND [ARGS] [OPTIONS]", "",
    "PhoenixKit Sync from the command line: connections, peers' tables, pulls.", "", "Commands:" }
  local items = {}
  for _, c in ipairs(COMMANDS) do
    local name = c[1]
    for _, a in ipairs(c.args or {}) do name = name .. " " .. a end
    items[#items + 1] = { name, c.summary }
  end
  for _, l in ipairs(output.pairs_lines(items, "  ")) do lines[#lines + 1] = l end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "CONN is a connection's uuid, its exact name, or its site URL."
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Global options (anywhere on the line):"
  for _, l in ipairs(option_lines(GLOBAL_OPTIONS)) do lines[#lines + 1] = l end
  lines[#lines + 1] = ""
  for _, l in ipairs(EXIT_HELP) do lines[#lines + 1] = l end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "'pksync COMMAND --help' describes one command; docs/cli.md has the details."
  return lines
end

local function command_help(c)
  local lines = { "Usage: " .. usage_line(c), "", c.summary }
  if c.opts and #c.opts > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Options:"
    for _, l in ipairs(option_lines(c.opts)) do lines[#lines + 1] = l end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Global options: --db CONNINFO --site-url URL --json --timeout MS --quiet --help"
  return lines
end

------------------------------------------------------------------------------
-- parsing

--- Split argv into options and words; options may come anywhere.
local function parse(argv)
  local opts, words, only_words = {}, {}, false
  local i = 1
  while argv[i] ~= nil do
    local a = argv[i]
    if only_words or a == "-" or a:sub(1, 1) ~= "-" then
      words[#words + 1] = a
    elseif a == "--" then
      only_words = true
    elseif a == "-h" then
      opts.help = true
    else
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:match("^%-%-(.+)$")
      local def = name and OPTIONS[name]
      if not def then usage("unknown option " .. one_line(a)) end
      if def.value then
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then usage("option --" .. name .. " needs a value (" .. def.value .. ")") end
        end
        opts[name] = value
      elseif value ~= nil then
        usage("option --" .. name .. " takes no value")
      else
        opts[name] = true
      end
    end
    i = i + 1
  end
  return opts, words
end

--- The command named by the first word(s); the rest are its arguments.
local function find_command(words)
  local first = words[1]
  if first == "connections" then
    if not words[2] then usage("missing subcommand", "list, add, " .. tbl_concat(LIFECYCLE, ", ")) end
    local c = BY_NAME["connections " .. words[2]]
    if not c then usage("unknown subcommand 'connections " .. one_line(words[2]) .. "'") end
    return c, 3
  end
  local c = BY_NAME[first]
  if not c or first == "connections" then usage("unknown command '" .. one_line(first) .. "'") end
  return c, 2
end

local function check_options(c, opts)
  local allowed = {}
  for _, o in ipairs(GLOBAL_OPTIONS) do allowed[o] = true end
  for _, o in ipairs(c.opts or {}) do allowed[o] = true end
  for o in pairs(opts) do
    if not allowed[o] then usage("option --" .. o .. " does not apply to 'pksync " .. c[1] .. "'") end
  end
end

local function bind_args(c, words, first)
  local args, rest = {}, {}
  local n = #(c.args or {})
  for i = 1, n do
    local w = words[first + i - 1]
    if w == nil and not c.optional_args then usage("missing argument " .. c.args[i], usage_line(c)) end
    args[c.args[i]] = w
  end
  for i = first + n, #words do
    if not c.rest then usage("unexpected argument '" .. one_line(words[i]) .. "'", usage_line(c)) end
    rest[#rest + 1] = words[i]
  end
  return args, rest
end

local is_url = commands.is_url

local function check_globals(opts)
  if opts.timeout then
    local t = tonumber(opts.timeout)
    if not t or t <= 0 or t ~= math_floor(t) then usage("--timeout needs a positive number of milliseconds") end
  end
  if opts["site-url"] and not is_url(opts["site-url"]) then usage("--site-url must be an http(s) URL") end
end

------------------------------------------------------------------------------
-- the context handed to every command

local Ctx = {}
Ctx.__index = Ctx

--- Print lines on stdout (human output; nothing in --json mode).
function Ctx:say(...)
  if self.json then return end
  for _, l in ipairs { ... } do self.stdout:write(l, "\n") end
end

--- Print an array of lines on stdout (human output).
function Ctx:lines(list)
  if self.json then return end
  for _, l in ipairs(list) do self.stdout:write(l, "\n") end
end

--- Print the command's JSON document (once) in --json mode.
function Ctx:emit(doc)
  if not self.json then return end
  self.stdout:write(output.json(doc), "\n")
  self.emitted = true
end

--- A note on stderr (not in --quiet mode).
function Ctx:note(msg)
  if not self.quiet then self.stderr:write("pksync: ", one_line(msg), "\n") end
end

--- Fail with an exit code: `ctx:fail(code, what, err, message)`.
function Ctx:fail(code, what, err, message)
  raise(code, what, err, message)
end

--- A usage error (exit 2).
function Ctx:usage(err, message)
  usage(err, message)
end

--- Return v, or fail with err (exit 3 for an offline peer, else 1).
function Ctx:check(what, v, err, detail)
  if v ~= nil then return v end
  local message
  if type(detail) == "table" then
    message = detail.message or detail.reason
    if (message == nil or message == pksync.null) and detail.http_status then message = "HTTP " .. tostring(detail.http_status) end
  end
  raise(err == "offline" and EXIT.offline or EXIT.failed, what, err or "failed", message)
end

--- The pksync client (created on first use).
function Ctx:client()
  if self._client then return self._client end
  local o = { db = self.opts.db or "" }  -- "": libpq's own defaults (PGHOST, PGDATABASE, ...)
  o.site_url = self.opts["site-url"]
  local t = tonumber(self.opts.timeout)
  if t then o.timeout, o.connect_timeout, o.pull_timeout = t, math_min(t, 10000), t end
  self._client = pksync.new(o)
  return self._client
end

--- The client with its store migrated (idempotent; done once per run).
function Ctx:store()
  local client = self:client()
  if not self._migrated then
    self:check("opening the store", client:migrate())
    self._migrated = true
  end
  return client
end

--- Our public URL: --site-url, else the stored site_url setting.
function Ctx:site_url()
  local client = self:store()
  if client.site_url then return client.site_url end
  local url = commands.stored_site_url(client)
  if not url then
    usage("no site URL for this site", "pass --site-url URL or store it with 'pksync settings --site-url-set URL'")
  end
  client.site_url = url
  return url
end

--- The connection named by CONN (uuid, exact name or site URL).
-- @param want "receiver"/"sender" to prefer when the reference matches both
function Ctx:connection(ref, want)
  return commands.resolve(self, ref, want)
end

--- True when a progress bar should be drawn on stderr.
function Ctx:show_progress()
  if self.quiet or self.json then return false end
  local forced = os_getenv("PKSYNC_PROGRESS")
  if forced == "1" then return true end
  if forced == "0" then return false end
  local ok = os_execute("test -t 2")
  return ok == true or ok == 0
end

------------------------------------------------------------------------------
-- main

local function run(ctx, argv)
  local opts, words = parse(argv)
  if #words == 0 then
    if opts.help then ctx.json = false ctx:lines(general_help()) return EXIT.ok end
    usage("missing command")
  end
  if opts.help then
    -- help never fails: an unknown or partial command gets the general help
    local ok, c = pcall(find_command, words)
    ctx.json = false
    ctx:lines(ok and command_help(c) or general_help())
    return EXIT.ok
  end
  local c, first = find_command(words)
  check_options(c, opts)
  check_globals(opts)
  ctx.opts, ctx.json, ctx.quiet, ctx.command = opts, opts.json == true, opts.quiet == true, c
  ctx.args, ctx.rest = bind_args(c, words, first)
  return c.run(ctx) or EXIT.ok
end

local function report_failure(ctx, f)
  local line = "pksync: " .. one_line(f.what) .. ": " .. one_line(f.err)
  if f.message ~= nil and f.message ~= pksync.null and f.message ~= "" then
    line = line .. " (" .. one_line(f.message) .. ")"
  end
  ctx.stderr:write(line, "\n")
  if ctx.json and not ctx.emitted then
    ctx:emit { error = f.err, message = f.message, context = f.what, exit_code = f.code }
  end
  return f.code
end

local function close(ctx)
  if ctx._client then pcall(ctx._client.close, ctx._client) end
end

--- Run the tool.
-- @param argv the arguments (the script's `arg`: [1] is the first argument)
-- @param streams optional `{stdout=, stderr=}` (anything with write/flush)
-- @return the exit code
function _M.main(argv, streams)
  streams = streams or {}
  local ctx = setmetatable({ stdout = streams.stdout or io.stdout, stderr = streams.stderr or io.stderr,
    opts = {}, json = false, quiet = false }, Ctx)
  for _, a in ipairs(argv or {}) do
    if a == "--json" then ctx.json = true end  -- so even a usage error answers in JSON
  end
  local ok, res = xpcall(function() return run(ctx, argv or {}) end, function(e)
    if getmetatable(e) == Failure then return e end
    return { internal = one_line(e), trace = traceback(tostring(e), 2) }
  end)
  close(ctx)
  if ok then return res end
  if getmetatable(res) == Failure then return report_failure(ctx, res) end
  ctx.stderr:write("pksync: internal error: ", res.internal, "\n")
  if ctx.json and not ctx.emitted then
    ctx:emit { error = "internal_error", message = res.internal, exit_code = EXIT.internal }
  end
  if os_getenv("PKSYNC_DEBUG") then ctx.stderr:write(res.trace, "\n") end
  return EXIT.internal
end

_M._parse = parse
_M._commands = COMMANDS
return _M
