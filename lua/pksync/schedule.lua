--- Scheduled sync: running the receiver connections that are due, once
-- each, with exactly one runner per connection however many processes,
-- nginx workers and hosts share the database.
--
-- A connection is due when it is an active receiver with
-- `auto_sync_enabled`, and its `next_auto_sync_at` has come or, without
-- one, its last automatic run is `auto_sync_interval_minutes` old (never
-- run: due now). The rule is SQL (`store.due_connections`); a runner
-- claims a connection with a PostgreSQL session advisory lock
-- (`store.claim_connection`), so a second runner skips it and a runner
-- that dies leaves nothing held.
--
--     local report = client:run_due_connections { policy = "/etc/pksync/policy.lua" }
-- @module pksync.schedule
local core = require "pksync.core"
local util = require "pksync.util"
local policy_mod = require "pksync.policy"

local type, ipairs, pairs, pcall, error, tostring = type, ipairs, pairs, pcall, error, tostring
local setmetatable = setmetatable
local str_format, str_gsub, tbl_concat, tbl_sort = string.format, string.gsub, table.concat, table.sort
local null = core.null

local _M = {}

local DEFAULT_RETRY_BASE_MS = 60000

local function never() return false end

------------------------------------------------------------------------------
-- one run

--- The tables of a scheduled run: `auto_sync_tables`, or nil (every table
-- the sender lists, as the policy chooses).
local function scheduled_tables(conn)
  local list = conn.auto_sync_tables
  if type(list) ~= "table" or #list == 0 then return nil end
  return list
end

--- The policy of a scheduled run: the connection's own file
-- (`metadata.policy_file`), else the caller's, else the client's.
local function policy_source(self, conn, opts)
  local meta = type(conn.metadata) == "table" and conn.metadata or {}
  if type(meta.policy_file) == "string" and meta.policy_file ~= "" then return meta.policy_file end
  return opts.policy or self.policy
end

--- The policy with a stop check in front of its strategy hook: a stop
-- request ends the run before the next table starts (the hook runs before
-- any page of a table is fetched), and the page in flight is finished by
-- the progress check.
local function stoppable_policy(source, should_stop)
  local policy = {}
  if source ~= nil then
    local loaded, err = policy_mod.load(source)
    if not loaded then return nil, err end
    for k, v in pairs(loaded) do policy[k] = v end
  end
  local strategy = policy.strategy
  policy.strategy = function(name, conn)
    if should_stop() then error("stopped", 0) end
    if strategy then return strategy(name, conn) end
    return nil
  end
  return policy
end

local function stoppable_progress(on_progress, should_stop)
  return function(event)
    if on_progress then on_progress(event) end
    if should_stop() then error("stopped", 0) end
  end
end

local function message_of(err, detail)
  local msg = type(detail) == "table" and detail.message
  if type(msg) == "string" and msg ~= "" then return err .. ": " .. msg end
  return tostring(err)
end

--- What the sender's refusal does locally: a sender that no longer knows
-- the connection suspends it (as PhoenixKit's live check does), one that
-- reports it suspended or revoked passes that status on.
-- @return outcome, or nil when the refusal is no verdict on the connection
local function take_sender_verdict(self, conn, err, detail)
  if err == "not_found" then
    self:suspend_connection(conn.uuid, "Remote site reports connection not found")
    return "not_found"
  end
  local status = type(detail) == "table" and detail.status
  if err == "sender_not_active" and (status == "suspended" or status == "revoked") then
    self:record_peer_status(conn.uuid, status)
    return status
  end
  return nil
end

--- Run a claimed connection; returns its entry (not yet recorded).
local function run_claimed(self, conn, opts, should_stop)
  local entry = { uuid = conn.uuid, name = conn.name, site_url = conn.site_url }
  local policy, perr = stoppable_policy(policy_source(self, conn, opts), should_stop)
  if not policy then
    entry.outcome, entry.error = "failed", "invalid_policy: " .. tostring(perr)
    return entry
  end
  local report, err, detail = self:sync_connection(conn, {
    tables = scheduled_tables(conn), policy = policy, timeout = opts.timeout, page_size = opts.page_size,
    on_progress = stoppable_progress(opts.on_progress, should_stop) })
  if not report then
    entry.outcome = (err == "offline" and "offline") or take_sender_verdict(self, conn, err, detail) or "failed"
    entry.error = message_of(err, detail)
    return entry
  end
  entry.report = report
  entry.rows = report.totals.transferred
  entry.outcome, entry.error = self:report_outcome(report)
  if should_stop() then entry.outcome, entry.error = "stopped", "stopped by " .. tostring(should_stop()) end
  return entry
end

--- Run one due connection now, if this runner can claim it: sync it under
-- its policy and record the outcome (backoff, status changes).
-- @param conn a connection (only its uuid is used: the claim re-reads it)
-- @param opts as `run_due_connections`
-- @return entry `{uuid, name, site_url, outcome = ok|partial|offline|failed|
--   stopped|suspended|revoked|not_found|skipped, error, rows, report,
--   failures, next_auto_sync_at}` or nil, err, detail (the store failed)
function _M.run_scheduled_connection(self, conn, opts)
  if type(conn) ~= "table" or type(conn.uuid) ~= "string" then
    error("bad argument #1 to 'run_scheduled_connection' (connection table expected)", 2)
  end
  opts = opts or {}
  local should_stop = opts.should_stop or never
  local claimed, err, detail = self:claim_connection(conn.uuid)
  if claimed == nil then return nil, err, detail end
  if claimed == false then
    return { uuid = conn.uuid, name = conn.name, site_url = conn.site_url, outcome = "skipped",
             error = "another runner holds it, or it is no longer due" }
  end
  local ok, entry = pcall(run_claimed, self, claimed, opts, should_stop)
  if not ok then entry = { uuid = claimed.uuid, name = claimed.name, site_url = claimed.site_url,
                           outcome = "failed", error = "internal: " .. tostring(entry) } end
  local row
  row, err, detail = self:record_auto_sync(claimed.uuid, { outcome = entry.outcome, error = entry.error,
    rows = entry.rows, retry_base_ms = opts.retry_base_ms or DEFAULT_RETRY_BASE_MS })
  self:release_connection(claimed.uuid)
  if not row then return nil, err, detail end
  entry.failures, entry.next_auto_sync_at = row.auto_sync_failures, row.next_auto_sync_at
  local quiet = entry.outcome == "ok" or entry.outcome == "skipped"
  self:log(quiet and "info" or "warn", "scheduled sync of %s: %s%s",
    util.base_url(claimed.site_url), entry.outcome, entry.error and (" (" .. entry.error .. ")") or "")
  return entry
end

--- Run every connection that is due, once each.
-- @param opts `policy` (a policy table or file for connections without
--   their own `metadata.policy_file`; default the client's), `timeout`,
--   `page_size`, `on_progress`, `retry_base_ms` (first retry delay of an
--   offline sender, doubled per failure, capped at the interval; 60000),
--   `should_stop()` (truthy: finish the page in flight and stop)
-- @return `{connections = {entry...}, counts = {outcome -> n}}` or nil, err, detail
function _M.run_due_connections(self, opts)
  opts = opts or {}
  local should_stop = opts.should_stop or never
  local due, err, detail = self:due_connections()
  if not due then return nil, err, detail end
  local out = { connections = setmetatable({}, core.array_mt), counts = {} }
  for _, conn in ipairs(due) do
    if should_stop() then break end
    local entry
    entry, err, detail = _M.run_scheduled_connection(self, conn, opts)
    if not entry then return nil, err, detail end
    out.connections[#out.connections + 1] = entry
    out.counts[entry.outcome] = (out.counts[entry.outcome] or 0) + 1
  end
  return out
end

------------------------------------------------------------------------------
-- metrics (Prometheus text exposition format 0.0.4)

local function label_value(v)
  v = tostring(v)
  v = str_gsub(v, "\\", "\\\\")
  v = str_gsub(v, "\n", "\\n")
  return (str_gsub(v, '"', '\\"'))
end

local function labels(list)
  local parts = {}
  for i = 1, #list, 2 do parts[#parts + 1] = list[i] .. '="' .. label_value(list[i + 1]) .. '"' end
  return "{" .. tbl_concat(parts, ",") .. "}"
end

local function number(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v == math.floor(v) and v > -1e15 and v < 1e15 then return str_format("%d", v) end
  return str_format("%.17g", v)
end

local function family(lines, name, kind, help, samples)
  lines[#lines + 1] = "# HELP " .. name .. " " .. help
  lines[#lines + 1] = "# TYPE " .. name .. " " .. kind
  for _, s in ipairs(samples) do lines[#lines + 1] = name .. s[1] .. " " .. number(s[2]) end
end

local function status_counts(state)
  local counts, keys = {}, {}
  for _, c in ipairs(state) do
    local k = c.direction .. "\0" .. c.status
    if not counts[k] then keys[#keys + 1] = k counts[k] = 0 end
    counts[k] = counts[k] + 1
  end
  tbl_sort(keys)
  local samples = {}
  for _, k in ipairs(keys) do
    local d, s = k:match("^(.-)%z(.*)$")
    samples[#samples + 1] = { labels { "direction", d, "status", s }, counts[k] }
  end
  return samples
end

local function per_receiver(state, value)
  local samples = {}
  for _, c in ipairs(state) do
    if c.direction == "receiver" then
      local v, extra = value(c)
      if v ~= nil and v ~= null then
        local l = { "connection", c.uuid, "name", c.name }
        for _, x in ipairs(extra or {}) do l[#l + 1] = x end
        samples[#samples + 1] = { labels(l), v }
      end
    end
  end
  return samples
end

local function request_samples(requests)
  local samples = {}
  for _, r in ipairs(requests) do
    samples[#samples + 1] = { labels { "endpoint", r.endpoint, "status", r.status }, r.count }
  end
  tbl_sort(samples, function(x, y) return x[1] < y[1] end)
  return samples
end

--- The schedule's metrics in Prometheus' text format: connections by
-- status and direction; per receiver connection: auto-sync enabled, seconds
-- since the last successful automatic sync, seconds until due, the last
-- outcome, consecutive failures, rows pulled.
-- @param opts optional `requests` (`{{endpoint=, status=, count=}...}`,
--   the host's request counts: pksync.nginx keeps them)
-- @return text or nil, err, detail
function _M.schedule_metrics(self, opts)
  local state, err, detail = self:schedule_state()
  if not state then return nil, err, detail end
  local lines = {}
  family(lines, "pksync_connections", "gauge", "Connections by direction and status.", status_counts(state))
  family(lines, "pksync_auto_sync_enabled", "gauge", "1 when the receiver connection syncs by schedule.",
    per_receiver(state, function(c) return c.auto_sync_enabled and 1 or 0 end))
  family(lines, "pksync_seconds_since_last_success", "gauge",
    "Seconds since the last successful scheduled sync (absent: none yet).",
    per_receiver(state, function(c) return c.seconds_since_success end))
  family(lines, "pksync_seconds_until_due", "gauge", "Seconds until the next scheduled sync (negative: overdue).",
    per_receiver(state, function(c) return c.seconds_until_due end))
  family(lines, "pksync_last_sync_outcome", "gauge", "The outcome of the last scheduled sync (value 1).",
    per_receiver(state, function(c)
      if c.last_auto_sync_status == null then return nil end
      return 1, { "outcome", c.last_auto_sync_status }
    end))
  family(lines, "pksync_auto_sync_failures", "gauge", "Consecutive failed scheduled syncs.",
    per_receiver(state, function(c) return c.auto_sync_failures end))
  family(lines, "pksync_rows_pulled_total", "counter", "Rows received on the connection (every recorded pull).",
    per_receiver(state, function(c) return c.rows_pulled end))
  if opts and opts.requests then
    family(lines, "pksync_requests_total", "counter", "Sync API requests served, by endpoint and HTTP status.",
      request_samples(opts.requests))
  end
  return tbl_concat(lines, "\n") .. "\n"
end

return _M
