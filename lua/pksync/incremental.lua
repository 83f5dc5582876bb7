--- Incremental pulls: compare digests of key ranges with the sender's
-- (the table_digest extension), descend into the ranges that differ, and
-- pull only the rows of the differing leaf ranges.
--
-- Ranges of `range_rows` rows (1,000) are compared first; a differing one
-- is compared again as ranges of `leaf_rows` (10), and a differing one of
-- those row by row (the sender's digest of each row against the local
-- rows of the same bounds), so that only the rows that differ are pulled:
-- runs of neighbouring ones together, through pull-data's key range, with
-- the pull's strategy. With `mirror`, local rows of a pulled range whose
-- keys the sender lacks are deleted in the same transaction as the rows
-- that replace them. After a range is pulled, the sender's digests of its
-- rows are asked for again: when they moved, the sender changed under the
-- pull and the range is pulled again, a bounded number of times. When most first-level ranges differ (judged from the first answers
-- of at least 20 ranges; not when mirroring), a plain paged pull is cheaper
-- than pulling range by range, and runs instead.
-- @module pksync.incremental
local core = require "pksync.core"
local digest = require "pksync.digest"

local ipairs, setmetatable, rawequal = ipairs, setmetatable, rawequal
local tbl_concat = table.concat
local null = core.null

local _M = {}

local RANGE_ROWS = 1000
local LEAF_ROWS = 10
local RUN_KEYS = 1000         -- differing rows pulled as one range at most
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
                                     last = r.last, digest = r.digest, local_rows = mine[i].rows }
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

--- The sender's rows in (after, upto], one range each: their keys, and
-- their digests joined in key order (what a change of any of them moves).
local function sender_rows(st, after, upto)
  local keys, digests = {}, {}
  repeat
    local answer, err, detail = ask(st, after, upto, 1)
    if not answer then return nil, err, detail end
    for _, r in ipairs(answer.ranges) do
      if r.rows > 0 then
        keys[#keys + 1] = r.last
        digests[#digests + 1] = r.digest
      end
      after = r.last
    end
  until not answer.has_more
  return keys, tbl_concat(digests, ",")
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

--- Pull one run of differing rows (with mirror: and delete the local rows
-- of its range that the sender lacks), until the sender's digests of its
-- rows hold still across the pull.
local function pull_run(st, run)
  local keys, seen = run.keys, tbl_concat(run.digests, ",")
  for _ = 0, RETRIES do
    local ok, err, detail = in_transaction(st.db, function()
      local pulled, e, d = st.pull_range(run.after, run.upto)
      if not pulled or not st.mirror then return pulled, e, d end
      local n
      n, e, d = digest.delete_missing(st.db, st.facts, run.after, run.upto, keys)
      if not n then return nil, "database_error", d or { message = e } end
      st.result.records_deleted = st.result.records_deleted + n
      return true
    end)
    if not ok then return nil, err, detail end
    st.result.ranges_pulled = st.result.ranges_pulled + 1
    local now_keys, now_seen, detail2 = sender_rows(st, run.after, run.upto)
    if not now_keys then return nil, now_seen, detail2 end
    if now_seen == seen then return true end
    st.result.sender_changed = st.result.sender_changed + 1
    keys, seen = now_keys, now_seen
  end
  return nil, "sender_changed", { message = "the sender kept changing rows while they were pulled" }
end

--- A compare callback that keeps each differing range in list.
local function collector(list)
  return function(range)
    list[#list + 1] = range
    return true
  end
end

--- Pull what differs inside the differing first-level ranges: each is
-- compared again as leaves, each differing leaf row by row, and the runs of
-- differing rows are pulled.
local function pull_differing(st, differing)
  local err, detail
  local leaves, leaf_rows = {}, st.leaf_rows or LEAF_ROWS
  local add_leaf = collector(leaves)
  for _, range in ipairs(differing) do
    if range.rows <= leaf_rows and range.local_rows <= leaf_rows then
      add_leaf(range)
    else
      local ok
      ok, err, detail = compare(st, range.after, range.upto, leaf_rows, add_leaf)
      if not ok then return nil, err, detail end
    end
  end
  -- row by row inside each differing leaf; neighbours (ranges sharing a
  -- bound: the same key value) join one run
  local runs = {}
  local function add_row(row)
    local run = runs[#runs]
    if not (run and rawequal(run.upto, row.after) and #run.keys < RUN_KEYS) then
      run = { after = row.after, keys = {}, digests = {} }
      runs[#runs + 1] = run
    end
    run.upto = row.upto
    if row.rows > 0 then
      run.keys[#run.keys + 1] = row.last
      run.digests[#run.digests + 1] = row.digest
    end
    return true
  end
  for _, leaf in ipairs(leaves) do
    local ok
    ok, err, detail = compare(st, leaf.after, leaf.upto, 1, add_row)
    if not ok then return nil, err, detail end
  end
  for _, run in ipairs(runs) do
    local ok
    ok, err, detail = pull_run(st, run)
    if not ok then return nil, err, detail end
  end
  return true
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
  local range_rows = st.range_rows or RANGE_ROWS
  local compared, err, detail = compare(st, nil, nil, range_rows, collector(differing), mostly_changed,
    FALLBACK_SAMPLE * range_rows)
  if not compared then return nil, err, detail end
  if err == true or mostly_changed(compared) then
    r.path = "pull-data"
    r.incremental_fallback = true
    return st.pull_all()
  end
  local ok
  ok, err, detail = pull_differing(st, differing)
  -- a sender that changed under the pull: its other ranges may have moved
  -- too since they were compared, so compare them all again (bounded)
  local changed = 0
  for _ = 1, RETRIES do
    if not ok or r.sender_changed == changed then break end
    changed = r.sender_changed
    differing = {}
    ok, err, detail = compare(st, nil, nil, range_rows, collector(differing))
    if ok then ok, err, detail = pull_differing(st, differing) end
  end
  if not ok then return nil, err, detail end
  return true
end

return _M
