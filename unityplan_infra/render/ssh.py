"""SSH on both ends: the servers' sshd settings and the client options that pin host keys.

Every deploy pushes secrets over SSH (wg0.conf with its private key, Synapse keys, NATS
credentials), so each connection checks the server's host key against the one the program
generated (hcloud) or was given (`ssh` hosts). OpenSSH clients get it through
`KnownHostsCommand`, which prints a known_hosts line for the host being checked (`%H`, in
the `[address]:port` form for other ports), with every known_hosts file switched off:
nothing is read from or written to the operator's ~/.ssh/known_hosts.
"""

from __future__ import annotations

from typing import Final

# sshd keeps the first value it reads, in file-name order: 00- comes before the images' own
# drop-ins (cloud-init's 50-cloud-init.conf sets PasswordAuthentication yes on many).
SSHD_DROP_IN_PATH: Final = "/etc/ssh/sshd_config.d/00-unityplan.conf"

# The Docker provider opens one `docker system dial-stdio` session per API connection, all
# multiplexed over one ControlMaster connection, and Pulumi runs resources in parallel.
# Measured with a real sshd (tests/realsw/test_ssh_pinning.py): with sshd's defaults
# (MaxSessions 10, MaxStartups 10:30:100) the master refuses the 11th session, the client
# dials a connection of its own, and MaxStartups drops 15-23 of 60. Before a master exists
# (a first deploy, or after 120 s idle) every session of a burst dials its own connection
# at once: MaxStartups must hold the whole burst (50 lost 2-3 of 60). Port 22 is open to
# the admin networks only, so a high unauthenticated limit costs little.
MAX_SESSIONS: Final = 100
MAX_STARTUPS: Final = "100:30:300"


def sshd_settings() -> dict[str, str]:
    """What every host's sshd must run with (`sshd -T` prints them lower-cased)."""
    return {
        "MaxSessions": str(MAX_SESSIONS),
        "MaxStartups": MAX_STARTUPS,
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitRootLogin": "prohibit-password",
    }


def sshd_drop_in() -> str:
    """sshd settings of every host (a drop-in: the first value sshd reads wins, and
    Debian's and Ubuntu's sshd_config include sshd_config.d/*.conf before their own)."""
    return "".join(f"{key} {value}\n" for key, value in sshd_settings().items())


# How `sshd -T` prints a value that has an older spelling (OpenSSH 9.2 prints the old one).
_EFFECTIVE = {"prohibit-password": "(prohibit-password|without-password)"}


def sshd_effective_check() -> str:
    """Shell: fail unless sshd's effective configuration has every setting (a host whose
    sshd_config lacks the Include, or an earlier file, would silently ignore the drop-in)."""
    effective = 'effective="$(sshd -T)"'
    checks = [
        f"printf '%s\\n' \"$effective\" | grep -Eqix '{key} {_EFFECTIVE.get(value, value)}'"
        f" || {{ echo 'sshd ignores {SSHD_DROP_IN_PATH}: {key} is not {value}' >&2; exit 1; }}"
        for key, value in sshd_settings().items()
    ]
    return "\n".join([effective, *checks]) + "\n"


def host_key_line(public_key: str) -> str:
    """`<type> <base64>` of an OpenSSH public key line (drops a comment and newline)."""
    words = public_key.split()
    if len(words) < 2 or not words[0].startswith(("ssh-", "ecdsa-")):
        raise ValueError(f"not an OpenSSH public key line: {public_key[:40]!r}")
    return f"{words[0]} {words[1]}"


def pinned_host_key_options(public_key: str) -> list[str]:
    """`ssh` arguments that accept exactly `public_key` as the server's host key."""
    return [
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "UpdateHostKeys=no",
        "-o", f"KnownHostsCommand=/bin/echo %H {host_key_line(public_key)}",
    ]  # fmt: skip
