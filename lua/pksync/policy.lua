--- Sync policy: a Lua file (or table) of optional hooks.
--
-- Receiving side: `tables(remote_tables, conn)`, `strategy(table, conn)`,
-- `transform(table, row, conn)`, `resolve(table, local_row, remote_row, conn)`,
-- `on_progress(event)`, `on_error(event)`. Serving side:
-- `accept_incoming(request)`, `table_allowed(conn, table)`, `redact(conn, table)`.
-- A missing hook means the default behaviour.
-- @module pksync.policy
local type, pairs, pcall, tostring, setmetatable, loadfile = type, pairs, pcall, tostring, setmetatable, loadfile
local setfenv, _G = setfenv, _G -- setfenv exists on LuaJIT only
local str_format = string.format

local _M = {}

_M.HOOKS = {
  tables = true, strategy = true, transform = true, resolve = true, on_progress = true, on_error = true,
  accept_incoming = true, table_allowed = true, redact = true,
}

local function check(policy, origin)
  if type(policy) ~= "table" then
    return nil, str_format("%s must return a table of hooks, got %s", origin, type(policy))
  end
  for k, v in pairs(policy) do
    if not _M.HOOKS[k] then return nil, str_format("%s: unknown hook %q", origin, tostring(k)) end
    if type(v) ~= "function" then return nil, str_format("%s: hook %s must be a function", origin, k) end
  end
  return policy
end

--- Load a policy.
-- @param source a policy table, or the path of a Lua file returning one
--   (run in its own environment: the file's globals stay its own)
-- @return the policy or nil, err
function _M.load(source)
  if type(source) == "table" then return check(source, "policy") end
  if type(source) ~= "string" then error("policy.load: a table or a file path expected", 2) end
  local env = setmetatable({}, { __index = _G })
  local chunk, err
  if setfenv then -- LuaJIT / 5.1
    chunk, err = loadfile(source)
    if chunk then setfenv(chunk, env) end
  else
    chunk, err = loadfile(source, "t", env)
  end
  if not chunk then return nil, "cannot load policy: " .. tostring(err) end
  local ok, policy = pcall(chunk)
  if not ok then return nil, str_format("policy %s failed to load: %s", source, tostring(policy)) end
  return check(policy, "policy " .. source)
end

--- True when the policy has the hook (a missing hook means the default).
function _M.has(policy, name)
  return policy ~= nil and policy[name] ~= nil
end

--- Call a hook, isolating its errors: the one way pksync calls a hook
-- outside the importer.
-- @return true and the hook's results (just true when the policy has no
--   such hook: see `has`), or nil, "hook <name>: <error>"
function _M.call(policy, name, ...)
  local hook = policy and policy[name]
  if not hook then return true end
  local ok, a, b = pcall(hook, ...)
  if not ok then return nil, str_format("hook %s: %s", name, tostring(a)) end
  return true, a, b
end

--- The transform hook for one table as the importer calls it, `fn(row)`,
-- or nil. The importer runs it under its own error isolation (a failing
-- hook stops the table and is reported as "transform").
function _M.transformer(policy, table_name, conn)
  local hook = policy and policy.transform
  if not hook then return nil end
  return function(row) return hook(table_name, row, conn) end
end

--- The resolve hook for one table as the importer calls it,
-- `fn(local_row, remote_row)`, or nil.
function _M.resolver(policy, table_name, conn)
  local hook = policy and policy.resolve
  if not hook then return nil end
  return function(local_row, remote_row) return hook(table_name, local_row, remote_row, conn) end
end

return _M
