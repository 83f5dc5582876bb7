-- bench/bench.lua [ROWS]: pksync's import speed against baselines measured
-- in the same run on the same data (see bench/README.md). Run through
-- `make bench`, which provides the throwaway PostgreSQL cluster.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = "build/54/?.so;" .. package.cpath
local helper = require "helper"
local pksync = require "pksync"
local core = require "pksync.core"

local ROWS = tonumber(arg[1]) or 1000000
local SMALL = math.min(100000, ROWS)
local PAGE = tonumber(os.getenv("PKSYNC_BENCH_PAGE") or "") or 25000

-- Autovacuum is off for every bench table alike, so background work from
-- one step does not land in the next step's timing.
local TABLE = [[CREATE TABLE %s (id bigint PRIMARY KEY, uuid uuid, name text, price numeric(12,2),
  active boolean, created_at timestamptz, tags text[], payload jsonb) WITH (autovacuum_enabled = off)]]

local function say(fmt, ...) io.write(string.format(fmt, ...), "\n") io.flush() end

local function timed(fn)
  helper.psql("postgres", "CHECKPOINT")
  local t0 = core.monotonic_ms()
  local a, b = fn()
  return (core.monotonic_ms() - t0) / 1000, a, b
end

local function make_source(dbname, name, n)
  helper.psql(dbname, TABLE:format(name))
  helper.psql(dbname, ([[INSERT INTO %s SELECT g, gen_random_uuid(), 'Product name ' || g,
    round((g %% 100000) * 1.37, 2), g %% 3 = 0, timestamptz '2024-01-01 00:00:00+00' + g * interval '17 seconds',
    ARRAY['tag' || (g %% 7), 'tag' || (g %% 11), 'quote"comma,'],
    jsonb_build_object('k', g, 'nested', jsonb_build_array(g %% 5, 'x', true), 'note', 'payload ' || g)
    FROM generate_series(1, %d) g]]):format(name, n))
  helper.psql(dbname, "VACUUM ANALYZE " .. name)
end

local function pull_process(conninfo, url, hash, tbl, strategy, extra)
  helper.psql("postgres", "CHECKPOINT")
  local cmd = ("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/54/?.so;;' lua5.4 bench/pull_one.lua %s %s %s %s %s %d %s")
    :format(helper.shell_quote(conninfo), url, hash, tbl, strategy, PAGE, extra or "")
  local out, ok = helper.run(cmd)
  assert(ok, out)
  return assert(pksync.json.decode(out:match("[^\n]*$") ~= "" and out:match("[^\n]*$") or out:match("([^\n]+)\n?$")))
end

say("pksync bench: %d rows (A on %d), page size %d", ROWS, SMALL, PAGE)
local src_db, src_ci = helper.create_database("bench_src")
local dst_db, dst_ci = helper.create_database("bench_dst")
local t_gen = timed(function() make_source(src_db, "items", ROWS) end)
say("  generated source in %.1f s", t_gen)

-- L: psql \copy of the same rows from a file into an empty table
local file = helper.root .. "/bench-items.copy"
helper.psql(src_db, ("\\copy items TO '%s'"):format(file))
helper.psql(dst_db, TABLE:format("items_l"))
local t_l = timed(function() helper.psql(dst_db, ("\\copy items_l FROM '%s'"):format(file)) end)

-- A: one INSERT ... ON CONFLICT DO NOTHING per row, each its own round trip
helper.psql(dst_db, TABLE:format("items_a"))
local src = assert(core.pg_connect(src_ci))
local rows = assert(src:query(("SELECT id, uuid::text, name, price::text, active, created_at::text, tags::text, " ..
  "payload::text FROM items ORDER BY id LIMIT %d"):format(SMALL)))
src:close()
local dst = assert(core.pg_connect(dst_ci))
local t_a = timed(function()
  for _, r in ipairs(rows) do
    assert(dst:query("INSERT INTO items_a VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
      r.id, r.uuid, r.name, r.price, r.active, r.created_at, r.tags, r.payload))
  end
end)
rows = nil
collectgarbage()

-- P: pksync pulling over HTTP from a local pksync sender (nginx)
local port = helper.free_port()
local url = "http://127.0.0.1:" .. port
local site = pksync.new { db = src_ci, site_url = url }
assert(site:migrate())
assert(site:set_settings { enabled = true })
local _, raw = assert(site:create_connection { name = "bench", direction = "sender", status = "active",
  site_url = "https://bench.example", notify = false, rate_limit_requests_per_minute = 0,
  max_records_per_request = PAGE })
site:close()
helper.psql(src_db, TABLE:format("items_small"))
helper.psql(src_db, ("INSERT INTO items_small SELECT * FROM items WHERE id <= %d"):format(SMALL))
local srv = helper.start_nginx { name = "bench", port = port, threads = 2, server = ([[
  location /phoenix_kit/sync/api/ {
    content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q } }
  }]]):format(src_ci, url) }
local hash = pksync.token.hash(raw)
helper.psql(dst_db, TABLE:format("items") .. "; " .. TABLE:format("items_small") .. "; " .. TABLE:format("items_hook"))
helper.psql(src_db, TABLE:format("items_hook"))
helper.psql(src_db, ("INSERT INTO items_hook SELECT * FROM items WHERE id <= %d"):format(SMALL))
local p_small = pull_process(dst_ci, url, hash, "items_small", "skip")
local p_hook = pull_process(dst_ci, url, hash, "items_hook", "skip", "transform")
-- every row of items_hook is there now: each one is a conflict for the resolve hook
helper.psql(src_db, ("UPDATE items_hook SET name = name || ' (changed)' WHERE id <= %d"):format(SMALL))
local p_resolve = pull_process(dst_ci, url, hash, "items_hook", "custom", "resolve")
local resolved = helper.psql(dst_db, "SELECT count(*) FILTER (WHERE name LIKE '%(changed)') || '/' || " ..
  "count(*) FILTER (WHERE id % 2 = 0) FROM items_hook")
assert(resolved == ("%d/%d"):format(SMALL // 2, SMALL // 2), "resolve kept the wrong rows: " .. resolved)
local p_empty = pull_process(dst_ci, url, hash, "items", "skip")
local p_over = pull_process(dst_ci, url, hash, "items", "overwrite")

-- an overwrite of rows equal to the local ones writes none of them
assert(p_empty.imported == ROWS and p_over.unchanged == ROWS, "pulls incomplete")
local same = helper.psql(dst_db, "SELECT count(*) FROM items d JOIN items_l l USING (id) WHERE d::text = " ..
  "ROW(l.id, l.uuid, l.name, l.price, l.active, l.created_at, l.tags, l.payload)::items::text")
assert(tonumber(same) == ROWS, "pulled rows differ from the source: " .. same)

-- Re-syncs, each timed against p_over (a full overwrite pull of the same
-- table in this run) and each proved in SQL: both tables' rows, sorted, hash
-- the same (EXCEPT both ways empty).
local function proof(label)
  local a_fp, b_fp = helper.fingerprint(src_db, "items"), helper.fingerprint(dst_db, "items")
  assert(a_fp == b_fp, label .. ": the receiver differs from the sender")
end
local r0 = pull_process(dst_ci, url, hash, "items", "overwrite", "mirror")
proof("R0")
local r0_sync = pull_process(dst_ci, url, hash, "items", "overwrite", "sync")
proof("R0 (sync)")
-- R1: 0.1 % of the rows updated, spread over the keys, and 0.01 % each inserted and deleted
local step = 1000
helper.psql(src_db, ([[UPDATE items SET price = price + 1 WHERE id %% %d = 0;
  INSERT INTO items SELECT g, gen_random_uuid(), 'new ' || g, 1, true, now(), '{}', '{}'
    FROM generate_series(%d, %d) g;
  DELETE FROM items WHERE id %% %d = %d]]):format(step, ROWS + 1, ROWS + math.max(1, ROWS // 10000),
  step * 10, step * 5 + 1))
local r1_changed = ROWS // step + 2 * math.max(1, ROWS // 10000)
local r1 = pull_process(dst_ci, url, hash, "items", "overwrite", "mirror")
proof("R1")
-- R10: 10 % of the rows updated
helper.psql(src_db, "UPDATE items SET price = price + 1 WHERE id % 10 = 3")
local r10 = pull_process(dst_ci, url, hash, "items", "overwrite", "incremental")
proof("R10")
srv.stop()

-- F: the same table from a plain sender (pksync with extensions = false
-- answers as PhoenixKit 0.2 does: max_records_per_request rows a pull-data
-- answer, row filters honoured) into an empty table: the keyset path
local f_db, f_ci = helper.create_database("bench_f")
helper.psql(f_db, TABLE:format("items"))
local plain_port = helper.free_port()
local plain_url = "http://127.0.0.1:" .. plain_port
local plain = helper.start_nginx { name = "plain", port = plain_port, threads = 2, server = ([[
  location /phoenix_kit/sync/api/ {
    content_by_lua_block { require("pksync.nginx").serve { db = %q, site_url = %q, extensions = false } }
  }]]):format(src_ci, plain_url) }
local p_plain = pull_process(f_ci, plain_url, hash, "items", "skip")
plain.stop()
assert(p_plain.path == "pull-data-keyset", "F took the " .. tostring(p_plain.path) .. " path")
local f_same = helper.fingerprint(src_db, "items") == helper.fingerprint(f_db, "items")
assert(f_same, "F: the receiver differs from the sender")
helper.drop_database(f_db)

local l_rate = ROWS / t_l
local a_rate = SMALL / t_a
local function rate(p) return p.rows / p.seconds end
say("")
say("| measure | rows | seconds | rows/s | vs L | vs A |")
say("| --- | ---: | ---: | ---: | ---: | ---: |")
say("| L: psql \\copy into an empty table | %d | %.2f | %.0f | 1.00 | %.1f |", ROWS, t_l, l_rate, l_rate / a_rate)
say("| A: INSERT ... ON CONFLICT per row | %d | %.2f | %.0f | %.3f | 1.0 |", SMALL, t_a, a_rate, a_rate / l_rate)
say("| P: pksync pull into an empty table | %d | %.2f | %.0f | %.2f | %.1f |", p_empty.rows, p_empty.seconds,
  rate(p_empty), rate(p_empty) / l_rate, rate(p_empty) / a_rate)
say("| P: pksync pull, overwrite a full table | %d | %.2f | %.0f | %.2f | %.1f |", p_over.rows, p_over.seconds,
  rate(p_over), rate(p_over) / l_rate, rate(p_over) / a_rate)
say("| P: same, every row through a Lua transform hook | %d | %.2f | %.0f | %.2f | %.1f |", p_hook.rows,
  p_hook.seconds, rate(p_hook), rate(p_hook) / l_rate, rate(p_hook) / a_rate)
say("| P: custom strategy, every row a conflict through a Lua resolve hook | %d | %.2f | %.0f | %.2f | %.1f |",
  p_resolve.rows, p_resolve.seconds, rate(p_resolve), rate(p_resolve) / l_rate, rate(p_resolve) / a_rate)
say("| (P without a hook, same %d rows) | %d | %.2f | %.0f | %.2f | %.1f |", SMALL, p_small.rows, p_small.seconds,
  rate(p_small), rate(p_small) / l_rate, rate(p_small) / a_rate)
say("| F: pull from a plain (PhoenixKit 0.2-like) sender into an empty table, %d pages | %d | %.2f | %.0f | %.2f | %.1f |",
  p_plain.pages, p_plain.rows, p_plain.seconds, rate(p_plain), rate(p_plain) / l_rate, rate(p_plain) / a_rate)
say("")
say("| re-sync (overwrite; against the full overwrite pull above) | rows transferred | bytes | seconds | vs full | path, ranges compared/pulled, deleted |")
say("| --- | ---: | ---: | ---: | ---: | --- |")
local function resync(label, r)
  say("| %s | %d | %d | %.2f | %.1f x | %s, %d/%d, %d |", label, r.rows, r.bytes, r.seconds, p_over.seconds / r.seconds,
    r.path, r.ranges_compared or 0, r.ranges_pulled or 0, r.deleted or 0)
end
resync("R0: unchanged, digest path, mirror", r0)
resync("R0: unchanged, as users get it (sync_connection)", r0_sync)
resync(("R1: %d rows changed (0.1 %% updated, 0.01 %% inserted, 0.01 %% deleted), mirror"):format(r1_changed), r1)
resync("R10: 10 % updated, incremental", r10)
say("")
say("peak RSS of the importing process: %.1f MiB at %d rows, %.1f MiB at %d rows",
  p_small.peak_rss_kib / 1024, p_small.rows, p_empty.peak_rss_kib / 1024, p_empty.rows)
local peak_kib = math.max(p_small.peak_rss_kib, p_empty.peak_rss_kib, p_over.peak_rss_kib, r0.peak_rss_kib,
  r1.peak_rss_kib, r10.peak_rss_kib, p_plain.peak_rss_kib)
helper.drop_database(src_db)
helper.drop_database(dst_db)
local function target(name, met, value) say("target %s: %s (%s)", name, met and "met" or "missed", value) end
target("P/L", rate(p_empty) >= 0.5 * l_rate, ("%.2f x L, needs 0.5"):format(rate(p_empty) / l_rate))
target("P/A", rate(p_empty) >= 20 * a_rate, ("%.1f x A, needs 20"):format(rate(p_empty) / a_rate))
target("RSS", peak_kib < 64 * 1024, ("%.1f MiB, needs < 64"):format(peak_kib / 1024))
target("R0", r0.seconds * 20 <= p_over.seconds, ("%.1f x faster than the full pull, needs 20"):format(p_over.seconds / r0.seconds))
target("R1", r1.seconds * 10 <= p_over.seconds and r1.rows < 0.02 * ROWS,
  ("%.1f x faster, needs 10; %.2f %% of the rows transferred, needs < 2"):format(p_over.seconds / r1.seconds,
    100 * r1.rows / ROWS))
target("F", rate(p_plain) >= 0.5 * rate(p_empty),
  ("%.2f x the pksync-sender pull, needs 0.5"):format(rate(p_plain) / rate(p_empty)))
target("R10", r10.seconds <= p_over.seconds, ("%.2f x the full pull's time, needs <= 1"):format(r10.seconds / p_over.seconds))
