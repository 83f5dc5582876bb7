#!/usr/bin/env bash
# Install the Debian packages pksync needs; skip what is already installed.
# Runs `apt-get update` at most once, and only when something is missing.
set -euo pipefail

packages=(
  build-essential pkg-config ca-certificates curl
  lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev
  libcurl4-openssl-dev libssl-dev libpq-dev postgresql postgresql-client
  lua-cjson lua-busted lua-socket luarocks
  nginx libnginx-mod-http-lua
  clang libclang-rt-14-dev valgrind
  chromium fonts-dejavu-core
  ${PKSYNC_EXTRA_PACKAGES:-}
)
# the browser specs' node and npm (playwright-core: scripts/browser-deps.sh),
# unless the machine has them from elsewhere
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Debian's nginx package starts a system nginx on port 80; pksync never
# needs it, so keep the package's service from starting where we can.
if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$sudo" ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
