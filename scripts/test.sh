#!/usr/bin/env bash
# Install everything the tests need, then run lint, types and the whole test suite.
# Fresh Debian machine, as root (CI) or with sudo. Usage: ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(nats-server prometheus cloud-init wireguard-tools wireguard-go
                 postgresql redis-server iproute2 iputils-ping procps curl
                 prometheus-postgres-exporter prometheus-redis-exporter
                 openssh-server openssh-client shellcheck iptables systemd
                 prometheus-alertmanager prometheus-node-exporter util-linux restic
                 busybox)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  # Services from these packages are started by the tests themselves, never by the system.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
# actionlint ships as a prebuilt binary inside a wheel: pinned by hash (a separate call,
# since pip's hash checking is all-or-nothing per call).
.venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements-lint.txt

# A real IPFS node for the IPFS backup tests (js-ipfs; kubo does not install here).
tests/support/install_ipfs.sh
# nats-server 2.10 beside the venv's (the image's minor): what the rolling-upgrade test
# upgrades from.
tests/support/nats_versions.sh

echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy unityplan_infra __main__.py
echo "== pytest"; exec .venv/bin/python -m pytest "$@"
