--- `pksync serve`: a complete nginx configuration serving this site's sync
-- API through pksync.nginx, built from where pksync was actually loaded.
-- @module pksync.cli_serve
local type, tostring, ipairs, error = type, tostring, ipairs, error
local io_open, io_popen, os_getenv, os_execute = io.open, io.popen, os.getenv, os.execute
local str_format, tbl_concat, math_floor = string.format, table.concat, math.floor
local package = package

local _M = {}

local function exists(path)
  local f = io_open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local cwd = os_getenv("PWD") or "."
  return cwd .. "/" .. path:gsub("^%./", "")
end

--- The package.path / cpath template through which `name` resolves (the
-- first match, as require does), made absolute; nil when none matches.
local function template_for(name, path)
  local file = name:gsub("%.", "/")
  for tpl in path:gmatch("[^;]+") do
    if exists((tpl:gsub("%?", file))) then return absolute(tpl) end
  end
  return nil
end

--- lua_package_path entries for the directory pksync's Lua files come from.
function _M.lua_path()
  local tpl = template_for("pksync", package.path)
  if not tpl then error("cannot find pksync's Lua files on package.path") end
  -- "<dir>/?.lua" or "<dir>/?/init.lua": submodules need both forms
  local dir = tpl:match("^(.*)/%?") or "."
  return dir .. "/?.lua;" .. dir .. "/?/init.lua"
end

--- The lua_package_cpath entry for a core.so nginx can load. nginx's Lua
-- module is LuaJIT, so under Lua 5.4 we look for the LuaJIT build next to
-- the loaded one (a checkout's build/jit, a tree's lib/lua/5.1).
-- @return the entry, and a warning when only a Lua 5.4 build was found
function _M.lua_cpath(is_jit)
  local tpl = template_for("pksync.core", package.cpath)
  if not tpl then error("cannot find pksync.core on package.cpath") end
  if is_jit then return tpl end
  for _, swap in ipairs { { "/build/54/", "/build/jit/" }, { "/lua/5.4/", "/lua/5.1/" } } do
    local alt = tpl:gsub(swap[1], swap[2])
    if alt ~= tpl and exists((alt:gsub("%?", "pksync/core"))) then return alt end
  end
  return tpl, "only a Lua 5.4 build of pksync.core was found (" .. tpl ..
    "); nginx's lua module needs the LuaJIT one"
end

-- libpq's environment: nginx clears its workers' environment, so without
-- --db the workers need these passed through to find the database.
local PG_ENV = { "PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
                 "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGCONNECT_TIMEOUT", "PGOPTIONS" }

--- Remove a password from a conninfo (key=value or URI form).
-- @return conninfo without it, and true when one was removed
function _M.strip_password(conninfo)
  local removed = false
  local function drop() removed = true return "" end
  local s = conninfo:gsub("%f[%w_]password%s*=%s*'[^']*'%s*", drop)
  s = s:gsub("%f[%w_]password%s*=%s*[^%s']*%s*", drop)
  -- URI: scheme://user:secret@host and ?password=... / &password=...
  s = s:gsub("^(postgres%w*://[^:/@]*):[^@/]*@", function(head) removed = true return head .. "@" end)
  s = s:gsub("([?&])password=[^&]*&?", function(sep) removed = true return sep end)
  s = s:gsub("[?&]$", ""):gsub("%s+$", "")
  return s, removed
end

--- A Lua string literal safe inside an nginx *_by_lua_block.
local function lua_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return str_format("\\%03d", c:byte()) end) .. '"'
end
_M.lua_string = lua_string

local function nginx_string(s)
  if s:find("[%c'\\]") then error("unsupported character in path " .. s) end
  return "'" .. s .. "'"
end

local TEMPLATE = [[
# nginx configuration for a pksync site, written by `pksync serve`.
# Run it from a directory of its own (its pid and temp files go there):
#   nginx -p DIR -c nginx.conf -g 'daemon off;'
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
%s
worker_processes auto;
error_log stderr notice;
pid nginx.pid;

# libpq and libcurl block: pksync runs them in this pool, never on the
# event loop. Each thread keeps its own database connection.
thread_pool pksync threads=%d;
%s
events { worker_connections 1024; }

http {
  access_log off;
  client_body_temp_path client_body_temp;
  proxy_temp_path proxy_temp;
  fastcgi_temp_path fastcgi_temp;
  uwsgi_temp_path uwsgi_temp;
  scgi_temp_path scgi_temp;
  lua_package_path  %s;
  lua_package_cpath %s;
  client_max_body_size 1m;
  client_body_buffer_size 1m;   # keep request bodies in memory

  server {
    listen %s;

    location %s/sync/api/ {
      content_by_lua_block {
        require("pksync.nginx").serve { %s }
      }
    }
  }
}
]]

--- The serve{} arguments as Lua source.
local function serve_args(opts)
  local items = { "db = " .. lua_string(opts.db) }
  if opts.site_url then items[#items + 1] = "site_url = " .. lua_string(opts.site_url) end
  return tbl_concat(items, ", ")
end

--- Build the configuration text.
-- @param opts `listen`, `threads`, `prefix`, `db` (conninfo, "" for libpq's
--   defaults), `site_url`, `lua_path`, `lua_cpath`, `root` (add `user root root`),
--   `keep_password` (false: a password in db is replaced by PGPASSWORD)
-- @return text, and true when a password was taken out of `db`
function _M.config(opts)
  local db, stripped = opts.db, false
  if not opts.keep_password then db, stripped = _M.strip_password(opts.db) end
  local env = {}
  if db == "" or stripped then
    env[#env + 1] = "\n# libpq's settings from nginx's environment (no --db, or its password)"
    for _, k in ipairs(PG_ENV) do env[#env + 1] = "env " .. k .. ";" end
  end
  local user = opts.root and "\n# workers must read the modules and write temp files as root\nuser root root;" or ""
  local text = str_format(TEMPLATE, user, opts.threads, tbl_concat(env, "\n"),
    nginx_string(opts.lua_path .. ";;"), nginx_string(opts.lua_cpath .. ";;"), opts.listen,
    opts.prefix, serve_args { db = db, site_url = opts.site_url })
  return text, stripped
end

--- True when this process runs as root.
function _M.is_root()
  local p = io_popen("id -u 2>/dev/null")
  if not p then return false end
  local uid = p:read("*l")
  p:close()
  return uid == "0"
end

--- A fresh private directory (mktemp -d: mode 0700).
function _M.temp_dir()
  local p = io_popen("mktemp -d /tmp/pksync-serve.XXXXXX 2>/dev/null")
  local dir = p and p:read("*l")
  if p then p:close() end
  return dir
end

--- Quote a word for sh.
function _M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Write the configuration into dir/nginx.conf (dir is created if needed).
-- @return path or nil, err
function _M.write(dir, text)
  local ok = os_execute("mkdir -p " .. _M.shell_quote(dir))
  if ok ~= true and ok ~= 0 then return nil, "cannot create " .. dir end
  local path = dir .. "/nginx.conf"
  local f, err = io_open(path, "w")
  if not f then return nil, err end
  f:write(text)
  f:close()
  return path
end

--- Run nginx in the foreground on dir/nginx.conf until it stops (Ctrl-C).
-- The shell execs nginx, so the signal reaches nginx itself.
-- @return nginx's exit status
function _M.run(dir)
  local a, _, code = os_execute(str_format("exec nginx -p %s -c nginx.conf -g 'daemon off;'", _M.shell_quote(dir)))
  if a == true or a == 0 then return 0 end
  if type(code) == "number" then return code end
  -- LuaJIT returns system()'s raw wait status
  if type(a) == "number" then return a > 255 and math_floor(a / 256) or a end
  return 1
end

return _M
