#!/usr/bin/env bash
# Set up and deploy a stack (default: dev) with a local state backend, no cloud account.
# Usage: ./scripts/up.sh [stack] [extra `pulumi up` args, e.g. --yes]
set -euo pipefail
STACK="${1:-dev}"; shift || true
source "$(dirname "$0")/setup.sh" "$STACK"
with_ssh_key pulumi up --stack "$STACK" "$@"
