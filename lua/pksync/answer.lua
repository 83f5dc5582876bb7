--- Building the server's answers and checking request fields.
--
-- Shared by the endpoint modules (server, serve_data). An answer is the
-- transport-agnostic `{status=, headers=, body=}` that `client:handle` returns.
-- @module pksync.answer
local core = require "pksync.core"
local util = require "pksync.util"

local type, ipairs, pairs = type, ipairs, pairs
local setmetatable = setmetatable
local tbl_concat = table.concat
local json_encode = core.json_encode
local null = core.null

local _M = {}

------------------------------------------------------------------------------
-- answers

local JSON_HEADERS = { ["content-type"] = "application/json; charset=utf-8" }

function _M.reply(status, value, extra_headers)
  local headers = util.copy(JSON_HEADERS)
  for k, v in pairs(extra_headers or {}) do headers[k] = v end
  return { status = status, headers = headers, body = json_encode(value) }
end

function _M.fail(status, message, extra)
  local body = { success = false, error = message }
  for k, v in pairs(extra or {}) do body[k] = v end
  return _M.reply(status, body)
end

------------------------------------------------------------------------------
-- request checks

--- Required fields that are absent, null or "" (in declared order).
local function missing_fields(body, fields)
  local missing = setmetatable({}, core.array_mt)
  for _, f in ipairs(fields) do
    local v = body[f]
    if v == nil or v == null or v == "" then missing[#missing + 1] = f end
  end
  return missing
end

--- Required fields present but not strings (hostile or confused clients).
local function mistyped_fields(body, fields)
  local bad = setmetatable({}, core.array_mt)
  for _, f in ipairs(fields) do
    if body[f] ~= nil and body[f] ~= null and type(body[f]) ~= "string" then bad[#bad + 1] = f end
  end
  return bad
end

--- nil when all required string fields are there; else the 400 answer.
-- joined = true gives table-schema/table-records' "Missing required fields: a, b".
function _M.require_fields(body, fields, joined)
  local missing = missing_fields(body, fields)
  if #missing > 0 then
    if joined then return _M.fail(400, "Missing required fields: " .. tbl_concat(missing, ", ")) end
    return _M.fail(400, "Missing required fields", { fields = missing })
  end
  local bad = mistyped_fields(body, fields)
  if #bad > 0 then return _M.fail(400, "Invalid field types", { fields = bad }) end
  return nil
end

return _M
