-- TLS for real: a test CA and certificates made with openssl at test time,
-- nginx serving the pksync API over https on loopback, and the client's
-- verification (on by default, ca_file, insecure) against each of them.
local helper = require "helper"
local sites = require "sites"
local pksync = require "pksync"

local q = helper.shell_quote

--- Run openssl in `dir`; raises with its output when it fails.
local function openssl(dir, args)
  local out, ok = helper.run(("cd %s && openssl %s"):format(q(dir), args))
  if not ok then error("openssl " .. args .. " failed: " .. out, 2) end
  return out
end

-- One configuration per CA: `openssl req` makes the CA and the requests,
-- `openssl ca` signs them (it alone sets dates in the past on OpenSSL 3.0).
local CA_CONFIG = [[
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = %s
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/issued
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = none
[ any_name ]
commonName = supplied
[ leaf_loopback ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost
[ leaf_other ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = DNS:other.example
]]

local NEW_KEY = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"

--- A CA in its own directory under `root`: {dir, cert, config}.
local function make_ca(root, name)
  local dir = root .. "/" .. name
  assert(os.execute("mkdir -p " .. q(dir .. "/issued")))
  helper.write_file(dir .. "/index.txt", "")
  helper.write_file(dir .. "/serial", "1000\n")
  local config = dir .. "/ca.cnf"
  helper.write_file(config, CA_CONFIG:format(dir))
  openssl(dir, ("req -x509 -new %s -keyout ca.key -out ca.pem -days 2 -subj %s -config ca.cnf -extensions ca_ext")
    :format(NEW_KEY, q("/CN=pksync test " .. name)))
  return { dir = dir, cert = dir .. "/ca.pem", config = config }
end

--- A server certificate signed by `ca`: {cert, key}. opts: cn, ext (the
-- extension section: leaf_loopback or leaf_other), dates ("-days 2" or
-- "-startdate ... -enddate ...").
local function issue(ca, root, name, opts)
  local key, csr, cert = root .. "/" .. name .. ".key", root .. "/" .. name .. ".csr", root .. "/" .. name .. ".pem"
  openssl(root, ("req -new %s -keyout %s -out %s -subj %s -config %s"):format(
    NEW_KEY, q(key), q(csr), q("/CN=" .. opts.cn), q(ca.config)))
  openssl(root, ("ca -batch -notext -config %s -extensions %s %s -in %s -out %s"):format(
    q(ca.config), opts.ext, opts.dates or "-days 2", q(csr), q(cert)))
  return { cert = cert, key = key }
end

--- What `openssl x509` says of a certificate (its dates and names).
local function describe_cert(c)
  return openssl(helper.root, ("x509 -in %s -noout -issuer -dates -ext subjectAltName"):format(q(c.cert)))
end

--- A transport failure that is a refused certificate, not an unreachable
-- peer: err is curl's text, which names the fault (`text`, found plainly).
local function assert_tls_refused(text, res, err, detail)
  assert.is_nil(res)
  assert.is_string(err)
  assert.are_not.equal("offline", err)
  assert.is_table(detail)
  assert.equals("tls", detail.reason)
  assert.equals(60, detail.code) -- CURLE_PEER_FAILED_VERIFICATION
  assert.equals(detail.message, err)
  assert.matches(text, err, 1, true)
end

local EXPIRED = "certificate has expired"
local UNKNOWN_CA = "unable to get local issuer certificate"
local WRONG_HOST = "no alternative certificate subject name matches target host name '127.0.0.1'"

describe("TLS", function()
  local dir, ca, other_ca, certs
  local a, b
  local servers = {}

  lazy_setup(function()
    dir = helper.root .. "/" .. helper.unique("tls")
    assert(os.execute("mkdir -p " .. q(dir)))
    ca = make_ca(dir, "ca")
    other_ca = make_ca(dir, "unknown-ca")
    certs = {
      good = issue(ca, dir, "good", { cn = "127.0.0.1", ext = "leaf_loopback" }),
      unknown_ca = issue(other_ca, dir, "unknown-ca-leaf", { cn = "127.0.0.1", ext = "leaf_loopback" }),
      other_host = issue(ca, dir, "other-host", { cn = "other.example", ext = "leaf_other" }),
      expired = issue(ca, dir, "expired", { cn = "127.0.0.1", ext = "leaf_loopback",
        dates = "-startdate 20200101000000Z -enddate 20200102000000Z" }),
    }
    -- A serves the sample shop over https with the good certificate; B
    -- trusts the test CA through ca_file
    a, b = sites.start { tls = certs.good, b_options = { ca_file = ca.cert, timeout = 10000 } }
    -- the same site behind each faulty certificate
    for _, name in ipairs { "unknown_ca", "other_host", "expired" } do
      servers[name] = sites.serve(a.conninfo, { name = "tls-" .. name, tls = certs[name] })
    end
  end)

  lazy_teardown(function()
    for _, srv in pairs(servers) do srv.stop() end
    if a then sites.stop(a, b) end
    if dir then helper.run("rm -rf " .. q(dir)) end
  end)

  it("made the certificates it meant to", function()
    local good = describe_cert(certs.good)
    assert.matches("CN = pksync test ca", good, 1, true)
    assert.matches("IP Address:127.0.0.1, DNS:localhost", good, 1, true)
    assert.matches("CN = pksync test unknown-ca", describe_cert(certs.unknown_ca), 1, true)
    assert.matches("DNS:other.example", describe_cert(certs.other_host), 1, true)
    local expired = describe_cert(certs.expired)
    assert.matches("notAfter=Jan  2 00:00:00 2020 GMT", expired, 1, true)
    assert.matches("IP Address:127.0.0.1", expired, 1, true)
    assert.equals("https://127.0.0.1:" .. a.srv.port, a.srv.url)
    assert.equals(a.srv.url, a.url)
  end)

  it("verifies by default: the test CA is unknown without ca_file", function()
    local client = pksync.new { site_url = "https://me.example" }
    assert_tls_refused(UNKNOWN_CA, client:check_remote_status(a.url))
    client:close()
  end)

  it("accepts the good certificate through ca_file, by IP and by host name", function()
    local client = pksync.new { site_url = "https://me.example", ca_file = ca.cert }
    local st = assert(client:check_remote_status(a.url))
    assert.is_true(st.enabled)
    assert.equals("auto_accept", st.incoming_mode)
    st = assert(client:check_remote_status("https://localhost:" .. a.srv.port))
    assert.is_true(st.enabled)
    client:close()
  end)

  it("refuses a certificate from another CA, and that CA's own file accepts it", function()
    local client = pksync.new { site_url = "https://me.example", ca_file = ca.cert }
    assert_tls_refused(UNKNOWN_CA, client:check_remote_status(servers.unknown_ca.url))
    client:close()
    local theirs = pksync.new { site_url = "https://me.example", ca_file = other_ca.cert }
    assert.is_true(assert(theirs:check_remote_status(servers.unknown_ca.url)).enabled)
    -- and that file does not vouch for the good certificate
    assert_tls_refused(UNKNOWN_CA, theirs:check_remote_status(a.url))
    theirs:close()
  end)

  it("refuses a certificate for another host name", function()
    local client = pksync.new { site_url = "https://me.example", ca_file = ca.cert }
    assert_tls_refused(WRONG_HOST, client:check_remote_status(servers.other_host.url))
    assert_tls_refused("no alternative certificate subject name matches target host name 'localhost'",
      client:check_remote_status("https://localhost:" .. servers.other_host.port))
    client:close()
  end)

  it("refuses an expired certificate", function()
    local client = pksync.new { site_url = "https://me.example", ca_file = ca.cert }
    assert_tls_refused(EXPIRED, client:check_remote_status(servers.expired.url))
    client:close()
  end)

  it("accepts every faulty certificate with insecure = true, and only then", function()
    local client = pksync.new { site_url = "https://me.example", insecure = true }
    for _, name in ipairs { "unknown_ca", "other_host", "expired" } do
      local st = assert(client:check_remote_status(servers[name].url))
      assert.is_true(st.enabled, name)
      assert.equals("auto_accept", st.incoming_mode, name)
    end
    client:close()
    local strict = pksync.new { site_url = "https://me.example", insecure = false }
    assert_tls_refused(UNKNOWN_CA, strict:check_remote_status(servers.unknown_ca.url))
    strict:close()
  end)

  it("refuses faulty certificates on the credentialed calls, pull and sync too", function()
    local function at(srv)
      return { site_url = srv.url, auth_token_hash = b.conn.auth_token_hash }
    end
    assert_tls_refused(UNKNOWN_CA, b.client:fetch_sender_tables(at(servers.unknown_ca)))
    assert_tls_refused(WRONG_HOST, b.client:query_sender_status(at(servers.other_host)))
    assert_tls_refused(EXPIRED, b.client:pull_table_data(at(servers.expired), "customers"))
    assert_tls_refused(EXPIRED, b.client:sync_connection(at(servers.expired)))
    -- nothing arrived
    assert.equals("0", b.sql("SELECT count(*) FROM customers"))
  end)

  it("pulls a whole table over https, page by page", function()
    assert.equals("active", b.client:query_sender_status(b.conn))
    local r = assert(b.client:pull_table_data(b.conn, "customers", { page_size = 120 }))
    assert.equals(500, r.records_transferred)
    assert.equals(500, r.records_imported)
    assert.equals(0, r.records_failed)
    assert.is_true(r.pages >= 5, "pages: " .. tostring(r.pages))
    assert.equals(sites.fingerprint(a, "customers"), sites.fingerprint(b, "customers"))
  end)

  it("syncs the two sites over https", function()
    local report = assert(b.client:sync_connection(b.conn))
    assert.equals("active", report.sender_status)
    local by_name = {}
    for _, t in ipairs(report.tables) do by_name[t.name] = t end
    assert.equals("unchanged", by_name.customers.action)
    for _, name in ipairs(sites.TABLES) do
      if name ~= "customers" then
        assert.equals("pulled", by_name[name].action, name)
        assert.equals(0, by_name[name].failed, name)
      end
      assert.equals(sites.fingerprint(a, name), sites.fingerprint(b, name), name)
    end
    assert.equals(200 + 1500 + 3375 + 600, report.totals.imported)
  end)
end)
