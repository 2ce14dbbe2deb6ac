#!/usr/bin/env bash
# Check a deployed stack end to end (see README, "Verify"). Exit 0 healthy, 1 not, 2 usage.
# Usage: ./scripts/verify.sh [stack] [verify args, e.g. --json, --only nats,redis]
set -euo pipefail
STACK="${1:-dev}"; shift || true
source "$(dirname "$0")/setup.sh" "$STACK" --no-create
write_stack_outputs
status=0
with_ssh_key .venv/bin/python -m unityplan_infra verify --outputs "$outputs" "$@" || status=$?
exit "$status"
