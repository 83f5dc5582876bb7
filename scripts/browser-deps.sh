#!/usr/bin/env bash
# Install what the browser specs need; skip what is already there:
#   the Debian packages of scripts/deps.sh (chromium, node and npm among
#   them), then playwright-core from the npm registry into build/node/ (project-local,
#   gitignored). playwright-core drives the installed chromium and
#   downloads no browser of its own.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

# chromium, node and npm are in deps.sh's list (one apt-get update at most);
# this is a no-op when make deps has just run it
"$repo/scripts/deps.sh"

node_dir="$repo/build/node"
if [ ! -f "$node_dir/node_modules/playwright-core/package.json" ]; then
  echo "browser-deps: installing playwright-core into build/node"
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error playwright-core@1.65.2 >/dev/null
fi
