--- How rows of one table are imported: local columns and their kinds, the
-- staging table, and the SQL that applies a batch with a conflict strategy.
--
-- Every identifier here comes from the local catalog and is validated and
-- quoted; values (table names for the key map, row ranges) are parameters.
-- @module pksync.plan
local core = require "pksync.core"
local util = require "pksync.util"
local catalog = require "pksync.catalog"

local ipairs, pairs, type, tostring = ipairs, pairs, type, tostring
local str_format, tbl_concat = string.format, table.concat
local setmetatable = setmetatable
local json_encode = core.json_encode

local _M = {}

_M.STRATEGIES = { skip = true, overwrite = true, merge = true, append = true, custom = true }
local NEEDS_KEY = { skip = true, overwrite = true, merge = true, custom = true }

local ROW = "__pksync_row"
_M.KEYMAP = "pksync_keymap"

-- Column kinds the C converter knows, by PostgreSQL type name.
local SCALAR_KINDS = {
  bool = "bool", int2 = "int", int4 = "int", int8 = "int", oid = "int",
  float4 = "float", float8 = "float", numeric = "numeric", json = "json", jsonb = "json",
  bytea = "bytea", uuid = "uuid", text = "text", varchar = "text", bpchar = "text",
  name = "text", char = "text", citext = "text",
}

-- Types whose = holds only for identical values; every other column is
-- compared by its text, so that 1.10 and 1.1, 0 and -0, or 'A' and 'a' in
-- a case-blind type still count as a change.
local IDENTITY_EQUAL = {
  bool = true, int2 = true, int4 = true, int8 = true, oid = true, bytea = true, uuid = true,
  date = true, timestamp = true, timestamptz = true,
}

local function kind_of(typname, typtype)
  return SCALAR_KINDS[typname] or (typtype == "e" and "text") or "generic"
end

--- The local table's columns with their import kinds.
function _M.local_columns(db, schema, name)
  local rows, err, detail = catalog.column_types(db, schema, name)
  if not rows then return nil, err, detail end
  local cols = {}
  for _, r in ipairs(rows) do
    local col = { name = r.name, not_null = r.not_null, generated = r.generated,
                  identity_always = r.identity_always, sql_type = r.sql_type,
                  identity_equal = r.category ~= "A" and IDENTITY_EQUAL[r.typname] or false }
    if r.category == "A" and r.elem_typname ~= core.null then
      col.kind = "array"
      col.elem_kind = kind_of(r.elem_typname, r.elem_typtype)
      col.elem_delim = r.elem_delim
    else
      col.kind = kind_of(r.typname, r.typtype)
    end
    cols[#cols + 1] = col
  end
  return cols
end

------------------------------------------------------------------------------
-- SQL builders

local q = util.quote_ident

local function list(names, prefix)
  local out = {}
  for i, n in ipairs(names) do out[i] = (prefix or "") .. q(n) end
  return tbl_concat(out, ", ")
end

local function names_of(cols)
  local out = {}
  for i, c in ipairs(cols) do out[i] = c.name end
  return out
end

local function key_join(keys, a, b)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = str_format("%s.%s = %s.%s", a, q(k), b, q(k)) end
  return tbl_concat(parts, " AND ")
end

local function insert_head(p, cols)
  return str_format("INSERT INTO %s (%s)%s", p.target, list(cols),
    p.identity_always and " OVERRIDING SYSTEM VALUE" or "")
end

--- The INSERT for one strategy, reading the CTE `src`; it returns a
-- boolean `created` per written row.
local function strategy_insert(p)
  local cols, keys = p.column_names, p.key_names
  local non_key = {}
  for _, c in ipairs(cols) do
    if not p.is_key[c] then non_key[#non_key + 1] = c end
  end
  if p.strategy == "append" then
    return str_format("%s SELECT %s FROM src ORDER BY %s%s RETURNING true AS created",
      insert_head(p, non_key), list(non_key), ROW, p.remap and " ON CONFLICT DO NOTHING" or "")
  end
  if p.strategy == "skip" or #non_key == 0 then
    return str_format("%s SELECT %s FROM src ORDER BY %s ON CONFLICT DO NOTHING RETURNING true AS created",
      insert_head(p, cols), list(cols), ROW)
  end
  if p.strategy == "custom" then
    -- new rows go in here; rows whose key exists are left to the resolve hook
    return str_format("%s SELECT %s FROM src ORDER BY %s ON CONFLICT (%s) DO NOTHING RETURNING true AS created",
      insert_head(p, cols), list(cols), ROW, list(keys))
  end
  -- a local row equal to the incoming one is left alone (no write, no bloat)
  local sets, old, new = {}, {}, {}
  for i, c in ipairs(non_key) do
    sets[i] = str_format("%s = EXCLUDED.%s", q(c), q(c))
    local as_text = p.column_by_name[c].identity_equal and "" or "::text COLLATE \"C\""
    old[i] = str_format("%s.%s%s", p.target, q(c), as_text)
    new[i] = str_format("EXCLUDED.%s%s", q(c), as_text)
  end
  local conflict = str_format(" ON CONFLICT (%s) DO UPDATE SET %s WHERE (%s) IS DISTINCT FROM (%s) " ..
    "RETURNING (xmax = 0) AS created", list(keys), tbl_concat(sets, ", "), tbl_concat(old, ", "),
    tbl_concat(new, ", "))
  if p.strategy == "overwrite" then
    return str_format("%s SELECT %s FROM src ORDER BY %s%s", insert_head(p, cols), list(cols), ROW, conflict)
  end
  -- merge: a remote null keeps the local value (also where the column is NOT NULL)
  local select_list = {}
  for i, c in ipairs(cols) do
    select_list[i] = p.is_key[c] and ("s." .. q(c)) or str_format("COALESCE(s.%s, t.%s)", q(c), q(c))
  end
  return str_format("%s SELECT %s FROM src s LEFT JOIN %s t ON %s ORDER BY s.%s%s", insert_head(p, cols),
    tbl_concat(select_list, ", "), p.target, key_join(keys, "t", "s"), ROW, conflict)
end

--- The apply step answers (staged, created, total[, unchanged]): for
-- overwrite and merge, staged rows that wrote nothing were equal to the
-- local row (unchanged); for the others they were conflicts left alone.
local function apply_statement(p)
  local unchanged = (p.strategy == "overwrite" or p.strategy == "merge")
    and ", (SELECT count(*) FROM src) - count(*) AS unchanged" or ""
  return { sql = str_format("WITH src AS (SELECT * FROM %s WHERE %s BETWEEN $1 AND $2), ins AS (%s) " ..
    "SELECT (SELECT count(*) FROM src) AS staged, count(*) FILTER (WHERE created) AS created, " ..
    "count(*) AS total%s FROM ins", p.stage, ROW, strategy_insert(p), unchanged) }
end

--- Statements that carry keys across tables (pull_tables): rewrite foreign
-- keys through the key map, record remote->local keys of rows that match a
-- local row on a unique constraint, and (overwrite/merge) aim such rows at
-- the local row.
local function remap_statements(p)
  local out, range = {}, str_format("s.%s BETWEEN $1 AND $2", ROW)
  for _, fk in ipairs(p.foreign_keys) do
    local col = p.column_by_name[fk.column]
    if col then
      out[#out + 1] = { params = { fk.parent }, sql = str_format(
        "UPDATE %s s SET %s = km.local_key::%s FROM %s km WHERE km.tbl = $3 AND km.remote_key = s.%s::text AND %s",
        p.stage, q(fk.column), col.sql_type, q(_M.KEYMAP), q(fk.column), range) }
    end
  end
  if #p.key_names ~= 1 or p.strategy == "append" then return out end
  local key = p.key_names[1]
  for _, ucols in ipairs(p.unique_keys) do
    local usable = true
    for _, c in ipairs(ucols) do usable = usable and p.column_by_name[c] ~= nil end
    if usable then
      out[#out + 1] = { params = { p.table }, sql = str_format(
        "INSERT INTO %s (tbl, remote_key, local_key) SELECT $3, s.%s::text, t.%s::text FROM %s s " ..
        "JOIN %s t ON %s WHERE %s AND s.%s IS DISTINCT FROM t.%s " ..
        "ON CONFLICT (tbl, remote_key) DO UPDATE SET local_key = EXCLUDED.local_key",
        q(_M.KEYMAP), q(key), q(key), p.stage, p.target, key_join(ucols, "t", "s"), range, q(key), q(key)) }
    end
  end
  if p.strategy == "overwrite" or p.strategy == "merge" then
    out[#out + 1] = { params = { p.table }, sql = str_format(
      "UPDATE %s s SET %s = km.local_key::%s FROM %s km WHERE km.tbl = $3 AND km.remote_key = s.%s::text AND %s",
      p.stage, q(key), p.column_by_name[key].sql_type, q(_M.KEYMAP), q(key), range) }
  end
  return out
end

--- Statements of the custom strategy's resolve step. The first reads the
-- staged rows whose key exists locally with other values in the sent
-- columns (a row the apply has just inserted is no conflict, nor is one
-- equal to the local row): the local row, the remote row and the local
-- row's key, each as JSON text. The second writes every row the
-- hook chose with one update per batch; its parameter is a JSON array of
-- [chosen row, local key] pairs, read back through json_populate_record so
-- every column keeps its exact type (json, not jsonb: numbers keep their
-- text and nothing is converted twice). The pairs are materialized so each
-- is read once, not once per column.
function _M.resolve_statements(p)
  -- compared as text: json columns have no equality operator
  local as_text = {}
  for i, n in ipairs(p.column_names) do as_text[i] = q(n) .. "::text" end
  local pairs_sql = str_format("SELECT row_to_json(t)::text AS local_row, row_to_json(r)::text AS remote_row, " ..
    "row_to_json(k)::text AS local_key FROM %s s JOIN %s t ON %s CROSS JOIN LATERAL (SELECT %s) r " ..
    "CROSS JOIN LATERAL (SELECT %s) k WHERE s.%s BETWEEN $1 AND $2 AND (t.%s) IS DISTINCT FROM (s.%s) " ..
    "ORDER BY s.%s",
    p.stage, p.target, key_join(p.key_names, "t", "s"), list(p.column_names, "s."), list(p.key_names, "t."),
    ROW, tbl_concat(as_text, ", t."), tbl_concat(as_text, ", s."), ROW)
  local sets, keys = {}, {}
  for i, c in ipairs(p.column_names) do sets[i] = str_format("%s = (c.chosen).%s", q(c), q(c)) end
  for i, c in ipairs(p.key_names) do keys[i] = str_format("t.%s = (c.old).%s", q(c), q(c)) end
  local update_sql = str_format("WITH c AS MATERIALIZED (SELECT json_populate_record(NULL::%s, e->0) AS chosen, " ..
    "json_populate_record(NULL::%s, e->1) AS old FROM json_array_elements($1::json) e) " ..
    "UPDATE %s t SET %s FROM c WHERE %s",
    p.target, p.target, p.target, tbl_concat(sets, ", "), tbl_concat(keys, " AND "))
  return pairs_sql, update_sql
end

--- The DDL of the key map (a temporary table of the session).
function _M.keymap_ddl()
  return str_format("CREATE TEMP TABLE IF NOT EXISTS %s (tbl text, remote_key text, local_key text, " ..
    "PRIMARY KEY (tbl, remote_key))", q(_M.KEYMAP))
end

--- Whether keys of the plan's table, or of the tables its foreign keys
-- point at, were mapped to other local keys in this session: then local
-- rows do not carry the sender's values, and digests cannot compare them.
-- @return true, false, or nil, err, detail
function _M.keys_mapped(db, p)
  local tables = { p.table }
  for _, fk in ipairs(p.foreign_keys or {}) do tables[#tables + 1] = fk.parent end
  local rows, err, detail = db:query("SELECT to_regclass($1) IS NOT NULL AS present", "pg_temp." .. q(_M.KEYMAP))
  if not rows then return nil, err, detail end
  if not rows[1].present then return false end
  rows, err, detail = db:query(str_format("SELECT EXISTS (SELECT 1 FROM %s WHERE tbl IN " ..
    "(SELECT jsonb_array_elements_text($1::jsonb))) AS used", q(_M.KEYMAP)), json_encode(tables))
  if not rows then return nil, err, detail end
  return rows[1].used
end

------------------------------------------------------------------------------
-- the plan

--- Check the local table before anything is requested from the sender.
-- @return facts `{schema, table, strategy, keys, columns}` or nil, err, detail
--   (table_missing_locally, no_primary_key, database_error)
function _M.inspect(db, schema, table_name, strategy)
  local exists, err = catalog.table_exists(db, schema, table_name)
  if exists == nil then return nil, "database_error", { message = err } end
  if not exists then return nil, "table_missing_locally", { message = "no local table " .. table_name } end
  local pk = catalog.primary_key(db, schema, table_name)
  local cols = pk and _M.local_columns(db, schema, table_name)
  if not cols then return nil, "database_error", { message = "cannot read the local catalog" } end
  if NEEDS_KEY[strategy] and #pk == 0 then
    return nil, "no_primary_key", { message = table_name .. " has no primary key (needed for " .. strategy .. ")" }
  end
  return { schema = schema, table = table_name, strategy = strategy, keys = pk, columns = cols }
end

--- Work out how rows are imported, given the sender's column names.
-- Remote columns the local table lacks are reported (`unknown`), never used.
-- @return plan or nil, err, detail
function _M.build(db, facts, remote_columns, opts)
  local remote = {}
  for _, n in ipairs(remote_columns) do remote[n] = true end
  local strategy, table_name = facts.strategy, facts.table
  local p = { table = table_name, strategy = strategy, remap = opts.remap,
              target = q(facts.schema) .. "." .. q(table_name), columns = {}, column_by_name = {},
              key_names = {}, is_key = {}, unknown = setmetatable({}, core.array_mt) }
  for _, k in ipairs(facts.keys) do
    p.key_names[#p.key_names + 1] = k.name
    p.is_key[k.name] = true
  end
  local by_local = {}
  for _, c in ipairs(facts.columns) do
    by_local[c.name] = true
    if remote[c.name] and not c.generated then
      p.columns[#p.columns + 1] = c
      p.column_by_name[c.name] = c
      if c.identity_always then p.identity_always = true end
    end
  end
  for _, n in ipairs(remote_columns) do
    if not by_local[n] then p.unknown[#p.unknown + 1] = n end
  end
  if #p.columns == 0 then
    return nil, "no_common_columns", { message = "the sender's columns match none of " .. table_name .. "'s" }
  end
  for _, k in ipairs(p.key_names) do
    if NEEDS_KEY[strategy] and not p.column_by_name[k] then
      return nil, "key_not_sent", { message = "the sender does not send key column " .. k }
    end
  end
  p.column_names = names_of(p.columns)
  if opts.remap then
    p.foreign_keys = catalog.foreign_keys(db, facts.schema, table_name) or {}
    p.unique_keys = catalog.unique_keys(db, facts.schema, table_name) or {}
  end
  return p
end

--- Staging table name, DDL and drop statement for a plan.
function _M.stage(p, suffix)
  p.stage = q("pksync_stage_" .. suffix)
  return str_format("CREATE TEMP TABLE %s AS SELECT %s FROM %s WITH NO DATA; ALTER TABLE %s ADD COLUMN %s bigint",
      p.stage, list(p.column_names), p.target, p.stage, ROW),
    str_format("DROP TABLE IF EXISTS %s", p.stage)
end

--- The importer spec (core.importer_new) for a plan.
-- @param direct COPY straight into the target (first pull into an empty table)
-- @param extra `{transform=, after_batch=, lock_timeout=}` for the importer
function _M.importer_spec(p, direct, array_key, batch_rows, first_row, extra)
  local columns = {}
  for i, c in ipairs(p.columns) do
    columns[i] = { name = c.name, kind = c.kind, elem_kind = c.elem_kind, elem_delim = c.elem_delim }
  end
  extra = extra or {}
  local spec = { columns = columns, array_key = array_key, batch_rows = batch_rows, first_row = first_row,
                 transform = extra.transform, after_batch = extra.after_batch, lock_timeout = extra.lock_timeout,
                 key_column = extra.key_column }
  if direct then
    spec.copy = str_format("COPY %s (%s) FROM STDIN", p.target, list(p.column_names))
  else
    spec.copy = str_format("COPY %s (%s, %s) FROM STDIN", p.stage, list(p.column_names), ROW)
    spec.clear = "TRUNCATE " .. p.stage
    spec.apply = apply_statement(p)
    if p.remap then spec.pre = remap_statements(p) end
  end
  return spec
end

--- May rows go straight into the target with COPY? Only into an empty
-- table, when no key juggling is needed.
-- @return boolean, or nil, err, detail when the table cannot be read (e.g. locked)
function _M.direct_ok(db, p)
  if p.strategy == "append" or p.strategy == "custom" or p.remap or p.identity_always then return false end
  local rows, err, detail = db:query(str_format("SELECT EXISTS (SELECT 1 FROM %s) AS has_rows", p.target))
  if not rows then return nil, err, detail end
  return rows[1].has_rows == false
end

return _M
