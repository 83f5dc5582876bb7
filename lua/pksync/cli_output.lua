--- Output helpers of the command-line tool: numbers, aligned tables, JSON
-- documents, the progress bar and the pull report.
-- @module pksync.cli_output
local pksync = require "pksync"

local type, tostring, tonumber, ipairs, pairs, setmetatable, getmetatable = type, tostring, tonumber, ipairs, pairs, setmetatable, getmetatable
local unpack = table.unpack or unpack -- luacheck: ignore (5.1 global)
local math_floor, math_max, math_min = math.floor, math.max, math.min
local str_format, str_rep = string.format, string.rep
local tbl_concat, tbl_sort = table.concat, table.sort
local null, array_mt = pksync.null, pksync.array_mt

local _M = {}

------------------------------------------------------------------------------
-- values

--- An integer with thousands separators: 1234567 -> "1,234,567".
function _M.int(n)
  if type(n) ~= "number" then return n == nil and "-" or tostring(n) end
  local s = str_format("%d", math_floor(n))
  local sign, digits = s:match("^(%-?)(%d+)$")
  digits = digits:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", "")
  return sign .. digits
end

local SIZE_UNITS = { "B", "KiB", "MiB", "GiB", "TiB" }

--- A byte count for people: 1536 -> "1.5 KiB".
function _M.size(n)
  if type(n) ~= "number" then return "-" end
  local unit = 1
  while n >= 1024 and unit < #SIZE_UNITS do
    n, unit = n / 1024, unit + 1
  end
  return unit == 1 and str_format("%d B", n) or str_format("%.1f %s", n, SIZE_UNITS[unit])
end

--- Seconds with one decimal: 1.234 -> "1.2s".
function _M.seconds(s)
  if type(s) ~= "number" then return "-" end
  return str_format("%.1fs", s)
end

--- A value from a peer as one short, printable cell (never a control
-- character: a peer's data must not drive the terminal).
function _M.cell(v, max)
  local s
  if v == nil or v == null then
    s = "NULL"
  elseif type(v) == "table" then
    s = pksync.json.encode(v, { sort_keys = true })
  else
    s = tostring(v)
  end
  s = s:gsub("%c", "?")
  max = max or 40
  if _M.width(s) > max then s = s:sub(1, max - 3):gsub("[\192-\255][\128-\191]*$", "") .. "..." end
  return s
end

--- Display width of a UTF-8 string (code points; good enough for names).
function _M.width(s)
  return #(s:gsub("[\128-\191]", ""))
end

--- Split "a, b,c" into {"a", "b", "c"} (empty items dropped).
function _M.split_list(s)
  local out = {}
  for item in s:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

------------------------------------------------------------------------------
-- tables and key/value blocks

local function pad(s, w, right)
  local gap = str_rep(" ", w - _M.width(s))
  return right and (gap .. s) or (s .. gap)
end

--- Aligned columns. `columns` = { {title, right = bool}, ... }, `rows` =
-- arrays of strings. Returns the lines (no trailing spaces).
function _M.table_lines(columns, rows)
  local widths = {}
  for i, c in ipairs(columns) do widths[i] = _M.width(c[1]) end
  for _, r in ipairs(rows) do
    for i = 1, #columns do widths[i] = math_max(widths[i], _M.width(r[i] or "")) end
  end
  local function line(cells)
    local parts = {}
    for i, c in ipairs(columns) do parts[i] = pad(cells[i] or "", widths[i], c.right) end
    return (tbl_concat(parts, "  "):gsub("%s+$", ""))
  end
  local titles = {}
  for i, c in ipairs(columns) do titles[i] = c[1] end
  local out = { line(titles) }
  for _, r in ipairs(rows) do out[#out + 1] = line(r) end
  return out
end

--- "label   value" lines for an array of {label, value} pairs (nil values skipped).
function _M.pairs_lines(items, indent)
  local w = 0
  for _, it in ipairs(items) do
    if it[2] ~= nil then w = math_max(w, _M.width(it[1])) end
  end
  local out = {}
  for _, it in ipairs(items) do
    if it[2] ~= nil then out[#out + 1] = (indent or "") .. pad(it[1], w) .. "  " .. tostring(it[2]) end
  end
  return out
end

------------------------------------------------------------------------------
-- JSON

-- A copy of v in which every sequence carries the array metatable, so the
-- encoder writes it as a JSON array; empty tables stay objects unless the
-- caller marked them with pksync.array_mt.
local function arrays(v, seen)
  if type(v) ~= "table" then return v end
  if seen[v] then return seen[v] end
  local mt = getmetatable(v)
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do out[k] = arrays(x, seen) end
  if mt == array_mt or (v[1] ~= nil) then setmetatable(out, array_mt) end
  return out
end

--- Encode a JSON document: sorted keys, sequences as arrays.
function _M.json(v)
  return pksync.json.encode(arrays(v, {}), { sort_keys = true })
end

------------------------------------------------------------------------------
-- progress bar (stderr)

local BAR = 20

--- The progress line for one on_progress event.
function _M.progress_line(ev)
  local rows, total = ev.rows or 0, ev.row_count
  local rate = (ev.seconds and ev.seconds > 0) and rows / ev.seconds or nil
  local frac = (type(total) == "number" and total > 0) and math_min(rows / total, 1) or (ev.done and 1 or 0)
  local filled = math_floor(frac * BAR + 0.5)
  local parts = { pad(_M.cell(ev.table, 24), 12),
    "[" .. str_rep("#", filled) .. str_rep("-", BAR - filled) .. "]" }
  if type(total) == "number" then
    parts[#parts + 1] = _M.int(rows) .. "/" .. _M.int(total) .. " rows"
  else
    parts[#parts + 1] = _M.int(rows) .. " rows"
  end
  if rate then parts[#parts + 1] = _M.int(rate) .. " rows/s" end
  if rate and rate > 0 and type(total) == "number" and not ev.done then
    parts[#parts + 1] = str_format("ETA %ds", math_floor(math_max(total - rows, 0) / rate + 0.5))
  end
  return tbl_concat(parts, "  ")
end

--- A progress bar on `stream`: returns on_progress(event) and finish().
-- The line is redrawn in place (\r); a new table or a finished one moves
-- to a fresh line so every table leaves its last state on screen.
function _M.progress(stream)
  local current, last_len = nil, 0
  local function newline()
    if current then stream:write("\n") end
    current, last_len = nil, 0
  end
  local function on_progress(ev)
    if current and current ~= ev.table then newline() end
    current = ev.table
    local line = _M.progress_line(ev)
    stream:write("\r", line, str_rep(" ", math_max(last_len - #line, 0)))
    last_len = #line
    if ev.done then newline() end
    stream:flush()
  end
  return on_progress, newline
end

------------------------------------------------------------------------------
-- pull / sync report

local COUNTS = { "transferred", "imported", "updated", "unchanged", "skipped", "filtered", "failed" }
_M.COUNTS = COUNTS

local function present(v)
  return v ~= nil and v ~= null and v ~= ""
end

--- Why a table was skipped or failed, as short text: the error code and
-- the message (a failed table has a `message`, an unchanged one a `reason`).
local function why(t)
  local parts = {}
  if present(t.error) then parts[#parts + 1] = tostring(t.error) end
  local msg = present(t.message) and t.message or t.reason
  if present(msg) then parts[#parts + 1] = (#parts > 0 and "(" .. _M.cell(msg, 60) .. ")") or _M.cell(msg, 60) end
  return tbl_concat(parts, " ")
end

local function count_cells(row, counts, names)
  for _, k in ipairs(names) do row[#row + 1] = _M.int(counts[k]) end
  return row
end

--- Human lines of a report (see pksync.cli_pull for its shape): one row
-- per table and the totals, then the first failing row of each table
-- below, so the table itself stays narrow.
function _M.report_lines(report)
  local rows, samples = {}, {}
  -- rows deleted by mirror get a column when there are any
  local names = COUNTS
  if (tonumber(report.totals and report.totals.deleted) or 0) > 0 then
    names = { unpack(COUNTS) }
    names[#names + 1] = "deleted"
  end
  for _, t in ipairs(report.tables or {}) do
    local r = count_cells({ _M.cell(t.name, 30), tostring(t.action or "-"), tostring(t.strategy or "-") }, t, names)
    r[#r + 1] = _M.seconds(t.seconds)
    r[#r + 1] = why(t)
    rows[#rows + 1] = r
    if (tonumber(t.failed) or 0) > 0 and present(t.error_sample) then
      samples[#samples + 1] = _M.cell(t.name, 30) .. ": " .. _M.cell(t.error_sample, 100)
    end
  end
  local total = count_cells({ "total", "", "" }, report.totals or {}, names)
  total[#total + 1] = _M.seconds(report.seconds)
  rows[#rows + 1] = total
  local columns = { { "TABLE" }, { "ACTION" }, { "STRATEGY" } }
  for _, k in ipairs(names) do columns[#columns + 1] = { k:upper(), right = true } end
  columns[#columns + 1] = { "TIME", right = true }
  columns[#columns + 1] = { "NOTE" }
  local out = _M.table_lines(columns, rows)
  if #samples > 0 then out[#out + 1] = "first failing row:" end
  for _, l in ipairs(samples) do out[#out + 1] = "  " .. l end
  for _, c in ipairs(report.cycles or {}) do
    out[#out + 1] = "dependency cycle broken: " .. (type(c) == "table" and tbl_concat(c, " -> ") or tostring(c))
  end
  if report.dry_run then out[#out + 1] = "dry run: nothing was changed" end
  return out
end

--- Sorted keys of a table (for stable output of maps).
function _M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  tbl_sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

--- A store timestamp for a terminal: to the second, "UTC" for +00; "-" for none.
function _M.when(ts)
  if ts == nil or ts == null then return "-" end
  return (tostring(ts):gsub("%.%d+", ""):gsub("%+00$", " UTC"))
end

--- When a connection of store.schedule_state is next due: "now", a time,
-- or "-" (not scheduled).
function _M.next_due(c)
  if c.next_due_at == nil or c.next_due_at == null then return "-" end
  if c.due then return "now" end
  return _M.when(c.next_due_at)
end

return _M
