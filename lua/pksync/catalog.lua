--- What the local database holds: tables, keys, columns, checksums.
--
-- Shared by the serving side (list-tables, table-schema, the data
-- endpoints) and the receiving side (import checks, checksum comparison),
-- so both compute the same things the same way. Table names reach SQL only
-- as parameters or, after validation, as quoted identifiers.
-- @module pksync.catalog
local core = require "pksync.core"
local util = require "pksync.util"

local ipairs, setmetatable, str_format = ipairs, setmetatable, string.format
local null = core.null

local _M = {}

--- A query's rows as a plain array (without the result's `affected` count).
local function rows_of(rows, err, detail)
  if not rows then return nil, err, detail end
  rows.affected = nil
  return rows
end

--- Checksums are computed only up to this many rows (as PhoenixKit does).
_M.CHECKSUM_MAX_ROWS = 10000

-- exact text output, the same whatever the server's defaults (src/pg.h)
local CANONICAL = core.pg_exact_output.transaction

--- Run fn(db) with the session's text output fixed (UTC, ISO dates,
-- shortest exact floats), so two sites render the same rows the same way.
-- Inside a caller's transaction it uses a savepoint, so the caller's
-- transaction and settings are left exactly as they were.
function _M.with_canonical_text(db, fn)
  local nested = db:in_transaction()
  local ok, err, detail = db:exec((nested and "SAVEPOINT pksync_canonical; " or "BEGIN READ ONLY; ") .. CANONICAL)
  if not ok then return nil, err, detail end
  local r1, r2, r3 = fn(db)
  if nested then
    db:exec("ROLLBACK TO SAVEPOINT pksync_canonical; RELEASE SAVEPOINT pksync_canonical")
  else
    db:exec(r1 and "COMMIT" or "ROLLBACK")
  end
  return r1, r2, r3
end

local BASE_TABLES = [[
SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname]]

--- Base tables of a schema whose names the protocol can carry, sorted.
-- @return array of names or nil, err, detail
function _M.base_tables(db, schema)
  local rows, err, detail = db:query(BASE_TABLES, schema)
  if not rows then return nil, err, detail end
  local out = setmetatable({}, core.array_mt)
  for _, r in ipairs(rows) do
    if util.valid_ident(r.name) then out[#out + 1] = r.name end
  end
  return out
end

--- True when `name` is a base table of `schema`.
function _M.table_exists(db, schema, name)
  if not util.valid_ident(name) then return false end
  local rows, err, detail = db:query([[SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')]], schema, name)
  if not rows then return nil, err, detail end
  return rows[1] ~= nil
end

--- The primary key: array of `{name=, type=}` in key order (empty: none).
function _M.primary_key(db, schema, name)
  return rows_of(db:query([[
    SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
    WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary
    ORDER BY k.ord]], schema, name))
end

--- The integer types, by the name both format_type and information_schema give them.
_M.INTEGER_TYPES = { smallint = true, integer = true, bigint = true }

--- Columns as information_schema reports them, in ordinal order.
function _M.columns(db, schema, name)
  local rows, err, detail = rows_of(db:query([[
    SELECT column_name::text, data_type::text, is_nullable::text, column_default::text,
           character_maximum_length::int AS character_maximum_length
    FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2
    ORDER BY ordinal_position]], schema, name))
  return rows and setmetatable(rows, core.array_mt), err, detail
end

--- Referenced tables per table of the schema (foreign keys), sorted.
-- @return map name -> array of names
function _M.dependencies(db, schema)
  local rows, err, detail = db:query([[
    SELECT DISTINCT c.relname AS child, p.relname AS parent
    FROM pg_constraint f
    JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class p ON p.oid = f.confrelid
    WHERE f.contype = 'f' AND n.nspname = $1
    ORDER BY 1, 2]], schema)
  if not rows then return nil, err, detail end
  local deps = {}
  for _, r in ipairs(rows) do
    local list = deps[r.child] or setmetatable({}, core.array_mt)
    list[#list + 1] = r.parent
    deps[r.child] = list
  end
  return deps
end

--- Row count, total size and checksum of one table.
-- The checksum is md5 over the rows' text in sorted order, "empty" for an
-- empty table and null above CHECKSUM_MAX_ROWS rows, as PhoenixKit computes it.
-- @return {row_count=, size_bytes=, checksum=} or nil, err, detail
function _M.table_stats(db, schema, name)
  local qualified = util.quote_ident(schema) .. "." .. util.quote_ident(name)
  return _M.with_canonical_text(db, function()
    local rows, err, detail = db:query(str_format(
      "SELECT count(*) AS n, pg_total_relation_size($1::regclass) AS size FROM %s", qualified), qualified)
    if not rows then return nil, err, detail end
    local n, size = rows[1].n, rows[1].size
    local checksum = null
    if n == 0 then
      checksum = "empty"
    elseif n <= _M.CHECKSUM_MAX_ROWS then
      local sums
      sums, err, detail = db:query(str_format(
        "SELECT md5(string_agg(t::text, '' ORDER BY t::text)) AS sum FROM %s t", qualified))
      if not sums then return nil, err, detail end
      checksum = sums[1].sum
    end
    return { row_count = n, size_bytes = size, checksum = checksum }
  end)
end

local COLUMN_TYPES = [[
SELECT a.attname AS name, a.attnotnull AS not_null, a.attgenerated <> '' AS generated,
       a.attidentity = 'a' AS identity_always, format_type(a.atttypid, a.atttypmod) AS sql_type,
       bt.typname AS typname, bt.typtype AS typtype, bt.typcategory AS category,
       et.typname AS elem_typname, et.typtype AS elem_typtype, et.typdelim AS elem_delim,
       a.attcollation <> 0 AS collatable
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum]]

--- Columns with their types resolved (domains to their base type, arrays
-- to their element type), in attribute order: what an import needs.
-- @return rows `{name, not_null, generated, identity_always, sql_type,
--   typname, typtype, category, elem_typname, elem_typtype, elem_delim, collatable}`
function _M.column_types(db, schema, name)
  return rows_of(db:query(COLUMN_TYPES, util.quote_ident(schema) .. "." .. util.quote_ident(name)))
end

--- Single-column foreign keys of a table: {column=, parent=}.
function _M.foreign_keys(db, schema, name)
  return rows_of(db:query([[
    SELECT a.attname AS column, p.relname AS parent
    FROM pg_constraint f
    JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class p ON p.oid = f.confrelid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = f.conkey[1]
    WHERE f.contype = 'f' AND n.nspname = $1 AND c.relname = $2 AND array_length(f.conkey, 1) = 1
    ORDER BY 1]], schema, name))
end

--- Unique indexes other than the primary key: arrays of column names.
function _M.unique_keys(db, schema, name)
  local rows, err, detail = db:query([[
    SELECT i.indexrelid, array_agg(a.attname ORDER BY k.ord) AS cols
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
    WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND NOT i.indisprimary
      AND i.indpred IS NULL AND i.indexprs IS NULL
    GROUP BY i.indexrelid ORDER BY i.indexrelid]], schema, name)
  if not rows then return nil, err, detail end
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = r.cols end
  return out
end

return _M
