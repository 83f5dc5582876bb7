-- Print a free TCP port on 127.0.0.1 (the kernel picks it).
local socket = require "socket"
local s = assert(socket.bind("127.0.0.1", 0))
local _, port = s:getsockname()
s:close()
print(port)
