--- Digests of key ranges: row counts and 64-bit hashes of consecutive
-- ranges of a table in primary-key order (the `table_digest` extension).
--
-- Both sides run the same query over the same bounds, so equal rows give
-- equal digests whatever each server's defaults:
--  * the query runs under the catalog's pinned output settings, so every
--    value hashed through its text (and every key bound sent as text)
--    reads the same on both sides;
--  * types whose `=` holds only for identical values are hashed natively
--    (fast); text and varchar natively under the "C" collation; everything
--    else through its text, so that 1.10 and 1.1, 0 and -0, or jsonb
--    numbers of another scale count as a change, as the pull's sameness
--    check counts them;
--  * key order and bounds compare collatable keys under "C", so a range
--    holds the same keys on both sides whatever their collations.
-- A range's digest is the sum of its rows' `hash_record_extended` modulo
-- 2^64, as decimal text: independent of the scan's order inside the range.
-- @module pksync.digest
local core = require "pksync.core"
local util = require "pksync.util"
local catalog = require "pksync.catalog"

local type, ipairs, tostring = type, ipairs, tostring
local setmetatable = setmetatable
local unpack = table.unpack or unpack -- luacheck: ignore (5.1 global)
local str_format, tbl_concat = string.format, table.concat
local math_floor, math_max, math_min = math.floor, math.max, math.min
local json_decode = core.json_decode
local null = core.null

local _M = {}

--- Rows one request may scan by default (a range is split past it).
_M.DEFAULT_MAX_ROWS = 100000

local NATIVE = {
  bool = true, int2 = true, int4 = true, int8 = true, oid = true, bytea = true, uuid = true,
  date = true, timestamp = true, timestamptz = true, text = true, varchar = true,
}

local q = util.quote_ident

--- The hashed expression of one column: native, native under "C", or text.
local function hashed(col)
  local ref = "t." .. q(col.name)
  if col.category == "A" or not NATIVE[col.typname] then return ref .. "::text" end
  if col.collatable then return ref .. ' COLLATE "C"' end
  return ref
end

--- What digests of a table need from the catalog, read once: the key's
-- columns (with whether they collate) and every column by name.
-- @return `{target = quoted name, keys = {{name, type, collatable}...},
--   columns = name -> column}`, or nil, err, detail ("not_digestible" for
--   a table without a primary key)
function _M.describe(db, schema, table_name)
  local pk, err, detail = catalog.primary_key(db, schema, table_name)
  if not pk then return nil, err, detail end
  if #pk == 0 then
    return nil, "not_digestible", { message = table_name .. " has no primary key" }
  end
  local types
  types, err, detail = catalog.column_types(db, schema, table_name)
  if not types then return nil, err, detail end
  local by_name = {}
  for _, c in ipairs(types) do by_name[c.name] = c end
  for _, k in ipairs(pk) do k.collatable = by_name[k.name] and by_name[k.name].collatable end
  return { target = q(schema) .. "." .. q(table_name), keys = pk, columns = by_name }
end

--- Which columns to hash: those named (all must exist), in the order given.
local function hashed_columns(facts, names)
  local out = {}
  for i, n in ipairs(names or {}) do
    local c = facts.columns[n]
    if not c then return nil, "unknown_column", { message = "no column " .. util.display(n) } end
    out[i] = hashed(c)
  end
  if #out == 0 then return nil, "unknown_column", { message = "no columns to hash" } end
  return out
end

local function key_ref(k)
  local ref = "t." .. q(k.name)
  return k.collatable and (ref .. ' COLLATE "C"') or ref
end

--- A key value given as an SQL expression of text, cast to the key's type
-- (a name from the catalog's format_type, never from a request) and
-- collated as the key is ordered.
local function typed(k, expr)
  return expr .. "::" .. k.type .. (k.collatable and ' COLLATE "C"' or "")
end

--- "(k1, k2) op ($n::type, ...)" for a bound, its values as parameters.
local function bound_condition(keys, values, op, params)
  local cols, vals = {}, {}
  for i, k in ipairs(keys) do
    cols[i] = key_ref(k)
    params[#params + 1] = values[i]
    vals[i] = typed(k, "$" .. #params)
  end
  return str_format("(%s) %s (%s)", tbl_concat(cols, ", "), op, tbl_concat(vals, ", "))
end

--- A bound is an array of key values as text, one per key column.
local function valid_bound(b, nkeys)
  if b == nil or b == null then return true end
  if type(b) ~= "table" or #b ~= nkeys then return false end
  for _, v in ipairs(b) do
    if type(v) ~= "string" or v:find("\0", 1, true) then return false end
  end
  return true
end

--- The conditions that keep the rows of the range (after, upto] of `keys`
-- (describe's), their values appended to params as $n.
-- @return array of SQL conditions (empty for an open range), or nil,
--   "invalid_bound", detail
function _M.range_conditions(keys, after, upto, params)
  if not valid_bound(after, #keys) or not valid_bound(upto, #keys) then
    return nil, "invalid_bound", { message = "a bound is an array of one text per key column" }
  end
  local where = {}
  if after and after ~= null then where[#where + 1] = bound_condition(keys, after, ">", params) end
  if upto and upto ~= null then where[#where + 1] = bound_condition(keys, upto, "<=", params) end
  return where
end

--- Whether a database error is a bound that does not fit the key's type.
function _M.is_bad_bound(detail)
  local state = type(detail) == "table" and detail.sqlstate
  return state == "22P02" or state == "22003" or state == "22007" or state == "22008"
end

local RANGES_SQL = [[
SELECT (rn - 1) / %d AS g, count(*) AS n,
       ((sum(h) %% 18446744073709551616 + 18446744073709551616) %% 18446744073709551616)::text AS digest,
       max(last_key) AS last_key
FROM (
  SELECT row_number() OVER w AS rn, hash_record_extended(ROW(%s), 0) AS h,
         CASE WHEN row_number() OVER w %% %d = 0 THEN json_build_array(%s)::text END AS last_key
  FROM (SELECT * FROM %s t%s ORDER BY %s LIMIT %d) t
  WINDOW w AS (ORDER BY %s)
) numbered GROUP BY 1 ORDER BY 1]]

--- Digests of consecutive ranges of `range_rows` rows inside (after, upto].
-- @param db a pksync.pg handle
-- @param facts the table's, from describe
-- @param opts `columns` (names to hash, in this order), `after` / `upto`
--   (bounds: arrays of key texts, nil for open), `range_rows` (rows per
--   range), `max_rows` (rows scanned at most; DEFAULT_MAX_ROWS)
-- @return `{key = names, ranges = {{last = key texts, rows = n,
--   digest = text}, ...}, has_more = bool}`: each range runs from the
--   previous range's `last` (or `after`) to its own `last`, except the
--   final one of a complete answer, which runs to `upto` (or the end); an
--   empty range has `last = null`. With `has_more`, rows after the final
--   range's `last` remain. Or nil, err, detail.
function _M.ranges(db, facts, opts)
  local keys, params = facts.keys, {}
  local where, err, detail = _M.range_conditions(keys, opts.after, opts.upto, params)
  if not where then return nil, err, detail end
  local cols
  cols, err, detail = hashed_columns(facts, opts.columns)
  if not cols then return nil, err, detail end
  local where_sql = #where > 0 and (" WHERE " .. tbl_concat(where, " AND ")) or ""
  local max_rows = math_max(1, math_floor(opts.max_rows or _M.DEFAULT_MAX_ROWS))
  local range_rows = math_min(max_rows, math_max(1, math_floor(opts.range_rows or max_rows)))
  -- whole ranges only: a range is never cut by the scan limit
  local scan = range_rows * math_floor(max_rows / range_rows)
  local order, desc, texts, names = {}, {}, {}, {}
  for i, k in ipairs(keys) do
    order[i] = key_ref(k)
    desc[i] = key_ref(k) .. " DESC"
    texts[i] = "t." .. q(k.name) .. "::text"
    names[i] = k.name
  end
  local order_list, desc_list = tbl_concat(order, ", "), tbl_concat(desc, ", ")
  local sql = str_format(RANGES_SQL, range_rows, tbl_concat(cols, ", "), range_rows, tbl_concat(texts, ", "),
    facts.target, where_sql, order_list, scan, order_list)
  local rows
  rows, err, detail = catalog.with_canonical_text(db, function() return db:query(sql, unpack(params)) end)
  if not rows then
    if _M.is_bad_bound(detail) then
      return nil, "invalid_bound", { message = "a bound does not fit the key's type" }
    end
    return nil, err, detail
  end
  local ranges, total = setmetatable({}, core.array_mt), 0
  for i, r in ipairs(rows) do
    total = total + r.n
    ranges[i] = { rows = r.n, digest = r.digest,
                  last = r.last_key ~= null and setmetatable(json_decode(r.last_key), core.array_mt) or null }
  end
  local has_more = total == scan
  if #ranges == 0 then
    ranges[1] = { rows = 0, digest = "0", last = null }
  elseif ranges[#ranges].last == null then
    -- a final range shorter than range_rows: its last key is the range's last
    local last
    last, err, detail = catalog.with_canonical_text(db, function()
      return db:query(str_format("SELECT json_build_array(%s)::text AS k FROM %s t%s ORDER BY %s LIMIT 1",
        tbl_concat(texts, ", "), facts.target, where_sql, desc_list), unpack(params))
    end)
    if not last then return nil, err, detail end
    ranges[#ranges].last = setmetatable(json_decode(last[1].k), core.array_mt)
  end
  return { key = setmetatable(names, core.array_mt), ranges = ranges, has_more = has_more }
end

local BOUNDED_SQL = [[
SELECT b.ord, d.n, d.digest
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS b(r, ord)
CROSS JOIN LATERAL (
  SELECT count(*) AS n,
         ((coalesce(sum(h), 0) %% 18446744073709551616 + 18446744073709551616) %% 18446744073709551616)::text AS digest
  FROM (SELECT hash_record_extended(ROW(%s), 0) AS h FROM %s t WHERE (%s) > (%s) AND (%s) <= (%s)) rows_of
) d ORDER BY b.ord]]

--- The key tuple of a bound held in JSON (`source` is an SQL expression of
-- an array of key texts), cast to the key's types.
local function json_bound(keys, source)
  local vals = {}
  for i, k in ipairs(keys) do vals[i] = typed(k, str_format("(%s->>%d)", source, i - 1)) end
  return tbl_concat(vals, ", ")
end

--- Digests of many closed ranges in one statement (facts from describe): for each `{after,
-- upto}` (both bounds given), the rows and digest of (after, upto], as
-- `ranges` computes them. Each range is read by its own index range scan.
-- @return array of {rows=, digest=} in the order given, or nil, err, detail
function _M.bounded(db, facts, columns, list)
  local keys = facts.keys
  local cols, err, detail = hashed_columns(facts, columns)
  if not cols then return nil, err, detail end
  local refs, pairs_json = {}, {}
  for i, k in ipairs(keys) do refs[i] = key_ref(k) end
  for i, r in ipairs(list) do
    if not valid_bound(r.after, #keys) or not valid_bound(r.upto, #keys) or r.after == nil or r.upto == nil then
      return nil, "invalid_bound", { message = "a closed range needs both bounds, one text per key column" }
    end
    pairs_json[i] = { a = setmetatable(r.after, core.array_mt), u = setmetatable(r.upto, core.array_mt) }
  end
  local key_list = tbl_concat(refs, ", ")
  local sql = str_format(BOUNDED_SQL, tbl_concat(cols, ", "), facts.target,
    key_list, json_bound(keys, "(b.r->'a')"), key_list, json_bound(keys, "(b.r->'u')"))
  local rows
  rows, err, detail = catalog.with_canonical_text(db, function()
    return db:query(sql, core.json_encode(setmetatable(pairs_json, core.array_mt)))
  end)
  if not rows then return nil, err, detail end
  local out = {}
  for i, r in ipairs(rows) do out[i] = { rows = r.n, digest = r.digest } end
  return out
end

--- Whether the table has any row.
-- @return true, false, or nil, err, detail
function _M.has_rows(db, schema, table_name)
  local rows, err, detail = db:query(str_format("SELECT EXISTS (SELECT 1 FROM %s) AS any",
    q(schema) .. "." .. q(table_name)))
  if not rows then return nil, err, detail end
  return rows[1].any
end

--- Delete the local rows of (after, upto] whose keys are not among `keys`
-- (an array of key-text arrays): the rows a sender no longer has.
-- @param facts the table's, from describe
-- @return the number of rows deleted, or nil, err, detail
function _M.delete_missing(db, facts, after, upto, keys)
  local pk = facts.keys
  local params = { core.json_encode(setmetatable(keys, core.array_mt)) }
  local where, err, detail = _M.range_conditions(pk, after, upto, params)
  if not where then return nil, err, detail end
  local cols, elems = {}, {}
  for i, k in ipairs(pk) do
    cols[i] = "t." .. q(k.name)
    elems[i] = str_format("(e->>%d)::%s", i - 1, k.type)
  end
  where[#where + 1] = str_format("(%s) NOT IN (SELECT %s FROM jsonb_array_elements($1::jsonb) e)",
    tbl_concat(cols, ", "), tbl_concat(elems, ", "))
  local rows
  rows, err, detail = db:query(str_format("WITH gone AS (DELETE FROM %s t WHERE %s RETURNING 1) " ..
    "SELECT count(*) AS n FROM gone", facts.target, tbl_concat(where, " AND ")), unpack(params))
  if not rows then return nil, err, detail end
  return rows[1].n
end

return _M
