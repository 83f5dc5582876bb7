--- Pulling tables from a sender into the local PostgreSQL.
--
-- Lua drives the pages; each page is one C call (`imp:run_page`) that
-- streams the HTTP body through the row scanner into COPY and applies the
-- conflict strategy (see src/import.c). Against a pksync sender the
-- `paged_pull` extension walks the whole table by primary key; against a
-- plain PhoenixKit sender, a page that stops short of the table's row count
-- is followed by the rest of the table in the cheapest way the sender
-- offers: `pull-data` by key range (0.2), `table-records` by key (0.1),
-- `table-records` by offset (where nothing else works).
-- @module pksync.pull
local core = require "pksync.core"
local util = require "pksync.util"
local plan = require "pksync.plan"
local catalog = require "pksync.catalog"
local transport = require "pksync.transport"
local incremental = require "pksync.incremental"
local digest = require "pksync.digest"

local type, ipairs, pairs, pcall, error, tostring = type, ipairs, pairs, pcall, error, tostring
local setmetatable = setmetatable
local str_format = string.format
local tbl_concat = table.concat
local json_encode, json_decode = core.json_encode, core.json_decode
local now = core.monotonic_ms

local _M = {}

local DEFAULT_BATCH_ROWS = 10000
local RECORDS_PAGE = 100          -- table-records' own cap

------------------------------------------------------------------------------
-- peer facts

--- The sender's column names, in its order, its columns by name, and its
-- primary key's column names when it says (PhoenixKit 0.2 and pksync do).
local function remote_column_names(self, conn, table_name, opts)
  local schema, err, detail = self:fetch_table_schema(conn, table_name, { timeout = opts.timeout })
  if not schema then return nil, err, detail end
  local names, by_name = {}, {}
  for _, c in ipairs(schema.columns) do
    names[#names + 1] = c.column_name
    by_name[c.column_name] = c
  end
  local keys = type(schema.primary_key) == "table" and schema.primary_key or nil
  return names, by_name, keys
end

--- The sender's row count for a table (for plain senders), or nil.
local function remote_row_count(self, conn, table_name, opts)
  if type(opts.row_count) == "number" then return opts.row_count end
  local tables = self:fetch_sender_tables(conn, { timeout = opts.timeout })
  for _, t in ipairs(tables or {}) do
    if t.name == table_name and type(t.row_count) == "number" then return t.row_count end
  end
  return nil
end

------------------------------------------------------------------------------
-- transfers (when the store is migrated)

local function stored_connection_uuid(self, conn)
  if type(conn.uuid) ~= "string" then return nil end
  local c = self:get_connection(conn.uuid)
  return c and c.uuid or nil
end

local function open_transfer(self, conn, table_name, strategy, opts)
  if not self:store_migrated() then return nil end
  local conn_uuid = stored_connection_uuid(self, conn)
  if opts.resume and conn_uuid then
    local list = self:list_transfers { connection_uuid = conn_uuid, table_name = table_name,
      direction = "receive", limit = 1 }
    local last = list and list[1]
    if last and last.status ~= "completed" and type(last.cursor) == "string" then
      self:update_transfer(last.uuid, { status = "in_progress", error_message = core.null })
      return last
    end
  end
  return self:create_transfer { direction = "receive", connection_uuid = conn_uuid,
    remote_site_url = conn.site_url, table_name = table_name, conflict_strategy = strategy,
    status = "in_progress", started_at = "now" }
end

local function save_progress(self, transfer, result, cursor, status, message)
  if not transfer then return end
  local base = transfer.resumed_from or {}
  local fields = {
    records_transferred = (base.records_transferred or 0) + result.records_transferred,
    records_created = (base.records_created or 0) + result.records_imported,
    records_updated = (base.records_updated or 0) + result.records_updated,
    -- rows left as they were: conflicts skipped and rows equal to the local ones
    records_skipped = (base.records_skipped or 0) + result.records_skipped + result.records_unchanged,
    records_failed = (base.records_failed or 0) + result.records_failed,
    bytes_transferred = (base.bytes_transferred or 0) + result.bytes,
    metadata = { path = result.path, pages = result.pages, unknown_columns = result.unknown_columns,
                 records_unchanged = result.records_unchanged, records_deleted = result.records_deleted,
                 ranges_compared = result.ranges_compared, ranges_pulled = result.ranges_pulled,
                 error_sample = result.error_sample },
  }
  if cursor ~= nil then fields.cursor = cursor end
  if status then
    fields.status = status
    if status ~= "in_progress" then fields.completed_at = "now" end
  end
  if message then fields.error_message = message end
  self:update_transfer(transfer.uuid, fields)
end

------------------------------------------------------------------------------
-- one page

local function new_result(table_name, strategy)
  return { table = table_name, strategy = strategy, path = "pull-data", records_transferred = 0,
    records_imported = 0, records_updated = 0, records_skipped = 0, records_unchanged = 0, records_failed = 0,
    records_filtered = 0,
    pages = 0, bytes = 0, seconds = 0, unknown_columns = setmetatable({}, core.array_mt) }
end

--- Add names to a list of unknown columns, once each.
local function add_unknown(list, names, known)
  if type(names) ~= "table" then return end
  for _, n in ipairs(names) do
    local dup = known and known[n]
    for _, m in ipairs(list) do
      if dup then break end
      dup = m == n
    end
    if not dup then list[#list + 1] = n end
  end
end

local function add_page(result, res)
  -- keys the rows carried that the schema did not declare are unknown too
  add_unknown(result.unknown_columns, res.unknown_columns)
  result.pages = result.pages + 1
  result.records_transferred = result.records_transferred + res.rows
  result.records_imported = result.records_imported + res.imported
  result.records_updated = result.records_updated + res.updated
  result.records_skipped = result.records_skipped + res.skipped
  result.records_unchanged = result.records_unchanged + (res.unchanged or 0)
  result.records_failed = result.records_failed + res.failed
  result.records_filtered = result.records_filtered + res.filtered_rows
  result.bytes = result.bytes + res.bytes
  if res.error_sample and not result.error_sample then result.error_sample = res.error_sample end
end

--- Map a page that did not commit to nil, err, detail.
local function page_failure(res)
  if res.status ~= 200 then
    local answer = { status = res.status, body = res.body, json = res.body and json_decode(res.body) }
    return transport.data_failure(answer, "table_not_found")
  end
  if not res.valid then
    return nil, "invalid_response", { http_status = 200, message = res.invalid_reason }
  end
  if res.success ~= true then
    if type(res.error) == "string" then return nil, res.error, { http_status = 200, message = res.error } end
    return nil, "invalid_response", { http_status = 200, message = "success is not true" }
  end
  if not res.saw_array then
    return nil, "invalid_response", { http_status = 200, message = "the answer has no row array" }
  end
  return nil, "invalid_response", { http_status = 200, message = "page not committed" }
end

local function endpoint(self, ctx, name)
  local prefix = ctx.conn.prefix
  if util.is_null(prefix) then prefix = self.prefix end
  return transport.endpoint_url(ctx.conn.site_url, prefix, name)
end

--- Request body of a page, as "prefix" .. JSON(after) .. "}" when paging
-- by cursor: the C side builds the next page's body the same way to fetch
-- it ahead (see import.c).
local function page_body(ctx, fields)
  fields.auth_token_hash = ctx.conn.auth_token_hash
  fields.table_name = ctx.table
  fields.uuid_format = "text"
  return json_encode(fields)
end

--- Make the pull's importer the one for this array key and mode (a new
-- one when either changes).
local function use_importer(ctx, array_key, into_target)
  local kind = array_key .. (into_target and "+direct" or "")
  if ctx.importer_kind == kind then return end
  if ctx.importer then ctx.importer:close() end
  ctx.importer, ctx.importer_kind = core.importer_new(ctx.spec(array_key, into_target)), kind
end

local function run_page(self, ctx, name, body, page)
  page = page or {}
  local res, err, detail = ctx.importer:run_page(ctx.db, self:http(), {
    url = endpoint(self, ctx, name), body = body, after = page.after, key_floor = page.key_floor,
    timeout = ctx.opts.timeout or self.pull_timeout, connect_timeout = ctx.opts.connect_timeout,
    max_body = self.max_body, next_http = page.next_http, next_prefix = page.next_prefix,
    next_suffix = page.next_suffix })
  if not res then
    if err == "database_error" and detail and detail.sqlstate == "55P03" then err = "lock_timeout" end
    return nil, err, detail
  end
  if not res.committed then return page_failure(res) end
  if not res.saw_array then return page_failure(res) end
  add_page(ctx.result, res)
  return res
end

local function progress(ctx, done)
  local cb = ctx.opts.on_progress
  if not cb then return true end
  local r = ctx.result
  local ok, err = pcall(cb, { table = ctx.table, path = r.path, pages = r.pages, rows = r.records_transferred,
    imported = r.records_imported, updated = r.records_updated, skipped = r.records_skipped,
    unchanged = r.records_unchanged,
    failed = r.records_failed, row_count = ctx.row_count, done = done,
    seconds = (now() - ctx.started) / 1000 })
  if ok then return true end
  return nil, "on_progress failed: " .. tostring(err)
end

------------------------------------------------------------------------------
-- paths

--- paged_pull: keyset pages until the sender has no more; each next page
-- is fetched while the current one is imported. With a key range
-- ({after=, upto=}, the table_digest extension), only that range's rows,
-- and no resumable cursor is kept.
local function pull_paged(self, ctx, range)
  local cursor = not range and ctx.cursor or nil
  local fields = { conflict_strategy = ctx.strategy, limit = ctx.opts.page_size }
  if range then
    fields.key_after = range.after and setmetatable(range.after, core.array_mt)
    fields.key_upto = range.upto and setmetatable(range.upto, core.array_mt)
  end
  local base = page_body(ctx, fields)
  local prefix = base:sub(1, -2) .. ',"after":'
  local page = { next_http = ctx.opts.prefetch ~= false and self:prefetch_http() or nil,
                 next_prefix = prefix, next_suffix = "}" }
  repeat
    page.after = cursor
    local body = cursor and (prefix .. json_encode(cursor) .. "}") or base
    local res, err, detail = run_page(self, ctx, "pull-data", body, page)
    if not res then return nil, err, detail end
    if res.has_more and not res.next_after then
      return nil, "invalid_response", { message = "has_more without next_after" }
    end
    cursor = res.next_after
    if not range then save_progress(self, ctx.transfer, ctx.result, cursor or core.null) end
    local ok, perr = progress(ctx, not res.has_more)
    if not ok then return nil, "callback_failed", { message = perr } end
  until not res.has_more
  return true
end

--- A body with the row filter `id_start` (a JSON integer: `from` is the
-- importer's decimal text of an int64, which no Lua number holds exactly).
local function from_key(body, from)
  if not from then return body end
  return body:sub(1, -2) .. ',"id_start":' .. from .. "}"
end

--- PhoenixKit 0.2: pull-data by key range, `max_records_per_request` rows
-- an answer in key order, each from the key after the last one received.
-- @return true, or false when the sender ignores the filter (0.1: its
--   answer was the table's first rows again, applied idempotently), or nil, err, detail
local function pull_data_keyset(self, ctx, from)
  local base = page_body(ctx, { conflict_strategy = ctx.strategy })
  local first = true
  -- staged until the sender shows it applies the filter: an older one's
  -- answer repeats the rows already there
  use_importer(ctx, "data", false)
  repeat
    local res, err, detail = run_page(self, ctx, "pull-data", from_key(base, from), { key_floor = from })
    if not res then return nil, err, detail end
    if res.filtered ~= true then
      if first then return false end
      return nil, "invalid_response", { message = "the sender stopped applying id_start" }
    end
    if first then
      ctx.result.path, first = "pull-data-keyset", false
      use_importer(ctx, "data", ctx.direct)
    end
    if res.rows > 0 and not res.keys_ordered then
      return nil, "invalid_response", { message = "the sender's rows are not in key order from id_start" }
    end
    local more = (res.truncated or res.has_more) and res.rows > 0 and res.next_key ~= nil
    local ok, perr = progress(ctx, not more)
    if not ok then return nil, "callback_failed", { message = perr } end
    from = res.next_key
  until not more
  return true
end

--- PhoenixKit 0.1: table-records by key, 100 rows a page, the first from
-- the start (0.1 orders by the key) and each next one from the key after
-- the last (0.1 passes id_start to its query unchecked and sends no flag,
-- so each page is checked: ascending keys, none below the bound).
-- @return true, or false when the pages do not follow the key (then only
--   offsets work), or nil, err, detail
local function records_keyset(self, ctx)
  local base = page_body(ctx, { limit = RECORDS_PAGE, offset = 0 })
  local from
  repeat
    local res, err, detail = run_page(self, ctx, "table-records", from_key(base, from), { key_floor = from })
    if not res then return nil, err, detail end
    if res.rows > 0 and not res.keys_ordered then return false end
    local more = res.rows >= RECORDS_PAGE and res.next_key ~= nil
    local ok, perr = progress(ctx, not more)
    if not ok then return nil, "callback_failed", { message = perr } end
    from = res.next_key
  until not more
  ctx.result.path = "table-records-keyset"
  return true
end

--- Any sender: table-records by offset from the start, 100 rows a page.
local function records_offset(self, ctx)
  ctx.result.path = "table-records"
  local offset = 0
  repeat
    local res, err, detail = run_page(self, ctx, "table-records", page_body(ctx, { limit = RECORDS_PAGE, offset = offset }))
    if not res then return nil, err, detail end
    offset = offset + res.rows
    local ok, perr = progress(ctx, res.rows < RECORDS_PAGE)
    if not ok then return nil, "callback_failed", { message = perr } end
  until res.rows < RECORDS_PAGE
  return true
end

--- A plain sender (PhoenixKit, or pksync with extensions off): one
-- pull-data answer; when it was cut, the rest of the table, keyset paths
-- first where the key is a single integer (rows that come again are
-- applied idempotently by the strategy).
local function pull_plain(self, ctx)
  local res, err, detail = run_page(self, ctx, "pull-data", page_body(ctx, { conflict_strategy = ctx.strategy }))
  if not res then return nil, err, detail end
  local count = ctx.row_count
  local short = res.truncated or res.has_more or (count ~= nil and res.rows < count)
  local ok, perr = progress(ctx, not short)
  if not ok then return nil, "callback_failed", { message = perr } end
  if not short then return true end
  if ctx.key_column and res.keys_ordered and res.next_key then
    ok, err, detail = pull_data_keyset(self, ctx, res.next_key)
    if ok ~= false then return ok, err, detail end
  end
  use_importer(ctx, "records", false)
  if ctx.key_column then
    ok, err, detail = records_keyset(self, ctx)
    if ok ~= false then return ok, err, detail end
  end
  return records_offset(self, ctx)
end

------------------------------------------------------------------------------
-- pull_table_data

local function check_args(conn, table_name, opts)
  if type(conn) ~= "table" then error("bad argument #1 to 'pull_table_data' (connection table expected)", 3) end
  if type(table_name) ~= "string" then
    error("bad argument #2 to 'pull_table_data' (table name expected)", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then error("bad argument #3 to 'pull_table_data' (table expected)", 3) end
end

--- Whether the hook handed back the local row as it was: the same table
-- with the same fields (a hook may edit the local row in place and return it).
local function unchanged_local(keep, local_row, before)
  if keep ~= local_row then return false end
  for k, v in pairs(keep) do
    if before[k] ~= v then return false end
  end
  for k in pairs(before) do
    if keep[k] == nil then return false end
  end
  return true
end

--- The custom strategy's resolve step for a batch of staged rows: the hook
-- sees (local_row, remote_row) for every key that exists locally and returns
-- the row to keep (nil or the untouched local row keep it as it is); the
-- chosen rows are written by one update for the batch. Runs inside the
-- page's transaction; an error stops the table (reported as "resolve").
local function resolver(ctx, resolve)
  local pairs_sql, update_sql = plan.resolve_statements(ctx.plan)
  local db = ctx.db
  return function(first, last)
    local rows, err = db:query(pairs_sql, first, last)
    if not rows then error("reading conflicting rows: " .. tostring(err), 0) end
    local chosen = {}
    for _, r in ipairs(rows) do
      local local_row = json_decode(r.local_row)
      local before = {}
      for k, v in pairs(local_row) do before[k] = v end
      local keep = resolve(local_row, json_decode(r.remote_row))
      if keep ~= nil and not unchanged_local(keep, local_row, before) then
        if type(keep) ~= "table" then error("must return a row table or nil", 0) end
        chosen[#chosen + 1] = "[" .. json_encode(keep) .. "," .. r.local_key .. "]"
      end
    end
    if #chosen == 0 then return 0 end
    local ok, uerr = db:query(update_sql, "[" .. tbl_concat(chosen, ",") .. "]")
    if not ok then error("writing the resolved rows: " .. tostring(uerr), 0) end
    return #chosen
  end
end

--- Run fn() with the import's lock_timeout for its statements only: inside
-- the caller's transaction (an atomic pull) until that ends, otherwise in a
-- transaction of its own, so the shared session's setting never changes.
-- @return fn's results (nil, err, detail when the setting failed)
local function with_lock_timeout(ctx, fn)
  local db = ctx.db
  local own = not db:in_transaction()
  if own then
    local ok, e, d = db:exec("BEGIN")
    if not ok then return nil, e, d end
  end
  local a, b, c = db:query("SELECT set_config('lock_timeout', $1, true)", ctx.lock_timeout .. "ms")
  if a then a, b, c = fn() end
  if own then db:exec(a ~= nil and "COMMIT" or "ROLLBACK") end
  return a, b, c
end

local stage_counter = 0
local function stage_suffix()
  stage_counter = stage_counter + 1
  return str_format("%d_%d", math.floor(now()) % 1000000, stage_counter)
end

--- The key a plain sender's pages can follow: a single integer primary
-- key, the same column of an integer type on the sender (and its key, if
-- it names one).
local function keyset_column(facts, remote_by_name, remote_keys)
  local keys = facts.keys
  if #keys ~= 1 or not catalog.INTEGER_TYPES[keys[1].type] then return nil end
  local name = keys[1].name
  local theirs = remote_by_name[name]
  if not theirs or not catalog.INTEGER_TYPES[theirs.data_type] then return nil end
  if remote_keys and (#remote_keys ~= 1 or remote_keys[1] ~= name) then return nil end
  return name
end

--- Prepare everything a pull needs; nothing is requested from the sender
-- until the local side is known to be able to take the rows.
local function prepare(self, conn, table_name, opts)
  local strategy = opts.conflict_strategy or "skip"
  if not plan.STRATEGIES[strategy] then
    return nil, "invalid_strategy", { message = "unknown conflict strategy " .. tostring(strategy) }
  end
  if type(conn.site_url) ~= "string" or type(conn.auth_token_hash) ~= "string" then
    return nil, "missing_connection_info", { message = "the connection lacks site_url or auth_token_hash" }
  end
  local err, detail = transport.check_secure(self, conn.site_url)
  if err then return nil, err, detail end
  -- a sender must never write into our connections, transfers or settings
  for _, t in pairs(self.store_tables) do
    if t == table_name then
      return nil, "reserved_table", { message = table_name .. " is one of pksync's own store tables" }
    end
  end
  local db
  db, err, detail = self:database()
  if not db then return nil, err, detail end
  -- the local side first: refuse before any request
  local facts
  facts, err, detail = plan.inspect(db, self.schema, table_name, strategy)
  if not facts then return nil, err, detail end
  local remote, remote_by_name, remote_keys = remote_column_names(self, conn, table_name, opts)
  if not remote then return nil, remote_by_name, remote_keys end
  local p
  p, err, detail = plan.build(db, facts, remote, { remap = opts.remap })
  if not p then return nil, err, detail end
  local local_names = {}
  for _, c in ipairs(facts.columns) do local_names[c.name] = true end
  return { db = db, plan = p, strategy = strategy, local_names = local_names, remote = remote,
           remote_by_name = remote_by_name, key_column = keyset_column(facts, remote_by_name, remote_keys) }
end

--- Commit an atomic pull when everything arrived and no row failed, else
-- roll it back. A COMMIT that fails (a deferred constraint, say) or that
-- would only roll back an aborted transaction means nothing was kept.
local function end_atomic(ctx, ok, err, detail)
  local r, db = ctx.result, ctx.db
  local why
  if not ok then
    db:exec("ROLLBACK")
  elseif r.records_failed > 0 then
    db:exec("ROLLBACK")
    why = { message = "rows failed: " .. tostring(r.error_sample) }
  elseif db:transaction_status() ~= "in_transaction" then
    db:exec("ROLLBACK")
    why = { message = "the commit was refused: the transaction had failed" }
  else
    local done, cerr, cdetail = db:exec("COMMIT")
    if not done then
      db:exec("ROLLBACK")
      why = { message = "the commit was refused: " .. tostring(cerr),
              sqlstate = type(cdetail) == "table" and cdetail.sqlstate or nil }
    end
  end
  if why then
    for _, k in ipairs { "records_imported", "records_updated", "records_skipped", "records_unchanged" } do
      r[k] = 0
    end
    return nil, "atomic_failed", why
  end
  return ok, err, detail
end

local EMPTY = "the local table is empty"

--- Why an incremental pull cannot run (nil when it can): it needs the
-- sender's table_digest extension, rows here, no remapping or resume, and
-- the same primary key on both sides (names and types), so that both order
-- and bound the ranges alike.
local function incremental_refusal(self, ctx, prep, features, direct)
  if not features.table_digest then return "the sender does not offer table_digest" end
  if direct or digest.has_rows(ctx.db, self.schema, ctx.table) ~= true then return EMPTY end
  if ctx.opts.remap and plan.keys_mapped(ctx.db, ctx.plan) ~= false then
    return "keys of this table or its parents were mapped to other local keys"
  end
  if ctx.cursor then return "an interrupted pull is resumed" end
  local facts = digest.describe(ctx.db, self.schema, ctx.table)
  if not facts then return "the local table has no primary key" end
  local local_cols = catalog.columns(ctx.db, self.schema, ctx.table)
  if not local_cols then return "the local columns could not be read" end
  local local_type = {}
  for _, c in ipairs(local_cols) do local_type[c.column_name] = c.data_type end
  for _, k in ipairs(facts.keys) do
    local theirs = prep.remote_by_name[k.name]
    if not theirs or theirs.data_type ~= local_type[k.name] then
      return "the primary key differs from the sender's"
    end
  end
  return nil, facts
end

--- An incremental pull's state (see pksync.incremental).
local function incremental_state(self, ctx, prep, facts)
  local columns = {}
  for _, name in ipairs(prep.remote) do
    if prep.local_names[name] then columns[#columns + 1] = name end
  end
  return { client = self, conn = ctx.conn, db = ctx.db, facts = facts, table = ctx.table,
           columns = columns, mirror = ctx.opts.mirror == true, timeout = ctx.opts.timeout,
           range_rows = ctx.opts.digest_rows,
           result = ctx.result,
           pull_range = function(after, upto) return pull_paged(self, ctx, { after = after, upto = upto }) end,
           pull_all = function() return pull_paged(self, ctx) end }
end

local function finish(self, ctx, ok, err, detail)
  local r = ctx.result
  r.seconds = (now() - ctx.started) / 1000
  local unknown = setmetatable({}, core.array_mt)
  add_unknown(unknown, ctx.plan.unknown)
  add_unknown(unknown, r.unknown_columns, ctx.local_names)
  r.unknown_columns = unknown
  if ctx.importer then ctx.importer:close() end
  if ctx.opts.atomic then
    ok, err, detail = end_atomic(ctx, ok, err, detail)
  end
  if ctx.drop_stage then ctx.db:exec(ctx.drop_stage) end
  if ok then
    save_progress(self, ctx.transfer, r, core.null, "completed")
    r.transfer_uuid = ctx.transfer and ctx.transfer.uuid
    self:log("info", "pulled %s: %d rows, %d imported, %d updated, %d unchanged, %d skipped, %d failed (%s, %d pages)",
      ctx.table, r.records_transferred, r.records_imported, r.records_updated, r.records_unchanged,
      r.records_skipped, r.records_failed, r.path, r.pages)
    return r
  end
  save_progress(self, ctx.transfer, r, nil, "failed", tostring(err))
  self:log("warn", "pull of %s failed: %s", ctx.table, tostring(err))
  detail = detail or {}
  detail.result = r
  return nil, err, detail
end

--- Pull one table from a sender into the same-named local table.
-- @param conn the receiver connection (`site_url`, `auth_token_hash`, optional `prefix`, `uuid`)
-- @param table_name the table
-- @param opts `conflict_strategy` (skip, overwrite, merge, append), `timeout`
--   (ms per page), `atomic` (all or nothing), `batch_rows`, `page_size`,
--   `on_progress(event)`, `resume` (continue an interrupted pull), `direct`
--   (false: never COPY straight into an empty target), `incremental` (pull
--   only the key ranges whose digests differ, where the sender offers
--   table_digest: path "incremental"), `mirror` (incremental, and delete
--   local rows of the compared ranges that the sender no longer has),
--   `digest_rows` (rows per first-level digest range, 1000)
-- @return `{records_transferred, records_imported, records_updated,
--   records_skipped, records_failed, error_sample, pages, seconds, path,
--   unknown_columns, transfer_uuid}`, and for an incremental pull
--   `ranges_compared, ranges_pulled, records_deleted, sender_changed` or nil, err, detail (detail.result has
--   the counts committed before the failure)
function _M.pull_table_data(self, conn, table_name, opts)
  check_args(conn, table_name, opts)
  opts = opts or {}
  -- a name from a user or a peer that is no identifier names no table there
  if not util.valid_ident(table_name) then
    return nil, "table_not_found", { message = "no table is named " .. str_format("%q", util.display(table_name)) }
  end
  if opts.conflict_strategy == "custom" and type(opts.resolve) ~= "function" then
    error("pull_table_data: the custom strategy needs a resolve function", 2)
  end
  if opts.transform ~= nil and type(opts.transform) ~= "function" then
    error("pull_table_data: transform must be a function", 2)
  end
  local prep, err, detail = prepare(self, conn, table_name, opts)
  if not prep then return nil, err, detail end
  local db, p = prep.db, prep.plan
  local ctx = { conn = conn, table = table_name, opts = opts, db = db, plan = p, strategy = prep.strategy,
                started = now(), result = new_result(table_name, prep.strategy), local_names = prep.local_names,
                -- an import waits this long for a lock on its table, then fails cleanly
                lock_timeout = math.floor(opts.lock_timeout or self.lock_timeout) }
  local features = self:peer_features(conn)
  -- only plain senders are paged by the key's values (pksync's cursors carry it)
  if not features.paged_pull then ctx.key_column = prep.key_column end
  -- pksync senders page to the end by themselves; the count only feeds
  -- progress there. Plain senders need it to tell a full table from a cut one.
  if features.paged_pull then
    ctx.row_count = opts.row_count
  else
    ctx.row_count = remote_row_count(self, conn, table_name, opts)
  end
  ctx.transfer = open_transfer(self, conn, table_name, prep.strategy, opts)
  if ctx.transfer and ctx.transfer.cursor and opts.resume and features.paged_pull then
    ctx.cursor = ctx.transfer.cursor
    ctx.transfer.resumed_from = ctx.transfer
  end
  if opts.atomic then
    local ok, e = db:exec("BEGIN")
    if not ok then return nil, "database_error", { message = e } end
  end
  -- COPY straight into an empty target where no key can come twice: every
  -- page of a pksync sender; a plain sender's first answer and its keyset
  -- pages past it (pull_plain stages whatever may repeat rows)
  local direct = false
  if (features.paged_pull or ctx.key_column) and not ctx.cursor and opts.direct ~= false then
    local derr, ddetail
    direct, derr, ddetail = with_lock_timeout(ctx, function() return plan.direct_ok(db, p) end)
    if direct == nil then
      local state = ddetail and ddetail.sqlstate
      return finish(self, ctx, nil, state == "55P03" and "lock_timeout" or "database_error",
        { message = derr, sqlstate = state })
    end
  end
  if not direct or not features.paged_pull then
    local create, drop = plan.stage(p, stage_suffix())
    local ok, e, d = with_lock_timeout(ctx, function() return db:exec(create) end)
    if not ok then
      -- the staging table copies the target's columns: a lock on the target stops it here
      local state = type(d) == "table" and d.sqlstate or nil
      return finish(self, ctx, nil, state == "55P03" and "lock_timeout" or "database_error",
        { message = e, sqlstate = state })
    end
    ctx.drop_stage = drop
  end
  local extra = { transform = opts.transform, after_batch = opts.resolve and resolver(ctx, opts.resolve),
                  lock_timeout = ctx.lock_timeout, key_column = ctx.key_column }
  ctx.direct = direct
  ctx.spec = function(array_key, into_target)
    -- COPY straight into the target needs no apply step: a batch is a page
    local batch = opts.batch_rows or (into_target and opts.page_size) or DEFAULT_BATCH_ROWS
    return plan.importer_spec(p, into_target, array_key, batch, nil, extra)
  end
  use_importer(ctx, "data", direct)
  local ok
  -- mirroring is an incremental pull that also deletes
  local wanted = opts.incremental or opts.mirror
  local refusal, facts
  if wanted then refusal, facts = incremental_refusal(self, ctx, prep, features, direct) end
  if opts.mirror and refusal and refusal ~= EMPTY then
    return finish(self, ctx, nil, "mirror_unavailable",
      { message = "mirror needs an incremental pull: " .. refusal })
  end
  if wanted and not refusal then
    ok, err, detail = incremental.run(incremental_state(self, ctx, prep, facts))
  elseif features.paged_pull then
    ok, err, detail = pull_paged(self, ctx)
  else
    ok, err, detail = pull_plain(self, ctx)
  end
  return finish(self, ctx, ok, err, detail)
end

------------------------------------------------------------------------------
-- pull_tables

--- Parents before children by `depends_on`, within the selection. A cycle
-- is broken where it is found (the table that closes it goes first) and
-- reported as the list of its tables.
local function order_tables(deps_of, selected)
  local wanted, state, order, cycles = {}, {}, {}, {}
  for _, n in ipairs(selected) do wanted[n] = true end
  local stack = {}
  local function visit(n)
    if state[n] == "done" then return end
    if state[n] == "visiting" then
      local cycle = {}
      for i = #stack, 1, -1 do
        table.insert(cycle, 1, stack[i])
        if stack[i] == n then break end
      end
      cycles[#cycles + 1] = setmetatable(cycle, core.array_mt)
      return
    end
    state[n] = "visiting"
    stack[#stack + 1] = n
    for _, d in ipairs(deps_of[n] or {}) do
      if wanted[d] and d ~= n then visit(d) end
    end
    stack[#stack] = nil
    state[n] = "done"
    order[#order + 1] = n
  end
  local sorted = {}
  for _, n in ipairs(selected) do sorted[#sorted + 1] = n end
  table.sort(sorted)
  for _, n in ipairs(sorted) do visit(n) end
  return setmetatable(order, core.array_mt), setmetatable(cycles, core.array_mt)
end

local MAX_PASSES = 3

-- Options of pull_tables that are not pull_table_data's.
local TABLES_ONLY = { order = true, dry_run = true, before_table = true, table_options = true }

local function table_opts(opts, name, info)
  local o = {}
  for k, v in pairs(opts) do
    if not TABLES_ONLY[k] then o[k] = v end
  end
  o.remap, o.row_count = true, info.row_count
  if opts.table_options then
    local extra, err = opts.table_options(name, info)
    if not extra then return nil, err end
    for k, v in pairs(extra) do o[k] = v end
  end
  return o
end

--- Pull one table of pull_tables; returns the entry for out.tables.
local function pull_one(self, conn, name, info, opts)
  if not info then
    return { error = "table_not_found", detail = { message = "the sender does not list " .. util.display(name) } }
  end
  if not util.valid_ident(name) then
    return { error = "invalid_table_name", detail = { message = "not a table name the protocol carries" } }
  end
  local skip = opts.before_table and opts.before_table(name, info)
  if skip then return skip end
  local o, oerr = table_opts(opts, name, info)
  if not o then return { error = "hook_failed", detail = { message = oerr } } end
  local r, e, d = _M.pull_table_data(self, conn, name, o)
  return r or { error = e, detail = d }
end

--- Count a retried table once: rows imported by earlier passes come back as
-- skipped (skip, custom) or unchanged (overwrite, merge; updated where the
-- later pass rewrote them) in the later pass; report them as imported, as
-- they were.
local function fold_earlier(r, previous)
  -- every pass's rows crossed the wire
  r.records_transferred = r.records_transferred + previous.records_transferred
  local earlier = previous.records_imported
  r.records_imported = r.records_imported + earlier
  for _, field in ipairs { "records_skipped", "records_unchanged", "records_updated" } do
    local taken = math.min(earlier, r[field])
    r[field] = r[field] - taken
    earlier = earlier - taken
  end
  r.earlier = previous
end

--- Passes over the tables until none has failed rows or a pass makes no progress.
local function pull_passes(self, conn, out, info, opts)
  local todo = out.order
  for pass = 1, MAX_PASSES do
    out.passes = pass
    local again, progress = {}, false
    for _, name in ipairs(todo) do
      local previous = out.tables[name]
      local r = pull_one(self, conn, name, info[name], opts)
      if r.records_failed then
        r.passes = pass
        progress = progress or r.records_imported > 0 or r.records_updated > 0
        if previous and previous.records_imported then fold_earlier(r, previous) end
        -- append adds every row again, so it is never retried
        if r.records_failed > 0 and r.strategy ~= "append" then again[#again + 1] = name end
      end
      out.tables[name] = r
    end
    if #again == 0 or not progress then break end
    todo = again
  end
end

--- Pull several tables, parents first, carrying keys across tables: a
-- remote row that matches a local row on a unique constraint is not
-- duplicated, its key is mapped to the local one, and foreign keys of later
-- tables are rewritten through that map. Tables that had failed rows are
-- pulled again (up to 3 passes) while another pass still makes progress,
-- which settles rows that referenced a table pulled later.
-- @param tables_or_nil names to pull (nil: every table the sender lists)
-- @param opts as pull_table_data, applied to every table, plus `dry_run`
--   (everything inside one transaction that is rolled back), `order` (pull in
--   this order instead of by dependencies), `before_table(name, info)` (return
--   an entry to skip the table) and `table_options(name, info)` (extra options
--   per table, or nil, err)
-- @return `{order, cycles, passes, tables = {name -> result | {error=, detail=}}}`
--   or nil, err, detail when the sender's table list cannot be read
function _M.pull_tables(self, conn, tables_or_nil, opts)
  if type(conn) ~= "table" then error("bad argument #1 to 'pull_tables' (connection table expected)", 2) end
  opts = opts or {}
  local list, err, detail = self:fetch_sender_tables(conn, { timeout = opts.timeout })
  if not list then return nil, err, detail end
  local info, deps_of, selected = {}, {}, {}
  for _, t in ipairs(list) do
    info[t.name] = t
    deps_of[t.name] = t.depends_on
  end
  for _, name in ipairs(tables_or_nil or {}) do selected[#selected + 1] = name end
  if not tables_or_nil then
    for _, t in ipairs(list) do selected[#selected + 1] = t.name end
  end
  local out = { tables = {}, passes = 0 }
  out.order, out.cycles = order_tables(deps_of, selected)
  if opts.order then out.order = setmetatable(util.copy(opts.order), core.array_mt) end
  local db
  db, err, detail = self:database()
  if not db then return nil, err, detail end
  if opts.dry_run then
    local ok, berr = db:exec("BEGIN")
    if not ok then return nil, "database_error", { message = berr } end
  end
  local ok, kerr = db:exec(plan.keymap_ddl() .. "; TRUNCATE " .. util.quote_ident(plan.KEYMAP))
  if not ok then
    if opts.dry_run then db:exec("ROLLBACK") end
    return nil, "database_error", { message = kerr }
  end
  pull_passes(self, conn, out, info, opts)
  -- a dry run reports what would change and keeps nothing (transfers included)
  if opts.dry_run then db:exec("ROLLBACK") end
  return out
end


_M._order_tables = order_tables
return _M
