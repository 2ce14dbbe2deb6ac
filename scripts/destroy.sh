#!/usr/bin/env bash
# Remove a stack's containers, networks and servers. Data volumes are retained (see README,
# "What survives destroy"). Usage: ./scripts/destroy.sh [stack] [extra `pulumi destroy` args]
set -euo pipefail
STACK="${1:-dev}"; shift || true
source "$(dirname "$0")/setup.sh" "$STACK" --no-create
# Protected resources (multi-host servers, which hold the pods' data) stay: without this
# flag the whole destroy would stop at them. Retire a server deliberately (README).
with_ssh_key pulumi destroy --stack "$STACK" --exclude-protected "$@"
