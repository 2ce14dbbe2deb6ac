#!/usr/bin/env bash
# Prepare a stack without deploying it: the pinned Pulumi CLI, .venv from requirements.txt
# (exactly what `pulumi up` runs the program with), the state backend, the secrets
# passphrase, and the stack selected. up.sh, preview.sh, verify.sh and destroy.sh source it.
# Usage: ./scripts/setup.sh [stack] [--no-create]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PULUMI_VERSION="3.272.0"   # the CLI; keep equal to the pulumi SDK pin in requirements.txt
STACK="${1:-dev}"
CREATE_STACK=1; [ "${2:-}" = "--no-create" ] && CREATE_STACK=0
CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}/unityplan-infra"

if ! command -v pulumi >/dev/null; then
  if [ ! -x "$HOME/.pulumi/bin/pulumi" ]; then
    echo "== installing the Pulumi CLI $PULUMI_VERSION (official installer)" >&2
    curl -fsSL https://get.pulumi.com | sh -s -- --version "$PULUMI_VERSION" >&2
  fi
  export PATH="$HOME/.pulumi/bin:$PATH"
fi
installed="$(pulumi version 2>/dev/null || true)"
if [ "${installed#v}" != "$PULUMI_VERSION" ]; then
  echo "== note: pulumi $installed is installed; this program is tested with $PULUMI_VERSION" >&2
fi

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt >&2

# Local file backend unless the user chose another one: no cloud account needed.
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
  mkdir -p .pulumi-state
  export PULUMI_BACKEND_URL="file://$PWD/.pulumi-state"
  chosen_backend=1
fi
# Secrets in a self-managed backend are encrypted with a passphrase. Generate one on first
# use unless the user supplies their own. It lives in the user's config dir, never beside
# the state: one copy of .pulumi-state/ must not be enough to open every secret.
if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  passphrase_file="$CONFIG_HOME/passphrase"
  if [ ! -s "$passphrase_file" ]; then
    (umask 077; mkdir -p "$CONFIG_HOME")
    if [ -s .pulumi-state/passphrase ]; then   # written there by older versions
      mv .pulumi-state/passphrase "$passphrase_file"
      echo "== moved .pulumi-state/passphrase to $passphrase_file (keep it apart from the state)" >&2
    else
      (umask 077; head -c 32 /dev/urandom | base64 > "$passphrase_file")
      echo "== generated $passphrase_file: back it up apart from the state; it decrypts this stack's secrets" >&2
    fi
  fi
  export PULUMI_CONFIG_PASSPHRASE_FILE="$passphrase_file"
  chosen_passphrase=1
fi

if [ "$CREATE_STACK" -eq 1 ]; then
  pulumi stack select --create "$STACK" >/dev/null
else
  pulumi stack select "$STACK" >/dev/null
fi

# GitHub Actions: later steps (pulumi/actions) use the same CLI, backend and passphrase.
if [ -n "${GITHUB_ENV:-}" ]; then
  if [ -n "${chosen_backend:-}" ]; then echo "PULUMI_BACKEND_URL=$PULUMI_BACKEND_URL" >> "$GITHUB_ENV"; fi
  if [ -n "${chosen_passphrase:-}" ]; then
    echo "PULUMI_CONFIG_PASSPHRASE_FILE=$PULUMI_CONFIG_PASSPHRASE_FILE" >> "$GITHUB_ENV"
  fi
  dirname "$(command -v pulumi)" >> "${GITHUB_PATH:-/dev/null}"
fi

# The Docker provider multiplexes SSH through a control socket in ~/.ssh (stack.py); ssh
# refuses to create it when the directory is missing (a fresh CI runner).
[ -d "$HOME/.ssh" ] || mkdir -m 0700 "$HOME/.ssh"

# Run "$@" with SSH keys available to it. The program never holds an SSH credential: remote
# commands and the Docker provider authenticate through ssh-agent, so a rotated key re-runs
# nothing. If the stack keeps its key in config (sshPrivateKey, secret), it goes into an
# agent that lives exactly as long as the command; otherwise the caller's agent is used.
with_ssh_key() {
  local key
  key="$(pulumi config get sshPrivateKey --stack "$STACK" 2>/dev/null || true)"
  if [ -z "$key" ]; then
    # Multi-host connects to every host: without a key in the agent each remote command
    # would retry its login for minutes before it fails.
    if [ "$(pulumi config get layout --stack "$STACK" 2>/dev/null || true)" = multi-host ] \
        && ! ssh-add -l >/dev/null 2>&1; then
      echo "no key in ssh-agent: ssh-add your key, or set sshPrivateKey (secret) in the stack" >&2
      return 1
    fi
    "$@"
    return
  fi
  # The key travels on fd 3, never in argv or the environment; the command keeps the tty.
  # The agent is killed as the command ends (by itself it notices only within 10 s).
  # shellcheck disable=SC2016  # expanded by the inner sh
  ssh-agent sh -c '
    ssh-add -q - <&3 || exit
    exec 3<&-
    status=0; "$@" || status=$?
    ssh-agent -k >/dev/null
    exit "$status"' with-ssh-key "$@" 3<<<"$key"
}

# The stack's outputs with their secrets (for verify and restore): in "$outputs", a file
# private to this user, removed when the calling script exits.
write_stack_outputs() {
  outputs="$(mktemp)"
  chmod 600 "$outputs"
  trap 'rm -f "$outputs"' EXIT
  pulumi stack output --stack "$STACK" --json --show-secrets > "$outputs"
}
