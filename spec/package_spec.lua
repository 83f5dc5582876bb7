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
    end)
  end
end)
