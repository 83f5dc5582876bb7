-- Conflict resolution: when a row exists on both sides, keep the one with
-- the newest updated_at. Tables without updated_at use the default strategy.
local HAS_UPDATED_AT = { customers = true, products = true, orders = true }

return {
  strategy = function(table_name)
    if HAS_UPDATED_AT[table_name] then return "custom" end
    return "skip"
  end,

  -- Rows come as JSON objects of the stored values; timestamps are ISO 8601
  -- in UTC, so comparing the strings compares the times.
  resolve = function(_, local_row, remote_row)
    local l, r = local_row.updated_at, remote_row.updated_at
    if type(r) ~= "string" then return local_row end
    if type(l) ~= "string" or r > l then return remote_row end
    return local_row
  end,
}
