#!/usr/bin/env bash
# Show what `up` would change, without changing anything.
# Usage: ./scripts/preview.sh [stack] [extra `pulumi preview` args]
set -euo pipefail
STACK="${1:-dev}"; shift || true
source "$(dirname "$0")/setup.sh" "$STACK"
with_ssh_key pulumi preview --stack "$STACK" --diff "$@"
