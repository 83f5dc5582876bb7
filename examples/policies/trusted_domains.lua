-- Serving side: accept incoming connections only from sites under these
-- domains (and never send password hashes to anyone).
local TRUSTED = { "example.com", "example.org" }

local function host_of(url)
  return (url:match("^https?://([^/:]+)") or ""):lower()
end

local function trusted(host)
  for _, domain in ipairs(TRUSTED) do
    if host == domain or host:sub(-(#domain + 1)) == "." .. domain then return true end
  end
  return false
end

return {
  accept_incoming = function(request)
    if trusted(host_of(request.sender_url)) then return true end
    return false, "Connections are accepted only from " .. table.concat(TRUSTED, ", ")
  end,

  redact = function(_, table_name)
    if table_name == "customers" then return { "password_hash" } end
  end,
}
