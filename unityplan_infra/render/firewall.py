"""Docker-published ports for WireGuard peers only: rules for Docker's `DOCKER-USER` chain.

Docker accepts forwarded traffic to every published port from anywhere, and its rules sit
in front of anything ufw or the INPUT chain could say (the DNAT'ed packet is forwarded to
the container, never delivered to the host). Docker jumps from FORWARD to `DOCKER-USER`
before its own rules and never flushes that chain, so the rules go there:

- the cloud metadata service (169.254.169.254, which serves the server's user data) is
  out of the containers' reach;
- replies (established/related) and container-originated traffic (docker0, br-*) pass;
- traffic that arrives on wg0 passes: WireGuard admits configured peers only;
- on the monitoring host, TCP sent to the public ports (Traefik's 80/443) passes from
  anywhere;
- anything else forwarded is dropped.

"Passes" is RETURN, not ACCEPT: Docker's own rules still decide afterwards (only published
ports, isolation between networks), this chain only narrows them. Traffic of the host
itself (INPUT/OUTPUT) never crosses FORWARD and is left alone. IPv4 only: the services are
published on IPv4 addresses (the WireGuard address, 127.0.0.1, Traefik's 0.0.0.0).

Delivery: `APPLY_SCRIPT` runs over SSH as root with the rules text on stdin. It loads the
rules at once and installs them with a systemd unit that loads them with
`iptables-restore --noflush` after docker.service (at boot, and again whenever Docker
restarts). The file flushes the chain itself, so loading it again is idempotent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

CHAIN = "DOCKER-USER"
WIREGUARD_INTERFACE = "wg0"
# Docker's default bridge, and the bridges of user-defined networks (br-<network id>).
CONTAINER_INTERFACES = ("docker0", "br-+")
METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")  # Hetzner's (and most clouds')

RULES_PATH = "/etc/unityplan/docker-user.rules"
UNIT_NAME = "unityplan-docker-user.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
IPTABLES_RESTORE = "/usr/sbin/iptables-restore"  # the Debian/Ubuntu alternative (nft)
LOCK_WAIT_SECONDS = 10  # Docker may hold the xtables lock while it starts
ROOT_VARIABLE = "UNITYPLAN_ROOT"  # the install script's root directory (tests: a temp dir)

# iptables interface names: up to 15 characters, `+` at the end is a wildcard.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\+?$")
# Every token of a rule: no spaces, quotes or shell/iptables-restore syntax.
_TOKEN = re.compile(r"^[A-Za-z0-9_.,:/+-]+$")

Rule = tuple[str, tuple[str, ...]]  # (why, iptables arguments after `-A DOCKER-USER`)


def docker_user_rules(public_tcp_ports: Sequence[int] = ()) -> str:
    """`iptables-restore` text (filter table, `DOCKER-USER` only) for one host.

    `public_tcp_ports`: host ports reachable from anywhere (the monitoring host's Traefik:
    80, 443); empty on every other host.
    """
    lines = [
        "# unityplan: Docker-published ports for WireGuard peers only.",
        f"# Generated; load with `iptables-restore --noflush` (touches {CHAIN} only).",
        "*filter",
        # Declared, so the file also loads before Docker has created the chain.
        f":{CHAIN} - [0:0]",
        # Flushed by the file itself: loading it again replaces, never appends.
        f"-F {CHAIN}",
    ]
    for why, arguments in _rules(_check_ports(public_tcp_ports)):
        lines.append(f"# {why}")
        lines.append(" ".join(("-A", CHAIN, *_check_tokens(arguments))))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _rules(public_tcp_ports: Sequence[int]) -> list[Rule]:
    for interface in (WIREGUARD_INTERFACE, *CONTAINER_INTERFACES):
        if not _INTERFACE.fullmatch(interface):
            raise ValueError(f"not an iptables interface name: {interface!r}")
    rules: list[Rule] = [
        (
            "The metadata service serves the server's user data: never to containers. First,"
            " so nothing below passes it (not even a connection opened before this file).",
            ("-d", f"{METADATA_ADDRESS}/32", "-j", "DROP"),
        ),
        (
            "Replies and related ICMP of connections let through below (or opened before).",
            ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"),
        ),
    ]
    rules += [
        (
            f"Containers ({interface}) reach each other, the peers and the internet.",
            ("-i", interface, "-j", "RETURN"),
        )
        for interface in CONTAINER_INTERFACES
    ]
    rules.append(
        (
            "WireGuard admits configured peers only: they reach the ports published on the"
            " host's VPN address.",
            ("-i", WIREGUARD_INTERFACE, "-j", "RETURN"),
        )
    )
    for port in public_tcp_ports:
        sent_to = ("-m", "conntrack", "--ctstate", "DNAT", "--ctorigdstport", str(port))
        rules.append(
            (
                f"Public port {port}/tcp from anywhere. In FORWARD the packet is already"
                " DNAT'ed to the container's port: match the port it was sent to.",
                ("-p", "tcp", *sent_to, "-j", "RETURN"),
            )
        )
    rules.append(
        (
            "Anything else forwarded (from the internet to a published port) is dropped.",
            ("-j", "DROP"),
        )
    )
    return rules


def _check_ports(ports: Sequence[int]) -> list[int]:
    if isinstance(ports, str | bytes):
        raise TypeError(f"public_tcp_ports must be a sequence of ints, not {ports!r}")
    for port in ports:
        # bool is an int subclass: True would render as port 1.
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"not a TCP port (1-65535): {port!r}")
    return sorted(set(ports))


def _check_tokens(arguments: tuple[str, ...]) -> tuple[str, ...]:
    for token in arguments:
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"unsafe iptables argument: {token!r}")
    return arguments


FIREWALL_UNIT = f"""[Unit]
Description=unityplan: Docker-published ports for WireGuard peers only ({CHAIN})
# Before Docker, so no published port is open while Docker restarts its containers at boot.
# Docker creates DOCKER-USER only if it is missing and never flushes it; it adds the jump
# from FORWARD itself. PartOf: a Docker restart reloads the rules too.
Before=docker.service
PartOf=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={IPTABLES_RESTORE} --wait {LOCK_WAIT_SECONDS} --noflush {RULES_PATH}

[Install]
WantedBy=multi-user.target docker.service
"""

_HEREDOC_END = "UNITYPLAN_UNIT"


def firewall_apply_script() -> str:
    """POSIX sh, run as root with the rules text (`docker_user_rules`) on stdin.

    Loads the rules now, then installs them (only once they loaded) and the unit, each
    file by rename, and enables the unit. Idempotent. Files go below `$UNITYPLAN_ROOT`
    (default `/`, a temporary directory in tests); the rules are loaded into the current
    network namespace whatever the root.
    """
    if _HEREDOC_END in FIREWALL_UNIT:
        raise ValueError("the unit text contains the heredoc terminator")
    directories = sorted({RULES_PATH.rsplit("/", 1)[0], UNIT_PATH.rsplit("/", 1)[0]})
    return "\n".join(
        [
            "set -eu",
            f'root="${{{ROOT_VARIABLE}:-/}}"',
            'root="${root%/}"',
            f'rules="$root{RULES_PATH}"',
            f'unit="$root{UNIT_PATH}"',
            'trap \'rm -f "$rules.new" "$unit.new"\' EXIT',
            "umask 022",
            "mkdir -p " + " ".join(f'"$root{directory}"' for directory in directories),
            "# The rules arrive on stdin.",
            'cat > "$rules.new"',
            f"if ! grep -qx -- '-F {CHAIN}' \"$rules.new\"; then",
            f'  echo "stdin is not a {CHAIN} rules file" >&2',
            "  exit 1",
            "fi",
            "# Loaded now, before they replace the file: iptables-restore commits all or",
            "# nothing, so rules that fail change nothing and never reach the next boot.",
            "# (`--test` is not enough: iptables-nft passes a jump to a missing chain.)",
            f'iptables-restore --wait {LOCK_WAIT_SECONDS} --noflush "$rules.new"',
            'mv -f "$rules.new" "$rules"',
            f"cat > \"$unit.new\" <<'{_HEREDOC_END}'",
            FIREWALL_UNIT.rstrip("\n"),
            _HEREDOC_END,
            'mv -f "$unit.new" "$unit"',
            "systemctl daemon-reload",
            f"systemctl enable --quiet {UNIT_NAME}",
            "",
        ]
    )


APPLY_SCRIPT = firewall_apply_script()
