#!/usr/bin/env bash
# Install what the browser specs need; skip what is already there.
#   Debian's chromium (apt), node and npm when absent (apt), and
#   playwright-core from the npm registry into build/node/ (project-local,
#   gitignored). playwright-core drives the installed chromium and
#   downloads no browser of its own.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

packages=(chromium fonts-dejavu-core)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
PKSYNC_EXTRA_PACKAGES="${packages[*]}" "$repo/scripts/deps.sh"

node_dir="$repo/build/node"
if [ ! -f "$node_dir/node_modules/playwright-core/package.json" ]; then
  echo "browser-deps: installing playwright-core into build/node"
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error playwright-core@1 >/dev/null
fi
