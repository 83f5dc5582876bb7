--- The store's DDL: connections, transfers and settings tables.
--
-- Columns mirror what PhoenixKit keeps for the same things
-- (phoenix_kit_sync_connections / _transfers), plus what pksync needs to
-- enforce limits itself (rate window, constant-time lookup key).
-- @module pksync.store_ddl
local util = require "pksync.util"

local str_format, pairs, error, tostring = string.format, pairs, error, tostring
local tbl_concat = table.concat

local _M = {}

--- Default table names; `pksync.new{store_tables = {...}}` overrides them.
_M.DEFAULT_TABLES = {
  connections = "pksync_connections",
  transfers = "pksync_transfers",
  settings = "pksync_settings",
  -- the admin page (pksync.admin): sessions, failed logins, sync jobs
  admin_sessions = "pksync_admin_sessions",
  admin_logins = "pksync_admin_logins",
  admin_jobs = "pksync_admin_jobs",
}

--- Resolve the store's table names (validated identifiers).
function _M.table_names(custom)
  local names = {}
  for k, v in pairs(_M.DEFAULT_TABLES) do names[k] = (custom and custom[k]) or v end
  for k, v in pairs(custom or {}) do
    if not _M.DEFAULT_TABLES[k] then error("store_tables: unknown key " .. tostring(k), 3) end
    if not util.valid_ident(v) then error("store_tables: invalid table name for " .. k, 3) end
  end
  return names
end

local CONNECTIONS = [[
CREATE TABLE IF NOT EXISTS %s (
  uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  direction text NOT NULL CHECK (direction IN ('sender', 'receiver')),
  site_url text NOT NULL,
  prefix text,
  auth_token_hash text NOT NULL,
  auth_lookup text NOT NULL,
  status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'active', 'suspended', 'revoked', 'expired')),
  approval_mode text NOT NULL DEFAULT 'auto_approve',
  allowed_tables text[] NOT NULL DEFAULT '{}',
  excluded_tables text[] NOT NULL DEFAULT '{}',
  auto_approve_tables text[] NOT NULL DEFAULT '{}',
  expires_at timestamptz,
  max_downloads integer,
  downloads_used integer NOT NULL DEFAULT 0,
  max_records_total bigint,
  records_downloaded bigint NOT NULL DEFAULT 0,
  max_records_per_request integer NOT NULL DEFAULT 10000 CHECK (max_records_per_request > 0),
  rate_limit_requests_per_minute integer NOT NULL DEFAULT 60,
  download_password_hash text,
  ip_whitelist text[] NOT NULL DEFAULT '{}',
  allowed_hours_start integer CHECK (allowed_hours_start BETWEEN 0 AND 23),
  allowed_hours_end integer CHECK (allowed_hours_end BETWEEN 0 AND 23),
  default_conflict_strategy text NOT NULL DEFAULT 'skip'
    CHECK (default_conflict_strategy IN ('skip', 'overwrite', 'merge', 'append')),
  auto_sync_enabled boolean NOT NULL DEFAULT false,
  auto_sync_tables text[] NOT NULL DEFAULT '{}',
  auto_sync_interval_minutes integer NOT NULL DEFAULT 60,
  approved_at timestamptz,
  suspended_at timestamptz,
  suspended_reason text,
  revoked_at timestamptz,
  revoked_reason text,
  last_connected_at timestamptz,
  last_transfer_at timestamptz,
  total_transfers integer NOT NULL DEFAULT 0,
  total_records_transferred bigint NOT NULL DEFAULT 0,
  total_bytes_transferred bigint NOT NULL DEFAULT 0,
  rate_window_start timestamptz,
  rate_window_count integer NOT NULL DEFAULT 0,
  metadata jsonb NOT NULL DEFAULT '{}',
  inserted_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (site_url, direction)
);
CREATE INDEX IF NOT EXISTS %s ON %s (auth_lookup);
CREATE INDEX IF NOT EXISTS %s ON %s (status);
]]

local TRANSFERS = [[
CREATE TABLE IF NOT EXISTS %s (
  uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  direction text NOT NULL CHECK (direction IN ('send', 'receive')),
  connection_uuid uuid REFERENCES %s (uuid) ON DELETE SET NULL,
  remote_site_url text,
  table_name text NOT NULL,
  records_requested bigint NOT NULL DEFAULT 0,
  records_transferred bigint NOT NULL DEFAULT 0,
  records_created bigint NOT NULL DEFAULT 0,
  records_updated bigint NOT NULL DEFAULT 0,
  records_skipped bigint NOT NULL DEFAULT 0,
  records_failed bigint NOT NULL DEFAULT 0,
  bytes_transferred bigint NOT NULL DEFAULT 0,
  conflict_strategy text,
  status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')),
  error_message text,
  cursor text,
  requester_ip text,
  metadata jsonb NOT NULL DEFAULT '{}',
  started_at timestamptz,
  completed_at timestamptz,
  inserted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS %s ON %s (connection_uuid, table_name);
]]

-- The scheduler's state on each connection (added after the first release,
-- so a store made before it gains the columns on its next migrate):
-- the last automatic run, its outcome and rows, the last successful one,
-- an explicit next due time (backoff, or "run now") and the failure streak.
local SCHEDULE = [[
ALTER TABLE %s
  ADD COLUMN IF NOT EXISTS last_auto_sync_at timestamptz,
  ADD COLUMN IF NOT EXISTS last_auto_sync_status text,
  ADD COLUMN IF NOT EXISTS last_auto_sync_error text,
  ADD COLUMN IF NOT EXISTS last_auto_sync_rows bigint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS last_auto_sync_success_at timestamptz,
  ADD COLUMN IF NOT EXISTS next_auto_sync_at timestamptz,
  ADD COLUMN IF NOT EXISTS auto_sync_failures integer NOT NULL DEFAULT 0;
]]

local SETTINGS = [[
CREATE TABLE IF NOT EXISTS %s (
  key text PRIMARY KEY,
  value jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
]]

-- The admin page's state: a session is known by a digest of its id only;
-- failed logins are counted per client address in a window; a sync job
-- carries its live progress and final report.
local ADMIN = [[
CREATE TABLE IF NOT EXISTS %s (
  id_hash text PRIMARY KEY,
  client_ip text,
  expires_at timestamptz NOT NULL,
  inserted_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS %s (
  client_ip text PRIMARY KEY,
  window_start timestamptz NOT NULL DEFAULT now(),
  failures integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS %s (
  uuid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  connection_uuid uuid,
  status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
  params jsonb NOT NULL DEFAULT '{}',
  progress jsonb NOT NULL DEFAULT '{}',
  report jsonb,
  error text,
  inserted_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
]]

--- The whole DDL for the given table names, safe to run repeatedly.
function _M.ddl(names)
  local q = util.quote_ident
  local c, t, s = names.connections, names.transfers, names.settings
  return tbl_concat({
    "SELECT pg_advisory_xact_lock(hashtext('pksync.migrate'));",
    str_format(CONNECTIONS, q(c), q(c .. "_lookup_idx"), q(c), q(c .. "_status_idx"), q(c)),
    str_format(SCHEDULE, q(c)),
    str_format(TRANSFERS, q(t), q(c), q(t .. "_conn_table_idx"), q(t)),
    str_format(SETTINGS, q(s)),
    str_format(ADMIN, q(names.admin_sessions), q(names.admin_logins), q(names.admin_jobs)),
  }, "\n")
end

return _M
