-- JSON with exact numbers (src/json.c). Runs under Lua 5.4 and LuaJIT.
local core = require "pksync.core"

local decode, encode = core.json_decode, core.json_encode
local has_int = math.type ~= nil and math.type(1) == "integer"

local function first(text)
  local v, err = decode(text)
  assert(v ~= nil, err)
  return v[1]
end

local function is_neg_zero(x)
  return x == 0 and 1 / x < 0
end

-- decode -> encode with sorted keys: a canonical text of a document.
local function canon(text)
  local v, err = decode(text)
  assert(v ~= nil, err)
  return assert(encode(v, { sort_keys = true }))
end

local function assert_float(x, expected)
  assert.equals("number", type(x))
  if has_int then assert.equals("float", math.type(x)) end
  assert.equals(expected, x)
end

local function assert_decimal(x, text)
  assert.is_true(core.is_decimal(x))
  assert.equals(text, tostring(x))
end

local function assert_decode_error(text, pattern, opts)
  local ok, v, err = pcall(decode, text, opts)
  assert.is_true(ok, v)
  assert.is_nil(v)
  assert.is_string(err)
  assert.is_truthy(err:match("^invalid JSON at byte %d+: .+"), err)
  if pattern then assert.is_truthy(err:find(pattern, 1, true), err) end
end

local function assert_encode_error(v, pattern, opts)
  local ok, s, err = pcall(encode, v, opts)
  assert.is_true(ok, s)
  assert.is_nil(s)
  assert.is_string(err)
  if pattern then assert.is_truthy(err:find(pattern, 1, true), err) end
end

describe("json_decode numbers", function()
  it("keeps integers beyond 2^53 exact", function()
    local v = first("[9007199254740993]")
    if has_int then
      assert.equals("integer", math.type(v))
      assert.equals(9007199254740993, v)
      assert.equals("9007199254740993", tostring(v))
    else
      assert_decimal(v, "9007199254740993")
    end
    assert.equals("[9007199254740993]", canon("[9007199254740993]"))
  end)

  it("reads the int64 limits exactly and anything beyond as a decimal", function()
    local lo, hi = first("[-9223372036854775808]"), first("[9223372036854775807]")
    if has_int then
      assert.equals(math.mininteger, lo)
      assert.equals(math.maxinteger, hi)
      assert.equals("integer", math.type(hi))
    else
      assert_decimal(lo, "-9223372036854775808")
      assert_decimal(hi, "9223372036854775807")
    end
    assert_decimal(first("[9223372036854775808]"), "9223372036854775808")
    assert_decimal(first("[-9223372036854775809]"), "-9223372036854775809")
  end)

  it("reads small integers as integers, not floats", function()
    local v = first("[1]")
    assert.equals(1, v)
    if has_int then assert.equals("integer", math.type(v)) end
    assert.equals("[1,-7,0]", canon("[1,-7,0]"))
    -- 2^53 itself is still exact as a plain number on LuaJIT
    assert.equals(2 ^ 53, first("[9007199254740992]"))
  end)

  it("reads fractions as floats when that loses nothing", function()
    assert_float(first("[1.5]"), 1.5)
    assert_float(first("[12.50]"), 12.5)
    assert_float(first("[1.0e10]"), 1e10)
    assert_float(first("[1E2]"), 100.0)
    assert_float(first("[-2.5e-3]"), -0.0025)
    assert_float(first("[1.0]"), 1.0)
  end)

  it("keeps the exact text when a float would not", function()
    assert_decimal(first("[3.14159265358979323846]"), "3.14159265358979323846")
    assert_decimal(first("[1e400]"), "1e400")
    assert_decimal(first("[-1e400]"), "-1e400")
    assert_decimal(first("[1e-400]"), "1e-400")
    -- same double as 0.1, but not the text the encoder would write for it
    assert_decimal(first("[0.10000000000000001]"), "0.10000000000000001")
    assert.equals("[3.14159265358979323846,1e400]", canon("[3.14159265358979323846,1e400]"))
  end)

  it("reads a 17-digit shortest form as a float that re-encodes identically", function()
    local v = first("[0.10000000149011612]")
    assert.equals("number", type(v))
    if has_int then assert.equals("float", math.type(v)) end
    assert.equals("0.10000000149011612", encode(v))
  end)

  it("keeps negative zero", function()
    local v = first("[-0.0]")
    assert.is_true(is_neg_zero(v))
    assert.equals("-0.0", encode(v))
    assert.equals("[-0.0]", canon("[-0.0]"))
  end)

  it("reads zero with any exponent as zero", function()
    assert_float(first("[0e99999999999999999999]"), 0.0)
    assert_float(first("[0.000e-5]"), 0.0)
  end)
end)

describe("decimals", function()
  it("encode verbatim", function()
    local d = core.decimal("1.50")
    assert.equals("1.50", encode(d))
    assert.equals('{"price":1.50}', encode({ price = d }))
    assert.equals("[1.50,-0.000]", encode({ d, core.decimal("-0.000") }))
  end)

  it("are recognised by is_decimal", function()
    assert.is_true(core.is_decimal(core.decimal("12")))
    assert.is_false(core.is_decimal(12))
    assert.is_false(core.is_decimal("12"))
    assert.is_false(core.is_decimal(nil))
    assert.is_false(core.is_decimal(core.null))
  end)

  it("reject text that is not exactly one JSON number", function()
    local bads = { "abc", "", "01", "+1", ".5", "1.", " 1", "1 ", "NaN", "1e", "0x10", "1\0" }
    for _, bad in ipairs(bads) do
      assert.has_error(function() core.decimal(bad) end)
    end
    assert.has_error(function() core.decimal(1.5) end)  -- a number has already lost digits
    assert.has_error(function() core.decimal() end)
  end)

  it("compare, print and concatenate by their text", function()
    local a = core.decimal("1.50")
    assert.equals("1.50", tostring(a))
    assert.is_true(a == core.decimal("1.50"))
    assert.is_false(a == core.decimal("1.5"))
    assert.equals("x1.50", "x" .. a)
    assert.equals("1.50y", a .. "y")
    assert.equals("1.501.50", a .. a)
    assert.equals("2 1.50", 2 .. " " .. a)
    assert.has_error(function() return a .. {} end)
  end)
end)

describe("json round trips", function()
  local corpus = {
    { '[9007199254740993, -9223372036854775808, 18446744073709551616]',
      '[9007199254740993,-9223372036854775808,18446744073709551616]' },
    { '{"pi":3.14159265358979323846,"big":1e400,"small":1e-400,"n":12.50}',
      '{"big":1e400,"n":12.5,"pi":3.14159265358979323846,"small":1e-400}' },
    { '[[],{},[[]],{"a":[]},{"a":{}},[{}]]', '[[],{},[[]],{"a":[]},{"a":{}},[{}]]' },
    { '"\\ud83d\\ude00 caf\\u00e9 \\u4e2d \\uD834\\uDD1E"',
      '"\240\159\152\128 caf\195\169 \228\184\173 \240\157\132\158"' },
    { '"\240\159\152\128"', '"\240\159\152\128"' },
    { '"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f"',
      '"\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\127"' },
    { '"\\u2028\\u2029"', '"\\u2028\\u2029"' },
    { '{"b":[true,false,null],"a":{"z":0,"y":-1}}', '{"a":{"y":-1,"z":0},"b":[true,false,null]}' },
    { ' \t\r\n[ 1 , 2 ] \n', '[1,2]' },
    { '{"a":1,"a":2}', '{"a":2}' },
    { '{"\\u0000":"\\u0000"}', '{"\\u0000":"\\u0000"}' },
    { '[0.1,1e300,-2.5e-3,5e-324]', '[0.1,1e+300,-0.0025,5e-324]' },
    { '{"rows":[{"id":1,"amount":"12.30","qty":3.25,"tags":[],"meta":{}}]}',
      '{"rows":[{"amount":"12.30","id":1,"meta":{},"qty":3.25,"tags":[]}]}' },
    { '""', '""' },
    { 'null', 'null' },
    { '-0', '0' },
  }

  it("give a semantically identical document", function()
    for _, case in ipairs(corpus) do
      local out = canon(case[1])
      assert.equals(case[2], out)
      assert.equals(out, canon(out))  -- and a fixed point
    end
  end)

  it("keep empty arrays and objects apart", function()
    local v = assert(decode('{"a":[],"o":{}}'))
    assert.equals(core.array_mt, getmetatable(v.a))
    assert.is_nil(getmetatable(v.o))
    assert.equals('{"a":[],"o":{}}', encode(v, { sort_keys = true }))
  end)

  it("decode strings binary-safely", function()
    assert.equals("a\0b", decode('"a\\u0000b"'))
    assert.equals(3, #decode('"a\\u0000b"'))
    assert.equals("\240\159\152\128", decode('"\\ud83d\\ude00"'))
  end)
end)

describe("json floats", function()
  local floats = { 0.1, 1 / 3, 1e300, 5e-324, 2 ^ 53 + 0.0, -0.0, 123456.789, 2.5, 1e-7, 1e21,
    -1.7976931348623157e308, 2.2250738585072014e-308, math.pi, 2 ^ 60 + 0.0, 0.0, -1.5, 100.0 }

  it("round-trip bit-exactly through encode and decode", function()
    for _, x in ipairs(floats) do
      local text = assert(encode(x))
      local y = first("[" .. text .. "]")
      assert.equals("number", type(y), text)
      assert.equals(x, y, text)
      assert.equals(is_neg_zero(x), is_neg_zero(y), text)
      if has_int then assert.equals("float", math.type(y), text) end
    end
  end)

  it("are written so they read back as floats", function()
    if has_int then
      assert.equals("1.0", encode(1.0))
      assert.equals("100.0", encode(100.0))
      assert.equals("9007199254740992.0", encode(2 ^ 53))
      assert.equals("1", encode(1))
    else
      -- LuaJIT has only numbers: integral ones up to 2^53 are integer text
      assert.equals("1", encode(1.0))
      assert.equals("9007199254740992", encode(2 ^ 53))
      assert.is_truthy(encode(2 ^ 60):find("e", 1, true))
    end
    assert.equals("0.1", encode(0.1))
    assert.equals("-0.0", encode(-0.0))
    assert.equals("0.3333333333333333", encode(1 / 3))
  end)

  it("round-trip the integer limits on 5.4", function()
    if not has_int then return end
    for _, i in ipairs({ math.maxinteger, math.mininteger, 0, -1, math.tointeger(2 ^ 53) + 1 }) do
      local y = first("[" .. encode(i) .. "]")
      assert.equals("integer", math.type(y))
      assert.equals(i, y)
    end
  end)
end)

describe("json_decode errors", function()
  it("report position and reason", function()
    local v, err = decode("[1,2")
    assert.is_nil(v)
    assert.equals("invalid JSON at byte 5: unexpected end of input", err)
    v, err = decode('{"a":1} x')
    assert.is_nil(v)
    assert.equals("invalid JSON at byte 9: unexpected character after the JSON value", err)
    v, err = decode('["a", "b\\ud800"]')
    assert.is_nil(v)
    assert.equals("invalid JSON at byte 9: lone surrogate in \\u escape", err)
  end)

  it("return nil and a message for malformed input", function()
    local cases = {
      '{"a":', "[1,2", '"abc', "{} x", "[1]]", "", "   ", "[", "{", '{"a"', '{"a":1', "[1,",
      '"\255"', '"\192\175"', '"\237\160\128"', '"\244\144\128\128"', '"\128"', '"\226\130"', "\255",
      '"\\ud800"', '"\\udc00"', '"\\ud800\\u0041"', '"\\ud800\\"', '"\\x"', '"\\u12"', '"\\u12g4"', '"\\',
      '"a\nb"', '"a\0b"', '"\31"', "01", "-01", "00", "+1", ".5", "1.", "1.e5", "1e", "1e+", "-",
      "NaN", "Infinity", "-Infinity", "nan", "inf", "[0x10]", "{1:2}", "{a:1}", '{"a" 1}',
      '{"a":1,}', "[1,]", "[,1]", "[1 2]", '{"a":1 "b":2}', "\239\187\191[]", "tru", "nul", "True",
      "\0", "[1]\0", "[1\0]", "'a'", "[]]", "{}}", "/* c */ 1", "[1] // c",
    }
    for _, text in ipairs(cases) do assert_decode_error(text) end
    assert_decode_error('"abc', "unterminated string")
    assert_decode_error('"\255"', "invalid UTF-8")
    assert_decode_error('"a\tb"', "control character")
    assert_decode_error('"\\q"', "invalid escape")
    assert_decode_error("{1:2}", "object key must be a string")
    assert_decode_error("{[]:2}", "object key must be a string")
    assert_decode_error("01", "invalid number")
  end)

  it("limit nesting without crashing", function()
    assert_decode_error(("["):rep(100000), "nesting deeper than 512")
    assert_decode_error(('{"a":'):rep(100000), "nesting deeper than 512")
    assert.is_table(decode(("["):rep(512) .. ("]"):rep(512)))
    assert_decode_error(("["):rep(513) .. ("]"):rep(513), "nesting deeper than 512")
    assert_decode_error("[[1]]", "nesting deeper than 1", { max_depth = 1 })
    assert.is_table(decode("[[1]]", { max_depth = 2 }))
    assert.equals(5, decode("5", { max_depth = 1 }))
  end)
end)

describe("null", function()
  it("is the NULL light userdata shared with cjson", function()
    assert.equals("userdata", type(core.null))
    assert.equals(core.null, first("[null]"))
    assert.equals(core.null, decode("null"))
    assert.equals(core.null, decode('{"a":null}').a)
    local ok, cjson = pcall(require, "cjson")
    if ok then assert.equals(cjson.null, first("[null]")) end
  end)

  it("encodes as null", function()
    assert.equals("null", encode(core.null))
    assert.equals("[null,1]", encode({ core.null, 1 }))
    assert.equals("null", encode(nil))
  end)
end)

describe("json_encode", function()
  it("writes arrays, objects and empties", function()
    assert.equals("[1,2,3]", encode({ 1, 2, 3 }))
    assert.equals("{}", encode({}))
    assert.equals("[]", encode(setmetatable({}, core.array_mt)))
    assert.equals('{"a":true}', encode({ a = true }))
    assert.equals("[false]", encode({ [1] = false }))
    assert.equals('[[],"x"]', encode({ setmetatable({}, core.array_mt), "x" }))
  end)

  it("escapes strings", function()
    assert.equals('"a\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f/\127"',
      encode('a"b\\c\n\t\r\b\f\1\31/\127'))
    assert.equals('"\\u2028\\u2029"', encode("\226\128\168\226\128\169"))
    assert.equals('"caf\195\169 \240\159\152\128"', encode("caf\195\169 \240\159\152\128"))
    assert.equals('"\\u0000"', encode("\0"))
  end)

  it("sorts keys bytewise on request", function()
    local t = { b = 1, a = 2, ["a\0"] = 3, B = 4, [""] = 5, ab = { z = 1, y = 2 } }
    assert.equals('{"":5,"B":4,"a":2,"a\\u0000":3,"ab":{"y":2,"z":1},"b":1}',
      encode(t, { sort_keys = true }))
    assert.equals(encode(t, { sort_keys = true }), canon(encode(t)))
  end)

  it("refuses values JSON cannot carry", function()
    assert_encode_error(0 / 0, "NaN")
    assert_encode_error(math.huge, "NaN or infinity")
    assert_encode_error(-math.huge, "NaN or infinity")
    assert_encode_error({ 1, 0 / 0 }, "NaN")
    assert_encode_error(print, "function")
    assert_encode_error({ a = { b = print } }, "function")
    assert_encode_error(coroutine.create(print), "thread")
    assert_encode_error(io.stdout, "userdata")
    assert_encode_error("\255", "UTF-8")
    assert_encode_error("\192\175", "UTF-8")
    assert_encode_error("\237\160\128", "UTF-8")
    assert_encode_error({ ["\255"] = 1 }, "UTF-8")
  end)

  it("refuses tables with mixed or sparse keys", function()
    local msg = "cannot encode table with mixed or sparse keys"
    assert_encode_error({ 1, 2, x = 1 }, msg)
    assert_encode_error({ [1] = 1, [3] = 3 }, msg)
    assert_encode_error({ [2] = 1 }, msg)
    assert_encode_error({ [0] = 1 }, msg)
    assert_encode_error({ [-1] = 1 }, msg)
    assert_encode_error({ [1.5] = 1 }, msg)
    assert_encode_error({ [true] = 1 }, msg)
    assert_encode_error(setmetatable({ x = 1 }, core.array_mt), msg)
    assert_encode_error(setmetatable({ [2] = 1 }, core.array_mt), msg)
  end)

  it("stops cycles and deep nesting", function()
    local t = {}
    t.self = t
    assert_encode_error(t, "nesting deeper than 512")
    local a = {}
    a[1] = a
    assert_encode_error(a, "nesting deeper than 512")
    assert_encode_error({ { { 1 } } }, "nesting deeper than 2", { max_depth = 2 })
    assert.equals("[[[1]]]", encode({ { { 1 } } }, { max_depth = 3 }))
  end)

  it("uses integer text for integers", function()
    assert.equals("-42", encode(-42))
    if has_int then
      assert.equals("9223372036854775807", encode(math.maxinteger))
      assert.equals("-9223372036854775808", encode(math.mininteger))
    end
  end)
end)

describe("json misuse", function()
  it("raises for programmer errors", function()
    assert.has_error(function() decode() end)
    assert.has_error(function() decode({}) end)
    assert.has_error(function() decode(12) end)
    assert.has_error(function() decode("[]", 5) end)
    assert.has_error(function() decode("[]", { max_depth = 0 }) end)
    assert.has_error(function() decode("[]", { max_depth = 1.5 }) end)
    assert.has_error(function() decode("[]", { max_depth = "8" }) end)
    assert.has_error(function() decode("[]", { max_depth = 1e9 }) end)
    assert.has_error(function() decode("[]", { sort_keys = true }) end)
    assert.has_error(function() decode("[]", { bogus = 1 }) end)
    assert.has_error(function() encode() end)
    assert.has_error(function() encode(1, { sort_keys = "yes" }) end)
    assert.has_error(function() encode(1, { sortkeys = true }) end)
    assert.has_error(function() encode(1, "x") end)
  end)
end)

describe("json_decode on hostile input", function()
  local alphabet = '[]{}",:0123456789-+.eE \\u tfnrl\0\255\192\237'

  local function random_bytes(n)
    local t = {}
    for i = 1, n do
      if math.random() < 0.5 then
        local k = math.random(#alphabet)
        t[i] = alphabet:sub(k, k)
      else
        t[i] = string.char(math.random(0, 255))
      end
    end
    return table.concat(t)
  end

  local function mutate(s)
    local i = math.random(#s)
    local r = math.random(5)
    if r == 1 then return s:sub(1, i - 1) .. s:sub(i + 1) end            -- delete
    if r == 2 then return s:sub(1, i - 1) .. random_bytes(1) .. s:sub(i + 1) end  -- replace
    if r == 3 then return s:sub(1, i) .. random_bytes(math.random(3)) .. s:sub(i + 1) end  -- insert
    if r == 4 then return s:sub(1, i) end                                  -- truncate
    local j = math.random(#s)                                              -- duplicate a slice
    return s:sub(1, i) .. s:sub(math.min(i, j), math.max(i, j)) .. s:sub(i + 1)
  end

  -- Anything decode accepts must encode, and come back the same.
  local function check(text)
    local ok, v, err = pcall(decode, text)
    assert.is_true(ok, v)
    if v == nil and err ~= nil then
      assert.is_string(err)
      return false
    end
    local out = encode(v, { sort_keys = true })
    assert.is_string(out)
    assert.equals(out, canon(out))
    return true
  end

  it("never raises or crashes on random bytes", function()
    math.randomseed(20240601)
    for _ = 1, 2000 do check(random_bytes(math.random(0, 40))) end
  end)

  it("never raises or crashes on mutations of a valid document", function()
    math.randomseed(7)
    local doc = '{"id":9007199254740993,"name":"caf\\u00e9 \\ud83d\\ude00","tags":["a","b\\n"],' ..
      '"price":3.14159265358979323846,"qty":12.50,"neg":-0.0,"big":1e400,"ok":true,' ..
      '"none":null,"nested":{"a":[[],{},[1,2,{"b":false}]]},"s":"\240\159\152\128"}'
    assert.is_true(check(doc))
    local accepted = 0
    for _ = 1, 2000 do
      local s = doc
      for _ = 1, math.random(3) do s = mutate(s) end
      if check(s) then accepted = accepted + 1 end
    end
    assert.is_true(accepted > 0)  -- the loop did exercise the success path
  end)
end)
