package = "pksync"
version = "scm-1"
source = {
  url = "git+https://github.com/pksync/pksync.git",
}
description = {
  summary = "PhoenixKit Sync cross-site protocol for Lua: connections, table pulls into PostgreSQL, and the serving API",
  detailed = [[
pksync lets a Lua site (Lua 5.4, or LuaJIT inside nginx/OpenResty) speak the
PhoenixKit Sync protocol: create and notify token-based connections, list a
peer's tables, preview rows and schemas, pull tables into its own PostgreSQL
with a conflict strategy, and serve the same API. A C core does HTTP
(libcurl), exact JSON, hashing (libcrypto) and row import (libpq, COPY).
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1, < 5.5",
}
external_dependencies = {
  -- Debian keeps curl.h under the multiarch include directory, which the
  -- compiler searches by itself; check for the library only.
  CURL = { library = "curl" },
  PQ = { header = "postgresql/libpq-fe.h", library = "pq" },
  CRYPTO = { header = "openssl/evp.h", library = "crypto" },
}
build = {
  type = "builtin",
  modules = {
    ["pksync.core"] = {
      sources = {
        "src/base64.c", "src/buf.c", "src/core.c", "src/export.c", "src/http.c", "src/import.c", "src/json.c", "src/luax.c",
        "src/pg.c", "src/pgarray.c", "src/rows.c", "src/signals.c", "src/token.c",
      },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "$(CURL_INCDIR)", "$(PQ_INCDIR)/postgresql", "$(CRYPTO_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(PQ_LIBDIR)", "$(CRYPTO_LIBDIR)" },
      libraries = { "curl", "pq", "crypto" },
    },
    ["pksync"] = "lua/pksync/init.lua",
    ["pksync.answer"] = "lua/pksync/answer.lua",
    ["pksync.catalog"] = "lua/pksync/catalog.lua",
    ["pksync.cli"] = "lua/pksync/cli.lua",
    ["pksync.cli_commands"] = "lua/pksync/cli_commands.lua",
    ["pksync.cli_output"] = "lua/pksync/cli_output.lua",
    ["pksync.cli_pull"] = "lua/pksync/cli_pull.lua",
    ["pksync.cli_schedule"] = "lua/pksync/cli_schedule.lua",
    ["pksync.cli_serve"] = "lua/pksync/cli_serve.lua",
    ["pksync.digest"] = "lua/pksync/digest.lua",
    ["pksync.incremental"] = "lua/pksync/incremental.lua",
    ["pksync.access"] = "lua/pksync/access.lua",
    ["pksync.admin"] = "lua/pksync/admin.lua",
    ["pksync.nginx"] = "lua/pksync/nginx.lua",
    ["pksync.notifier"] = "lua/pksync/notifier.lua",
    ["pksync.plan"] = "lua/pksync/plan.lua",
    ["pksync.policy"] = "lua/pksync/policy.lua",
    ["pksync.pull"] = "lua/pksync/pull.lua",
    ["pksync.schedule"] = "lua/pksync/schedule.lua",
    ["pksync.sync"] = "lua/pksync/sync.lua",
    ["pksync.store_ddl"] = "lua/pksync/store_ddl.lua",
    ["pksync.serve_data"] = "lua/pksync/serve_data.lua",
    ["pksync.server"] = "lua/pksync/server.lua",
    ["pksync.store"] = "lua/pksync/store.lua",
    ["pksync.transport"] = "lua/pksync/transport.lua",
    ["pksync.util"] = "lua/pksync/util.lua",
  },
  -- the command-line tool (a thin script: everything is in pksync.cli)
  -- the admin page's static files, beside pksync/admin.lua (pksync.admin
  -- finds them there): luarocks keeps a non-.lua file's own name
  install = {
    bin = { pksync = "bin/pksync" },
    lua = {
      ["pksync.admin.index"] = "lua/pksync/admin/index.html",
      ["pksync.admin.admin_js"] = "lua/pksync/admin/admin.js",
      ["pksync.admin.admin_css"] = "lua/pksync/admin/admin.css",
    },
  },
}
