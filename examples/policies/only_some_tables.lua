-- Pull only some of the sender's tables (parents first, as listed here).
-- pksync sync CONN --policy examples/policies/only_some_tables.lua
local WANTED = { "customers", "products", "orders", "order_items" }

return {
  tables = function(remote_tables)
    local offered = {}
    for _, t in ipairs(remote_tables) do offered[t.name] = true end
    local pick = {}
    for _, name in ipairs(WANTED) do
      if offered[name] then pick[#pick + 1] = name end
    end
    return pick
  end,
}
