-- The libcurl client (src/http.c): results, transport failures, limits,
-- keep-alive reuse and argument checking, against a real nginx.
local helper = require "helper"
local core = require "pksync.core"
local cjson = require "cjson"

local MiB = 1024 * 1024
local has_close = _VERSION == "Lua 5.4" and not jit
local it_54 = has_close and it or pending

-- Server side of the spec. Every location is plain content_by_lua_block;
-- GZIP_FILE is replaced by the path of a pre-compressed run of zeros.
local LOCATIONS = [=[
    location = /echo {
      content_by_lua_block {
        local cjson = require "cjson"
        ngx.req.read_body()
        local body = ngx.req.get_body_data()
        local file = ngx.req.get_body_file()
        if not body and file then   -- large bodies spill to a temp file
          local f = assert(io.open(file, "rb"))
          body = f:read("*a")
          f:close()
        end
        ngx.header["Content-Type"] = "application/json"
        ngx.header["X-Mixed-Case"] = "kept"
        ngx.header["X-Multi"] = { "first", "last" }
        ngx.print(cjson.encode {
          method = ngx.req.get_method(),
          uri = ngx.var.request_uri,
          headers = ngx.req.get_headers(200),
          body = body or "",
          connection = ngx.var.connection,
        })
      }
    }
    location = /error500 {
      content_by_lua_block {
        ngx.status = 500
        ngx.header["Content-Type"] = "text/html"
        ngx.print("<html><body><h1>boom</h1></body></html>")
      }
    }
    location = /missing {
      content_by_lua_block {
        ngx.status = 404
        ngx.header["Content-Type"] = "text/plain"
        ngx.print("no such thing")
      }
    }
    location = /slow {
      content_by_lua_block {
        ngx.sleep(2)
        ngx.print("late")
      }
    }
    location = /trickle {
      content_by_lua_block {
        ngx.header["Content-Type"] = "text/plain"
        for _ = 1, 600 do
          ngx.print("x")
          if not ngx.flush(true) then return end
          ngx.sleep(0.1)
        end
      }
    }
    location = /truncated {
      content_by_lua_block {
        ngx.header["Content-Length"] = 100000
        ngx.print(string.rep("a", 1000))
        ngx.flush(true)
        ngx.exit(ngx.ERROR)
      }
    }
    location = /hangup {
      return 444;
    }
    location = /large {
      content_by_lua_block {
        local size = tonumber(ngx.var.arg_size) or 3 * 1024 * 1024
        if ngx.var.arg_cl then ngx.header["Content-Length"] = size end
        local chunk = string.rep("x", 64 * 1024)
        for _ = 1, size / #chunk do
          ngx.print(chunk)
          if not ngx.var.arg_cl then ngx.flush(true) end
        end
      }
    }
    location = /gzip {
      content_by_lua_block {
        local f = assert(io.open("GZIP_FILE", "rb"))
        local data = f:read("*a")
        f:close()
        ngx.header["Content-Type"] = "application/octet-stream"
        ngx.header["Content-Encoding"] = "gzip"
        ngx.header["Content-Length"] = #data
        ngx.print(data)
      }
    }
    location = /gzip-dynamic {
      gzip on;
      gzip_types *;
      gzip_min_length 1;
      content_by_lua_block {
        ngx.header["Content-Type"] = "text/plain"
        for i = 1, 20000 do ngx.print(("line %d\n"):format(i)) end
      }
    }
    location = /many-headers {
      content_by_lua_block {
        for i = 1, 6 do ngx.header["X-Big-" .. i] = string.rep("v", 60000) end
        ngx.print("x")
      }
    }
    location = /redirect {
      content_by_lua_block { ngx.redirect("/echo", 302) }
    }
]=]

local GZIP_ZEROS = 4 * MiB

describe("pksync.core http client", function()
  local srv, gzip_file

  lazy_setup(function()
    gzip_file = helper.root .. "/" .. helper.unique("zeros") .. ".gz"
    local _, ok = helper.run(("head -c %d /dev/zero | gzip -c > %s"):format(
      GZIP_ZEROS, helper.shell_quote(gzip_file)))
    assert(ok, "could not build the gzip fixture")
    srv = helper.start_nginx {
      name = "http",
      server = (LOCATIONS:gsub("GZIP_FILE", function() return gzip_file end)),
    }
  end)

  lazy_teardown(function()
    if srv then srv.stop() end
    if gzip_file then os.remove(gzip_file) end
  end)

  local function get(h, path, opts)
    local req = { url = srv.url .. path }
    for k, v in pairs(opts or {}) do req[k] = v end
    return h:request(req)
  end

  local function echo(h, req)
    req.url = srv.url .. "/echo"
    local res, err = h:request(req)
    assert.is_nil(err)
    assert.equals(200, res.status)
    return cjson.decode(res.body), res
  end

  describe("results", function()
    it("returns a JSON 200 with lowercased headers, last value winning", function()
      local h = core.http_new {}
      local res, err = get(h, "/echo")
      assert.is_nil(err)
      assert.equals(200, res.status)
      assert.equals("application/json", res.headers["content-type"])
      assert.equals("kept", res.headers["x-mixed-case"])
      assert.is_nil(res.headers["X-Mixed-Case"])
      assert.equals("last", res.headers["x-multi"])
      local seen = cjson.decode(res.body)
      assert.equals("GET", seen.method)
      assert.equals("PhoenixKit-Sync/1.0 pksync/" .. core.version, seen.headers["user-agent"])
      assert.equals(require("pksync.transport").USER_AGENT, seen.headers["user-agent"])
      assert.matches("gzip", seen.headers["accept-encoding"], 1, true)
      assert.is_nil(seen.headers["expect"])
      h:close()
    end)

    it("delivers POST bodies and headers exactly", function()
      local h = core.http_new {}
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local body = table.concat(bytes) .. "\r\n\0tail"
      local seen = echo(h, {
        method = "POST", body = body,
        headers = { ["Content-Type"] = "application/octet-stream",
                    ["x-pksync-test"] = "  value with  spaces", ["x-number"] = 42 },
      })
      assert.equals("POST", seen.method)
      assert.equals(body, seen.body)
      assert.equals(tostring(#body), seen.headers["content-length"])
      assert.equals("application/octet-stream", seen.headers["content-type"])
      -- nginx strips the leading blanks of a field value; the inner ones arrive
      assert.equals("value with  spaces", seen.headers["x-pksync-test"])
      assert.equals("42", seen.headers["x-number"])
      assert.is_nil(seen.headers["expect"])
    end)

    it("does not invent a form content-type, and sends an empty POST without a body", function()
      local h = core.http_new {}
      local seen = echo(h, { method = "POST", body = "{}" })
      assert.is_nil(seen.headers["content-type"])
      seen = echo(h, { method = "POST" })
      assert.equals("POST", seen.method)
      assert.equals("", seen.body)
      assert.equals("0", seen.headers["content-length"])
    end)

    it("sends a large POST body without Expect: 100-continue", function()
      local h = core.http_new {}
      local body = ("0123456789abcdef"):rep(2 * MiB / 16) -- spills to nginx's temp file
      local t0 = helper.now()
      local seen = echo(h, { method = "POST", body = body,
                             headers = { ["content-type"] = "text/plain" } })
      assert.is_true(helper.now() - t0 < 1)
      assert.equals(#body, #seen.body)
      assert.is_true(seen.body == body)
      assert.is_nil(seen.headers["expect"])
    end)

    it("uses the configured user agent", function()
      local h = core.http_new { user_agent = "pksync-spec/1" }
      local seen = echo(h, {})
      assert.equals("pksync-spec/1", seen.headers["user-agent"])
    end)

    it("returns a 500 as a result with its HTML body", function()
      local h = core.http_new {}
      local res, err = get(h, "/error500")
      assert.is_nil(err)
      assert.equals(500, res.status)
      assert.equals("text/html", res.headers["content-type"])
      assert.equals("<html><body><h1>boom</h1></body></html>", res.body)
    end)

    it("returns a 404 as a result", function()
      local h = core.http_new {}
      local res = assert(get(h, "/missing"))
      assert.equals(404, res.status)
      assert.equals("no such thing", res.body)
    end)

    it("returns a redirect without following it", function()
      local h = core.http_new {}
      local res = assert(get(h, "/redirect"))
      assert.equals(302, res.status)
      assert.matches("/echo$", res.headers["location"])
    end)

    it("decodes a gzip body under the cap", function()
      local h = core.http_new { max_body = 8 * MiB }
      local res, err = get(h, "/gzip")
      assert.is_nil(err)
      assert.equals(200, res.status)
      assert.equals("gzip", res.headers["content-encoding"])
      assert.equals(GZIP_ZEROS, #res.body)
      assert.is_true(res.body == ("\0"):rep(GZIP_ZEROS))
    end)

    it("decodes a body nginx compresses on the fly", function()
      local h = core.http_new {}
      local res = assert(get(h, "/gzip-dynamic"))
      assert.equals("gzip", res.headers["content-encoding"])
      local lines = {}
      for i = 1, 20000 do lines[i] = ("line %d\n"):format(i) end
      assert.is_true(res.body == table.concat(lines))
    end)
  end)

  describe("transport failures", function()
    local function assert_failure(err, detail, want_err, want_reason)
      assert.equals(want_err, err)
      assert.equals("table", type(detail))
      assert.equals(want_reason, detail.reason)
      assert.equals("number", type(detail.code))
      assert.equals("string", type(detail.message))
      assert.is_true(#detail.message > 0)
    end

    it("reports a closed port as offline/refused", function()
      local h = core.http_new {}
      local res, err, detail = h:request { url = "http://127.0.0.1:" .. helper.free_port() .. "/" }
      assert.is_nil(res)
      assert_failure(err, detail, "offline", "refused")
      assert.equals(7, detail.code) -- CURLE_COULDNT_CONNECT
    end)

    it("reports a closed TLS port as offline/refused", function()
      local h = core.http_new {}
      local res, err, detail = h:request { url = "https://127.0.0.1:" .. helper.free_port() .. "/" }
      assert.is_nil(res)
      assert_failure(err, detail, "offline", "refused")
    end)

    it("reports an unresolvable host as offline/resolve", function()
      local h = core.http_new {}
      local res, err, detail = h:request { url = "http://pksync-no-such-host.invalid/" }
      assert.is_nil(res)
      assert_failure(err, detail, "offline", "resolve")
      assert.equals(6, detail.code) -- CURLE_COULDNT_RESOLVE_HOST
    end)

    it("reports a peer slower than the timeout as offline/timeout", function()
      local h = core.http_new { timeout = 300 }
      local t0 = helper.now()
      local res, err, detail = get(h, "/slow")
      assert.is_nil(res)
      assert_failure(err, detail, "offline", "timeout")
      assert.equals(28, detail.code) -- CURLE_OPERATION_TIMEDOUT
      assert.is_true(helper.now() - t0 < 1.5)
    end)

    it("applies a per-request timeout over the handle default", function()
      local h = core.http_new {}
      local t0 = helper.now()
      local res, err, detail = get(h, "/slow", { timeout = 300 })
      assert.is_nil(res)
      assert_failure(err, detail, "offline", "timeout")
      assert.is_true(helper.now() - t0 < 1.5)
      -- and the override does not stick to the handle
      res = assert(get(h, "/echo"))
      assert.equals(200, res.status)
    end)

    it("times out a trickling peer", function()
      local h = core.http_new { timeout = 500 }
      local t0 = helper.now()
      local res, err, detail = get(h, "/trickle")
      assert.is_nil(res)
      assert_failure(err, detail, "offline", "timeout")
      assert.is_true(helper.now() - t0 < 2)
    end)

    it("reports a peer that hangs up before answering as offline/hangup", function()
      local h = core.http_new {}
      local res, err, detail = get(h, "/hangup")
      assert.is_nil(res)
      assert_failure(err, detail, "offline", "hangup")
      assert.equals(52, detail.code) -- CURLE_GOT_NOTHING
    end)

    it("reports a body cut short as a transport error naming the truncation", function()
      local h = core.http_new {}
      local res, err, detail = get(h, "/truncated")
      assert.is_nil(res)
      assert.are_not.equal("offline", err)
      assert.equals("transport", detail.reason)
      assert.equals(18, detail.code) -- CURLE_PARTIAL_FILE
      assert.matches("remaining", err)
      assert.equals(err, detail.message)
    end)

    it("refuses a chunked body over max_body", function()
      local h = core.http_new { max_body = MiB }
      local res, err, detail = get(h, "/large")
      assert.is_nil(res)
      assert_failure(err, detail, "response_too_large", "too_large")
    end)

    it("refuses a declared Content-Length over max_body", function()
      local h = core.http_new {}
      local res, err, detail = get(h, "/large?cl=1", { max_body = MiB })
      assert.is_nil(res)
      assert_failure(err, detail, "response_too_large", "too_large")
      assert.equals(63, detail.code) -- CURLE_FILESIZE_EXCEEDED
      res = assert(get(h, "/large?cl=1"))  -- the per-request cap did not stick
      assert.equals(3 * MiB, #res.body)
    end)

    it("accepts a body of exactly max_body bytes", function()
      local h = core.http_new { max_body = MiB }
      local res = assert(get(h, "/large?size=" .. MiB))
      assert.equals(MiB, #res.body)
      res = assert(get(h, "/large?cl=1&size=" .. MiB))
      assert.equals(MiB, #res.body)
    end)

    it("refuses response headers over 256 KiB in total", function()
      local h = core.http_new {}
      local res, err, detail = get(h, "/many-headers")
      assert.is_nil(res)
      assert_failure(err, detail, "response_too_large", "too_large")
      assert.matches("headers", detail.message)
    end)

    it("catches a gzip body that expands past max_body", function()
      local h = core.http_new { max_body = MiB }
      local res, err, detail = get(h, "/gzip")
      assert.is_nil(res)
      assert_failure(err, detail, "response_too_large", "too_large")
    end)

    it("reports a TLS handshake with a plain-HTTP server as a tls error", function()
      local h = core.http_new {}
      local res, err, detail = h:request { url = "https://127.0.0.1:" .. srv.port .. "/echo" }
      assert.is_nil(res)
      assert.equals("tls", detail.reason)
      assert.equals(detail.message, err)
      assert.are_not.equal("offline", err)
    end)

    it("speaks only http and https", function()
      local h = core.http_new {}
      for _, url in ipairs { "file:///etc/passwd", "ftp://127.0.0.1/", "gopher://127.0.0.1/" } do
        local res, err, detail = h:request { url = url }
        assert.is_nil(res)
        assert.equals("transport", detail.reason)
        assert.equals(1, detail.code) -- CURLE_UNSUPPORTED_PROTOCOL
        assert.equals(detail.message, err)
      end
    end)

    it("keeps working after failures", function()
      local h = core.http_new { timeout = 300 }
      assert.is_nil((get(h, "/slow")))
      assert.is_nil((get(h, "/truncated")))
      local res = assert(get(h, "/echo"))
      assert.equals(200, res.status)
    end)
  end)

  describe("connections", function()
    it("reuses the keep-alive connection for the next request", function()
      local h = core.http_new {}
      local first, res1 = echo(h, {})
      local second, res2 = echo(h, {})
      assert.equals(1, res1.new_connections)
      assert.equals(0, res2.new_connections)
      assert.equals(first.connection, second.connection)
    end)

    it("resets per-request options between requests (POST then GET)", function()
      local h = core.http_new {}
      local seen = echo(h, { method = "POST", body = "payload",
                             headers = { ["x-only-once"] = "1" } })
      assert.equals("POST", seen.method)
      local again, res = echo(h, {})
      assert.equals("GET", again.method)
      assert.equals("", again.body)
      assert.is_nil(again.headers["content-length"])
      assert.is_nil(again.headers["x-only-once"])
      assert.equals(0, res.new_connections)
      assert.equals(seen.connection, again.connection)
    end)

    it("serves many requests on one handle over one connection", function()
      local h = core.http_new {}
      local opened = 0
      for i = 1, 200 do
        local res, err = h:request {
          method = (i % 2 == 0) and "POST" or "GET",
          url = srv.url .. "/echo?i=" .. i,
          body = (i % 2 == 0) and ("b"):rep(i) or nil,
        }
        assert.is_nil(err)
        assert.equals(200, res.status)
        local seen = cjson.decode(res.body)
        assert.equals("/echo?i=" .. i, seen.uri)
        assert.equals((i % 2 == 0) and ("b"):rep(i) or "", seen.body)
        opened = opened + res.new_connections
      end
      assert.equals(1, opened)
      h:close()
    end)
  end)

  describe("arguments", function()
    local function raises(pattern, fn)
      local ok, msg = pcall(fn)
      assert.is_false(ok)
      assert.matches(pattern, tostring(msg))
    end

    it("rejects bad request arguments", function()
      local h = core.http_new {}
      local url = srv.url .. "/echo"
      raises("table expected", function() h:request() end)
      raises("table expected", function() h:request(url) end)
      raises("invalid method 'PUT'", function() h:request { method = "PUT", url = url } end)
      raises("invalid method 'get'", function() h:request { method = "get", url = url } end)
      raises("'url' is required", function() h:request {} end)
      raises("'url' must be a string", function() h:request { url = 42 } end)
      raises("'timeout' must not be negative", function() h:request { url = url, timeout = -1 } end)
      raises("'connect_timeout' must not be negative",
        function() h:request { url = url, connect_timeout = -5 } end)
      raises("'timeout' must be a number", function() h:request { url = url, timeout = "1" } end)
      raises("'max_body' must not be negative", function() h:request { url = url, max_body = -1 } end)
      raises("'headers' must be a table", function() h:request { url = url, headers = "x: y" } end)
      raises("header values must be strings",
        function() h:request { url = url, headers = { a = true } } end)
      raises("header names must be strings",
        function() h:request { url = url, headers = { "x: y" } } end)
      raises("'body' must be a string", function() h:request { method = "POST", url = url, body = {} } end)
      raises("'body' needs method POST", function() h:request { url = url, body = "x" } end)
      raises("contains a NUL byte", function() h:request { url = url .. "\0evil" } end)
      -- the handle is still usable after all of that
      assert.equals(200, assert(h:request { url = url }).status)
    end)

    it("rejects header injection", function()
      local h = core.http_new {}
      local url = srv.url .. "/echo"
      for _, headers in ipairs {
        { ["x-a"] = "b\r\nx-evil: 1" },
        { ["x-a"] = "b\nx-evil: 1" },
        { ["x-a"] = "b\rc" },
        { ["x-a"] = "b\0c" },
        { ["x-a\r\nx-evil"] = "1" },
        { ["x-a\n"] = "1" },
        { ["x-a: b"] = "1" },
        { ["x a"] = "1" },
        { [""] = "1" },
      } do
        raises("header", function() h:request { url = url, headers = headers } end)
      end
    end)

    it("rejects bad handle options", function()
      raises("table expected", function() core.http_new "x" end)
      raises("'timeout' must not be negative", function() core.http_new { timeout = -1 } end)
      raises("'connect_timeout' must not be negative", function() core.http_new { connect_timeout = -1 } end)
      raises("'timeout' must not be negative", function() core.http_new { timeout = 0 / 0 } end)
      raises("'max_body' must be positive", function() core.http_new { max_body = 0 } end)
      raises("'insecure' must be a boolean", function() core.http_new { insecure = "yes" } end)
      raises("'insecure' must be a boolean", function() core.http_new { insecure = 1 } end)
      raises("'ca_file' must be a string", function() core.http_new { ca_file = true } end)
      raises("'user_agent' must be a string", function() core.http_new { user_agent = 1 } end)
      assert.is_truthy(core.http_new())
      assert.is_truthy(core.http_new { insecure = false, ca_file = "/nonexistent.pem" })
    end)

    it("checks certificates against ca_file", function()
      -- a CA file that does not exist fails the TLS setup, before any
      -- certificate could be accepted
      local h = core.http_new { ca_file = "/nonexistent/pksync-ca.pem" }
      local res, _, detail = h:request { url = "https://127.0.0.1:" .. srv.port .. "/" }
      assert.is_nil(res)
      assert.equals("tls", detail.reason)
    end)
  end)

  describe("lifetime", function()
    it("raises on a closed handle and closes idempotently", function()
      local h = core.http_new {}
      assert.matches("^pksync.http %(0x", tostring(h))
      h:close()
      h:close()
      assert.equals("pksync.http (closed)", tostring(h))
      local ok, msg = pcall(h.request, h, { url = srv.url .. "/echo" })
      assert.is_false(ok)
      assert.matches("closed handle", msg)
    end)

    it("rejects a foreign self", function()
      local h = core.http_new {}
      assert.is_false((pcall(h.request, {}, { url = srv.url })))
      assert.is_false((pcall(h.request, io.stdout, { url = srv.url })))
    end)

    it("is collected without an explicit close", function()
      for _ = 1, 50 do
        local h = core.http_new {}
        assert(h:request { url = srv.url .. "/echo" })
      end
      collectgarbage()
      collectgarbage()
    end)

    it_54("closes a <close> variable on scope exit and on error", function()
      local chunk = assert(load([[
        local core, url, box, fail = ...
        do
          local h <close> = core.http_new {}
          box.h = h
          assert(h:request { url = url })
          if fail then error("boom") end
        end
      ]]))
      local url = srv.url .. "/echo"
      for _, fail in ipairs { false, true } do
        local box = {}
        local ok, msg = pcall(chunk, core, url, box, fail)
        assert.equals(not fail, ok)
        if fail then assert.matches("boom", msg) end
        assert.equals("pksync.http (closed)", tostring(box.h))
        assert.is_false((pcall(box.h.request, box.h, { url = url })))
      end
    end)
  end)
end)
