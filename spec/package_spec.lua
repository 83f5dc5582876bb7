-- Packaging: the rockspec lists every source, installs offline with
-- luarocks, and the Lua modules create no globals.
local helper = require "helper"

local function list(cmd)
  local out = helper.run(cmd)
  local t = {}
  for line in out:gmatch("[^\n]+") do t[#t + 1] = line end
  return t
end

describe("packaging", function()
  local rockspec = helper.read_file(helper.repo .. "/rockspec/pksync-scm-1.rockspec")

  it("lists every C source and Lua module in the rockspec", function()
    for _, f in ipairs(list("cd " .. helper.repo .. " && ls src/*.c lua/pksync/*.lua")) do
      assert.is_truthy(rockspec:find('"' .. f .. '"', 1, true), f .. " is missing from the rockspec")
    end
  end)

  it("creates no global variables", function()
    local created = {}
    local mt = getmetatable(_G)
    setmetatable(_G, { __newindex = function(t, k, v) created[#created + 1] = k rawset(t, k, v) end })
    for _, f in ipairs(list("cd " .. helper.repo .. "/lua && ls pksync/*.lua")) do
      local name = f:gsub("%.lua$", ""):gsub("/", "."):gsub("%.init$", "")
      if name ~= "pksync.nginx" then
        package.loaded[name] = nil
        require(name)
      end
    end
    setmetatable(_G, mt)
    assert.same({}, created)
  end)

  describe("make install", function()
    local dest, prefix
    local ISOLATED = "LUA_PATH='/nonexistent/?.lua' LUA_CPATH='/nonexistent/?.so' "

    lazy_setup(function()
      dest = helper.root .. "/" .. helper.unique("destdir")
      prefix = "/opt/pksync"
      local out, ok = helper.run(("make -s -C %s install DESTDIR=%s PREFIX=%s 2>&1")
        :format(helper.repo, dest, prefix))
      assert.is_true(ok, out)
    end)

    it("puts both builds, every module and the command under DESTDIR/PREFIX, and no test module", function()
      local top = dest .. prefix
      for _, f in ipairs { "/bin/pksync", "/lib/lua/5.4/pksync/core.so", "/lib/lua/5.1/pksync/core.so",
                           "/share/lua/5.4/pksync/init.lua", "/share/lua/5.1/pksync/init.lua" } do
        assert.is_truthy(io.open(top .. f), f .. " was not installed")
      end
      for _, f in ipairs(list("cd " .. helper.repo .. "/lua/pksync && ls *.lua")) do
        assert.is_truthy(io.open(top .. "/share/lua/5.4/pksync/" .. f), f)
        assert.is_truthy(io.open(top .. "/share/lua/5.1/pksync/" .. f), f)
      end
      for _, f in ipairs(list("cd " .. helper.repo .. "/lua/pksync/admin && ls")) do
        assert.is_truthy(io.open(top .. "/share/lua/5.4/pksync/admin/" .. f), "admin/" .. f)
        assert.is_truthy(io.open(top .. "/share/lua/5.1/pksync/admin/" .. f), "admin/" .. f)
      end
      assert.equals("", helper.run("find " .. dest .. " -name 'testing*'"))
    end)

    it("loads from the installed tree alone, with Lua 5.4 and with LuaJIT", function()
      local top = dest .. prefix
      for lua, ver in pairs { ["lua5.4"] = "5.4", luajit = "5.1" } do
        local probe = ("LUA_PATH='%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua' LUA_CPATH='%s/lib/lua/%s/?.so' " ..
          [[%s -e 'local p = require "pksync"; io.write(package.searchpath("pksync", package.path), " ", ]] ..
          [[package.searchpath("pksync.core", package.cpath), " ", require("pksync.core").version)']])
          :format(top, ver, top, ver, top, ver, lua)
        local out, ok = helper.run(probe)
        assert.is_true(ok, out)
        assert.equals(("%s/share/lua/%s/pksync/init.lua %s/lib/lua/%s/pksync/core.so %s")
          :format(top, ver, top, ver, require("pksync.core").version), out)
      end
    end)

    it("runs the installed command with the installed modules, under either runtime", function()
      local top = dest .. prefix
      local out, ok = helper.run(ISOLATED .. top .. "/bin/pksync --help")
      assert.is_true(ok, out)
      assert.matches("^Usage: pksync COMMAND", out)
      -- pksync serve writes into nginx's configuration where it loaded itself from
      for lua, ver in pairs { [""] = "5.4", ["luajit "] = "5.1" } do
        out, ok = helper.run(ISOLATED .. lua .. top .. "/bin/pksync serve --site-url http://127.0.0.1:1 2>&1")
        assert.is_true(ok, out)
        assert.is_truthy(out:find(("lua_package_path  '%s/share/lua/%s/?.lua;"):format(top, ver), 1, true), out)
        assert.is_truthy(out:find(("lua_package_cpath '%s/lib/lua/5.1/?.so;"):format(top), 1, true), out)
      end
    end)

    it("uninstalls what it installed", function()
      local out, ok = helper.run(("make -s -C %s uninstall DESTDIR=%s PREFIX=%s 2>&1"):format(helper.repo, dest, prefix))
      assert.is_true(ok, out)
      assert.equals("", helper.run("find " .. dest .. " -type f"))
    end)
  end)

  if helper.runtime == "54" then
    it("installs with luarocks make, offline, and loads from the tree", function()
      -- build in a copy: the builtin backend leaves object files next to the sources
      local tree = helper.root .. "/rocktree-" .. helper.unique("r")
      local copy = tree .. "-src"
      local out, ok = helper.run(("mkdir -p %s && cd %s && tar --exclude=./build --exclude=./.git -cf - . | tar -C %s -xf - && " ..
        "cd %s && luarocks --lua-version=5.4 --tree %s make --deps-mode=none rockspec/pksync-scm-1.rockspec")
        :format(copy, helper.repo, copy, copy, tree))
      assert.is_true(ok, out)
      local probe = ([[LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua' LUA_CPATH='%s/lib/lua/5.4/?.so' ]] ..
        [[lua5.4 -e 'local p = require "pksync"; io.write(p.json.encode(p.json.decode("[9007199254740993]")))']])
        :format(tree, tree, tree)
      out, ok = helper.run(probe)
      assert.is_true(ok, out)
      assert.equals("[9007199254740993]", out)
      -- the admin page's files land beside pksync/admin.lua, where it looks for them
      for _, f in ipairs(list("cd " .. helper.repo .. "/lua/pksync/admin && ls")) do
        assert.is_truthy(io.open(tree .. "/share/lua/5.4/pksync/admin/" .. f), "admin/" .. f)
      end
    end)
  end
end)
