#!/usr/bin/env bash
# Restore a pod's data from its backups, then verify it (see README, "Backups and restore").
# Exit 0 restored and healthy, 1 failed or unhealthy, 2 usage, 3 refused (nothing changed).
# Usage: ./scripts/restore.sh STACK --pod CODE [--snapshot ID] [--what KINDS] [--force]
set -euo pipefail
STACK="${1:?usage: ./scripts/restore.sh STACK --pod CODE [--snapshot ID] [--what KINDS] [--force]}"
shift
source "$(dirname "$0")/setup.sh" "$STACK" --no-create
write_stack_outputs
status=0
with_ssh_key .venv/bin/python -m unityplan_infra restore --outputs "$outputs" "$@" || status=$?
exit "$status"
