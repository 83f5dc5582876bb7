-- Receive customer data without real e-mail addresses:
-- "alice@example.com" becomes "a***3f9c1e@example.com". The short digest
-- keeps masked addresses distinct, so a UNIQUE email column still holds.
local pksync = require "pksync"

local function mask(email)
  local user, domain = email:match("^([^@]+)@(.+)$")
  if not user then return "***" end
  return user:sub(1, 1) .. "***" .. pksync.token.hash(email):sub(1, 6) .. "@" .. domain
end

return {
  transform = function(table_name, row)
    if table_name == "customers" and type(row.email) == "string" then
      row.email = mask(row.email)
    end
    return row
  end,
}
