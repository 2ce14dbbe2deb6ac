#!/usr/bin/env bash
# Set up and deploy a stack (default: dev) with a local state backend, no cloud account.
# Usage: ./scripts/up.sh [stack] [extra `pulumi up` args]
set -euo pipefail
cd "$(dirname "$0")/.."
STACK="${1:-dev}"; shift || true

if ! command -v pulumi >/dev/null; then
  if [ -x "$HOME/.pulumi/bin/pulumi" ]; then
    export PATH="$HOME/.pulumi/bin:$PATH"
  else
    echo "== installing the Pulumi CLI (official installer)"
    curl -fsSL https://get.pulumi.com | sh
    export PATH="$HOME/.pulumi/bin:$PATH"
  fi
fi

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt

# Local file backend unless the user chose another one.
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
  mkdir -p .pulumi-state
  export PULUMI_BACKEND_URL="file://$PWD/.pulumi-state"
fi
# Secrets in a local backend are encrypted with a passphrase. Generate one on first use
# (kept beside the state, mode 0600) unless the user supplies their own.
if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  passphrase_file=".pulumi-state/passphrase"
  if [ ! -s "$passphrase_file" ]; then
    mkdir -p .pulumi-state
    (umask 077; head -c 32 /dev/urandom | base64 > "$passphrase_file")
    echo "== generated $passphrase_file: back it up; it decrypts this stack's secrets"
  fi
  export PULUMI_CONFIG_PASSPHRASE_FILE="$PWD/$passphrase_file"
fi

pulumi stack select --create "$STACK" >/dev/null
exec pulumi up --stack "$STACK" "$@"
