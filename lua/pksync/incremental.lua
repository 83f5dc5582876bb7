--- Incremental pulls: compare digests of key ranges with the sender's
-- (the table_digest extension), descend into the ranges that differ, and
-- pull only the rows of the differing leaf ranges.
--
-- Ranges of `range_rows` rows (1,000) are compared first; a differing one
-- is compared again as ranges of `leaf_rows` (10), and each differing leaf
-- is pulled through pull-data's key range with the pull's strategy. With
-- `mirror`, the sender's keys of a leaf are asked for first (one key per
-- range), and local rows of the leaf whose keys it lacks are deleted in the
-- same transaction as the rows that replace them. After a leaf is pulled,
-- the sender's digest of it is asked for again: when it moved, the sender
-- changed under the pull and the leaf is pulled again, a bounded number of
-- times. When most first-level ranges differ (judged from the first answers
-- of at least 20 ranges; not when mirroring), a plain paged pull is cheaper
-- than pulling range by range, and runs instead.
-- @module pksync.incremental
local core = require "pksync.core"
local digest = require "pksync.digest"

local ipairs, setmetatable = ipairs, setmetatable
local null = core.null

local _M = {}

local RANGE_ROWS = 1000
local LEAF_ROWS = 10
local RETRIES = 3
local WHOLE = 2 ^ 40          -- range_rows for "one range, however many rows"
local FALLBACK_SHARE = 0.5    -- share of differing ranges above which a full pull is cheaper
local FALLBACK_SAMPLE = 20    -- ranges compared before that share is trusted

local function array(t)
  if t == nil or t == null then return nil end
  return setmetatable(t, core.array_mt)
end

local function ask(st, after, upto, range_rows, scan_rows)
  return st.client:fetch_table_digest(st.conn, st.table, { columns = st.columns, after = array(after),
    upto = array(upto), range_rows = range_rows, scan_rows = scan_rows }, { timeout = st.timeout })
end

--- The local rows and digest of (after, upto].
local function local_digest(st, after, upto)
  local res, err, detail = digest.ranges(st.db, st.facts, { columns = st.columns,
    after = after, upto = upto, range_rows = WHOLE, max_rows = WHOLE })
  if not res then return nil, err, detail end
  return res.ranges[1]
end

--- The local rows and digests of a list of ranges {after=, upto=}: the
-- closed ones in one statement, the open ones (first or last of the
-- table) one by one.
local function local_digests(st, bounds)
  local closed, where = {}, {}
  local out = {}
  for i, b in ipairs(bounds) do
    if b.after ~= nil and b.upto ~= nil then
      closed[#closed + 1] = b
      where[#where + 1] = i
    else
      local one, err, detail = local_digest(st, b.after, b.upto)
      if not one then return nil, err, detail end
      out[i] = one
    end
  end
  if #closed > 0 then
    local res, err, detail = digest.bounded(st.db, st.facts, st.columns, closed)
    if not res then return nil, err, detail end
    for j, i in ipairs(where) do out[i] = res[j] end
  end
  return out
end

--- Walk the sender's ranges of `range_rows` rows inside (after, upto],
-- compare each with the local rows of the same bounds, and call
-- on_differ(range) for each that differs: {after=, upto=, rows=, digest=}.
-- After each answer, give_up(compared) may end the walk early; the first
-- answer then scans only `first_scan` rows, a sample to decide on.
-- @return the number of ranges compared (and true when given up), or nil, err, detail
local function compare(st, after, upto, range_rows, on_differ, give_up, first_scan)
  local compared = 0
  local scan = give_up and first_scan or nil
  repeat
    local answer, err, detail = ask(st, after, upto, range_rows, scan)
    scan = nil
    if not answer then return nil, err, detail end
    -- each range's bounds: from the previous range's last key to its own,
    -- the final one of a complete answer on to the bound asked for
    local bounds, prev = {}, after
    for i, r in ipairs(answer.ranges) do
      local last = r.last
      if i == #answer.ranges and not answer.has_more then last = upto end
      bounds[i] = { after = prev, upto = last }
      prev = last
    end
    local mine
    mine, err, detail = local_digests(st, bounds)
    if not mine then return nil, err, detail end
    for i, r in ipairs(answer.ranges) do
      compared = compared + 1
      if mine[i].digest ~= r.digest or mine[i].rows ~= r.rows then
        local ok, e, d = on_differ { after = bounds[i].after, upto = bounds[i].upto, rows = r.rows,
                                     digest = r.digest, local_rows = mine[i].rows }
        if not ok then return nil, e, d end
      end
    end
    after = prev
    if give_up and answer.has_more and give_up(compared) then
      st.result.ranges_compared = st.result.ranges_compared + compared
      return compared, true
    end
  until not answer.has_more
  st.result.ranges_compared = st.result.ranges_compared + compared
  return compared
end

--- The sender's keys in (after, upto], one key per range.
local function remote_keys(st, after, upto)
  local keys = {}
  repeat
    local answer, err, detail = ask(st, after, upto, 1)
    if not answer then return nil, err, detail end
    for _, r in ipairs(answer.ranges) do
      if r.rows > 0 then keys[#keys + 1] = r.last end
      after = r.last
    end
  until not answer.has_more
  return keys
end

--- Run fn in a transaction of its own, or a savepoint inside the caller's
-- (an atomic pull, a dry run).
local function in_transaction(db, fn)
  local own = not db:in_transaction()
  local ok, err, detail = db:exec(own and "BEGIN" or "SAVEPOINT pksync_leaf")
  if not ok then return nil, "database_error", { message = err } end
  ok, err, detail = fn()
  if own then
    local done, cerr = db:exec(ok and "COMMIT" or "ROLLBACK")
    if ok and not done then return nil, "database_error", { message = cerr } end
  elseif ok then
    db:exec("RELEASE SAVEPOINT pksync_leaf")
  else
    db:exec("ROLLBACK TO SAVEPOINT pksync_leaf; RELEASE SAVEPOINT pksync_leaf")
  end
  return ok, err, detail
end

--- Pull one differing leaf (with mirror: and delete what the sender lacks),
-- until the sender's digest of it holds still across the pull.
local function pull_leaf(st, leaf)
  local seen = leaf.digest
  for _ = 0, RETRIES do
    local keys, err, detail
    if st.mirror then
      keys, err, detail = remote_keys(st, leaf.after, leaf.upto)
      if not keys then return nil, err, detail end
    end
    local ok
    ok, err, detail = in_transaction(st.db, function()
      local pulled, e, d = st.pull_range(leaf.after, leaf.upto)
      if not pulled or not keys then return pulled, e, d end
      local n
      n, e, d = digest.delete_missing(st.db, st.facts, leaf.after, leaf.upto, keys)
      if not n then return nil, "database_error", d or { message = e } end
      st.result.records_deleted = st.result.records_deleted + n
      return true
    end)
    if not ok then return nil, err, detail end
    st.result.ranges_pulled = st.result.ranges_pulled + 1
    local now
    now, err, detail = ask(st, leaf.after, leaf.upto, WHOLE)
    if not now then return nil, err, detail end
    if #now.ranges == 1 and not now.has_more and now.ranges[1].digest == seen then return true end
    st.result.sender_changed = st.result.sender_changed + 1
    seen = now.ranges[1].digest
  end
  return nil, "sender_changed", { message = "the sender kept changing rows while they were pulled" }
end

--- Run an incremental pull.
-- @param st `client`, `conn`, `db`, `facts` (the local table's, from
--   pksync.digest.describe), `table`, `columns` (shared
--   columns, hashed in this order), `mirror`, `range_rows` (rows per
--   first-level range, 1000), `timeout`, `result` (the
--   pull's result, counted into), `pull_range(after, upto)` (pull the rows
--   of a key range with the strategy), `pull_all()` (a plain paged pull)
-- @return true or nil, err, detail
function _M.run(st)
  local r = st.result
  r.path = "incremental"
  r.ranges_compared, r.ranges_pulled, r.records_deleted, r.sender_changed = 0, 0, 0, 0
  local differing = {}
  local function mostly_changed(compared)
    return not st.mirror and compared >= FALLBACK_SAMPLE and #differing > FALLBACK_SHARE * compared
  end
  local compared, err, detail = compare(st, nil, nil, st.range_rows or RANGE_ROWS, function(range)
    differing[#differing + 1] = range
    return true
  end, mostly_changed, FALLBACK_SAMPLE * (st.range_rows or RANGE_ROWS))
  if not compared then return nil, err, detail end
  if err == true or mostly_changed(compared) then
    r.path = "pull-data"
    r.incremental_fallback = true
    return st.pull_all()
  end
  local leaves, leaf_rows = {}, st.leaf_rows or LEAF_ROWS
  local function add_leaf(leaf)
    leaves[#leaves + 1] = leaf
    return true
  end
  for _, range in ipairs(differing) do
    if range.rows <= leaf_rows and range.local_rows <= leaf_rows then
      add_leaf(range)
    else
      local ok
      ok, err, detail = compare(st, range.after, range.upto, leaf_rows, add_leaf)
      if not ok then return nil, err, detail end
    end
  end
  for _, leaf in ipairs(leaves) do
    local ok
    ok, err, detail = pull_leaf(st, leaf)
    if not ok then return nil, err, detail end
  end
  return true
end

return _M
