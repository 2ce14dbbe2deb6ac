#!/usr/bin/env bash
# Install the IPFS node that tests/realsw/test_backup_ipfs.py runs: js-ipfs 0.66.1 (npm
# package `ipfs`), a real node whose HTTP RPC API serves the kubo endpoints the backup uses.
# Real kubo cannot be installed on these machines: its npm package downloads the binary
# from a host that is unreachable.
#
# Every package version is pinned by tests/support/ipfs-node/package-lock.json (exact
# versions and integrity hashes; npm installs what a lock names when package.json agrees
# with it). The lock was resolved once with --before=2025-01-01, because ipfs 0.66.1's
# caret ranges now admit releases that need Node.js 22 (Promise.withResolvers), and this
# machine has Node.js 20. `npm install`, not `npm ci`: the lock leaves out an optional
# dependency given as a GitHub tarball (electron-eval -> headless), which npm ci refuses;
# --omit=optional drops that whole optional WebRTC/Electron branch, which a node on
# loopback never uses.
#
# Idempotent: does nothing when the same lock is already installed.
# Usage: tests/support/install_ipfs.sh [PREFIX]   (default /opt/unityplan-ipfs; the
# tests look there, or in $UNITYPLAN_JSIPFS, the path of the jsipfs executable)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
prefix="${1:-/opt/unityplan-ipfs}"
lock="$here/ipfs-node/package-lock.json"
stamp="$prefix/.installed-lock.sha256"

for tool in node npm; do
  command -v "$tool" >/dev/null || {
    echo "install_ipfs.sh: $tool not found (the machine's Node.js 20 and npm are needed)" >&2
    exit 1
  }
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "install_ipfs.sh: Node.js $(node --version) is too old; js-ipfs 0.66.1 needs >= 18" >&2
  exit 1
fi

want="$(sha256sum "$lock" | cut -d' ' -f1)"
if [ -x "$prefix/node_modules/.bin/jsipfs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "== js-ipfs 0.66.1 already installed in $prefix"
  exit 0
fi

echo "== npm install js-ipfs 0.66.1 into $prefix"
mkdir -p "$prefix"
rm -f "$stamp"
cp "$here/ipfs-node/package.json" "$lock" "$prefix/"
# --ignore-scripts: none of the install scripts is needed (classic-level loads its
# prebuilt binary at run time) and newer npm releases skip them anyway unless allowed.
npm install --prefix "$prefix" --omit=optional --ignore-scripts --no-audit --no-fund \
  --loglevel=error >/dev/null
"$prefix/node_modules/.bin/jsipfs" --version >/dev/null
echo "$want" >"$stamp"
