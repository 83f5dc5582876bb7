-- Tokens, hashes and constant-time comparison (src/token.c).
local core = require "pksync.core"

describe("pksync.core tokens", function()
  it("generates 43-character base64url tokens without padding", function()
    local seen = {}
    for _ = 1, 200 do
      local t = core.token_generate()
      assert.equals(43, #t)
      assert.is_truthy(t:match("^[A-Za-z0-9_-]+$"))
      assert.is_nil(seen[t])
      seen[t] = true
    end
  end)

  it("hashes to lowercase hex SHA-256 of the token text", function()
    assert.equals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      core.token_hash("abc"))
    assert.equals("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      core.token_hash(""))
    -- binary-safe: embedded NUL bytes are hashed, not cut
    assert.are_not.equal(core.token_hash("a"), core.token_hash("a\0b"))
  end)

  it("compares in constant time but correctly", function()
    assert.is_true(core.secure_equals("abc", "abc"))
    assert.is_false(core.secure_equals("abc", "abd"))
    assert.is_false(core.secure_equals("abc", "abcd"))
    assert.is_true(core.secure_equals("", ""))
    assert.is_false(core.secure_equals("a\0", "a\1"))
  end)

  it("raises on misuse", function()
    assert.has_error(function() core.token_hash() end)
    assert.has_error(function() core.secure_equals("a") end)
    assert.has_error(function() core.random_bytes(0) end)
  end)

  it("returns random bytes of the requested length", function()
    assert.equals(16, #core.random_bytes(16))
    assert.are_not.equal(core.random_bytes(16), core.random_bytes(16))
  end)
end)
