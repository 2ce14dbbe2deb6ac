"""The DOCKER-USER rules and their install script, with the real iptables and real TCP.

A multi-host server is emulated with network namespaces (NetnsLab):

    peer --wg0-- host --eth0-- net (the internet; also 169.254.169.254, the metadata service)
                  |
             br-unityplan (a Docker network)
                  |
                 ctr (a container)

"wg0" is a plain veth (the rules match on the interface name, and WireGuard's only job
here is to be the interface peers arrive on). In `host`, iptables does what Docker does for
published ports: nat DNAT from a host port to the container, MASQUERADE for the container's
way out, `FORWARD -j DOCKER-USER` first and Docker's own ACCEPT after it, FORWARD policy
DROP, ip_forward on. Ports, as the multi-host servers publish them:

    198.18.1.1:4222 -> ctr:4222   on the WireGuard address (NATS, IPFS swarm, exporters)
    *:443  -> ctr:8443            on all interfaces, public on the monitoring host (Traefik)
    *:9443 -> ctr:443             all interfaces, not public: its container port is 443
    *:9100 -> ctr:9100            all interfaces, not public

The internet reaching the WireGuard address is an attacker on the same L2 segment routing
it via the host's public address. Probes are real TCP connections, concurrent, 1 s bound:
"timeout" is a dropped SYN. Every test starts from Docker's rules alone (`fresh`), first as
a control (the internet reaches everything, so the rules are what blocks it), and runs on
both iptables backends: nft (Debian 12, Ubuntu 22.04+, what Docker uses there) and legacy.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.netns import NetnsLab
from unityplan_infra.render.firewall import (
    APPLY_SCRIPT,
    FIREWALL_UNIT,
    RULES_PATH,
    UNIT_NAME,
    UNIT_PATH,
    docker_user_rules,
)

BACKENDS = ("nft", "legacy")
PROBE_TIMEOUT = 1.0
BRIDGE = "br-unityplan"  # a user-defined Docker network's bridge (br-<id>)
WG_HOST, WG_PEER = "198.18.1.1", "198.18.1.2"
BRIDGE_ADDRESS, CTR = "198.18.2.1", "198.18.2.2"
METADATA = "169.254.169.254"
ON_WIREGUARD = 4222  # published on the WireGuard address
PUBLIC, NOT_PUBLIC, CONTAINER_443 = 443, 9100, 9443  # host ports published on all interfaces
MONITORING_PORTS = (80, 443)

SERVER = """
import socket, sys, threading
name = sys.argv[1]
def serve(server, port):
    while True:
        connection, _ = server.accept()
        with connection:
            connection.sendall(f"{name}:{port}\\n".encode())
for spec in sys.argv[2:]:
    address, port = spec.rsplit(":", 1)
    server = socket.create_server((address, int(port)))
    threading.Thread(target=serve, args=(server, port), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Prints {"address:port": banner | "timeout" | "error: ..."} for concurrent connections.
CLIENT = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
timeout = float(sys.argv[1])
def probe(spec):
    address, port = spec.rsplit(":", 1)
    try:
        with socket.create_connection((address, int(port)), timeout=timeout) as connection:
            data = b""
            while not data.endswith(b"\\n"):
                chunk = connection.recv(100)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip()
    except TimeoutError:
        return "timeout"
    except OSError as error:
        return f"error: {error}"
targets = sys.argv[2:]
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(dict(zip(targets, pool.map(probe, targets)))))
"""


@dataclass
class Site:
    lab: NetnsLab
    backend: str
    env: dict[str, str]  # PATH with the backend's iptables first
    workdir: Path

    def run(
        self, host: str, argv: Sequence[str], stdin: str | None = None, check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return self.lab.run(host, argv, env={**self.env, **(env or {})}, stdin=stdin, check=check)

    def load(self, rules: str) -> None:
        self.run("host", ["iptables-restore", "--noflush"], stdin=rules)

    def fresh(self) -> None:
        """Back to Docker's rules alone (a restore without --noflush replaces the tables)."""
        self.run("host", ["iptables-restore"], stdin=docker_emulation())

    def chain(self, name: str, table: str = "filter") -> list[str]:
        return self.run("host", ["iptables", "-t", table, "-S", name]).stdout.splitlines()

    def probe(self, targets: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        """{source host: {"address:port": what answered}}, every source at the same time."""

        def one(source: str) -> dict[str, str]:
            argv = [sys.executable, "-c", CLIENT, str(PROBE_TIMEOUT), *targets[source]]
            return dict(json.loads(self.run(source, argv).stdout))

        with ThreadPoolExecutor(len(targets)) as pool:
            return dict(zip(targets, pool.map(one, targets), strict=True))


def docker_emulation() -> str:
    """What Docker puts in place for the published ports above (simplified, same effect)."""
    to = f"-j DNAT --to-destination {CTR}"
    return "\n".join([
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A DOCKER -d {WG_HOST}/32 -p tcp --dport {ON_WIREGUARD} {to}:{ON_WIREGUARD}",
        f"-A DOCKER -p tcp --dport {PUBLIC} {to}:8443",
        f"-A DOCKER -p tcp --dport {CONTAINER_443} {to}:443",
        f"-A DOCKER -p tcp --dport {NOT_PUBLIC} {to}:{NOT_PUBLIC}",
        f"-A POSTROUTING -s {BRIDGE_ADDRESS}/24 ! -o {BRIDGE} -j MASQUERADE",
        "COMMIT",
        "*filter",
        ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":DOCKER-USER - [0:0]",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j ACCEPT",  # Docker's own rules: they accept published ports
        "-A DOCKER-USER -j RETURN",  # what older Docker puts in the chain it creates
        "COMMIT",
        "",
    ])  # fmt: skip


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    backend: str = request.param
    workdir = tmp_path_factory.mktemp(f"fw-{backend}")
    bin_dir = workdir / "bin"  # iptables* of this backend (xtables-*-multi go by argv[0])
    bin_dir.mkdir()
    for tool in ("iptables", "iptables-restore", "iptables-save"):
        (bin_dir / tool).symlink_to(f"/usr/sbin/xtables-{backend}-multi")
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}
    with NetnsLab(["host", "peer", "net", "ctr"], workdir=workdir / "lab") as lab:
        ns = {name: host.netns for name, host in lab.hosts.items()}

        def ip(name: str, *args: str) -> None:
            subprocess.run(["ip", "-n", ns[name], *args], check=True, capture_output=True)

        public, internet = str(lab.hosts["host"].address), str(lab.hosts["net"].address)
        # The container hangs off the host's Docker bridge only, not off the lab's bridge.
        ip("ctr", "link", "del", "eth0")
        ip("host", "link", "add", BRIDGE, "type", "bridge")
        ip("host", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
        ip("host", "link", "set", BRIDGE, "up")
        veth = ("type", "veth", "peer", "name")
        ip("host", "link", "add", "vctr", *veth, "eth0", "netns", ns["ctr"])
        ip("host", "link", "set", "vctr", "master", BRIDGE, "up")
        ip("ctr", "addr", "add", f"{CTR}/24", "dev", "eth0")
        ip("ctr", "link", "set", "eth0", "up")
        ip("ctr", "route", "add", "default", "via", BRIDGE_ADDRESS)
        # The WireGuard link (the peer stays on the internet too, as a real server is).
        ip("host", "link", "add", "wg0", *veth, "wg0", "netns", ns["peer"])
        ip("host", "addr", "add", f"{WG_HOST}/24", "dev", "wg0")
        ip("host", "link", "set", "wg0", "up")
        ip("peer", "addr", "add", f"{WG_PEER}/24", "dev", "wg0")
        ip("peer", "link", "set", "wg0", "up")
        # The internet also holds the metadata service; the host routes it out of eth0.
        ip("net", "addr", "add", f"{METADATA}/32", "dev", "lo")
        ip("host", "route", "add", f"{METADATA}/32", "via", internet, "dev", "eth0")
        # The attacker next door sends to the host's VPN address via its public one.
        ip("net", "route", "add", f"{WG_HOST}/32", "via", public, "dev", "eth0")
        lab.run("host", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])

        lab.spawn("ctr", [sys.executable, "-c", SERVER, "ctr",
                          *(f"{CTR}:{p}" for p in (ON_WIREGUARD, 8443, 443, NOT_PUBLIC))],
                  name="listen").wait_for_output("ready")  # fmt: skip
        lab.spawn("net", [sys.executable, "-c", SERVER, "net", f"{internet}:8000"],
                  name="listen").wait_for_output("ready")  # fmt: skip
        lab.spawn("net", [sys.executable, "-c", SERVER, "metadata", f"{METADATA}:80"],
                  name="metadata").wait_for_output("ready")  # fmt: skip
        lab.spawn("peer", [sys.executable, "-c", SERVER, "peer", f"{WG_PEER}:7000"],
                  name="listen").wait_for_output("ready")  # fmt: skip
        lab.spawn("host", [sys.executable, "-c", SERVER, "host", "0.0.0.0:2222"],
                  name="sshd").wait_for_output("ready")  # fmt: skip
        yield Site(lab, backend, env, workdir)


def targets(site: Site) -> dict[str, list[str]]:
    public = str(site.lab.hosts["host"].address)
    internet = str(site.lab.hosts["net"].address)
    return {
        "peer": [f"{WG_HOST}:{ON_WIREGUARD}", f"{WG_HOST}:{NOT_PUBLIC}"],
        "net": [
            f"{WG_HOST}:{ON_WIREGUARD}",
            f"{public}:{PUBLIC}",
            f"{public}:{CONTAINER_443}",
            f"{public}:{NOT_PUBLIC}",
            f"{public}:2222",
        ],
        "ctr": [f"{internet}:8000", f"{WG_PEER}:7000", f"{METADATA}:80"],
        "host": [f"{METADATA}:80", f"{internet}:8000"],
    }


def expected(site: Site, *, rules: bool, public_ports: bool) -> dict[str, dict[str, str]]:
    public = str(site.lab.hosts["host"].address)
    internet = str(site.lab.hosts["net"].address)
    blocked = "timeout"

    def open_unless_rules(banner: str) -> str:
        return blocked if rules else banner

    return {
        # WireGuard peers reach what is published (on the VPN address, or everywhere).
        "peer": {
            f"{WG_HOST}:{ON_WIREGUARD}": f"ctr:{ON_WIREGUARD}",
            f"{WG_HOST}:{NOT_PUBLIC}": f"ctr:{NOT_PUBLIC}",
        },
        "net": {
            f"{WG_HOST}:{ON_WIREGUARD}": open_unless_rules(f"ctr:{ON_WIREGUARD}"),
            f"{public}:{PUBLIC}": "ctr:8443" if public_ports or not rules else blocked,
            # Its container port is 443: the rule must match the port the client used.
            f"{public}:{CONTAINER_443}": open_unless_rules("ctr:443"),
            f"{public}:{NOT_PUBLIC}": open_unless_rules(f"ctr:{NOT_PUBLIC}"),
            f"{public}:2222": "host:2222",  # the host's own services (INPUT): untouched
        },
        "ctr": {
            f"{internet}:8000": "net:8000",
            f"{WG_PEER}:7000": "peer:7000",
            f"{METADATA}:80": open_unless_rules("metadata:80"),
        },
        # The host's own traffic (OUTPUT) still reaches the metadata service (cloud-init).
        "host": {f"{METADATA}:80": "metadata:80", f"{internet}:8000": "net:8000"},
    }


# --- rules in the emulated host -----------------------------------------------------------
def test_control_without_the_rules_everything_is_reachable(site: Site) -> None:
    site.fresh()
    assert site.probe(targets(site)) == expected(site, rules=False, public_ports=False)


def test_monitoring_host_rules(site: Site) -> None:
    site.fresh()
    site.load(docker_user_rules(MONITORING_PORTS))
    assert site.probe(targets(site)) == expected(site, rules=True, public_ports=True)


def test_other_hosts_rules_keep_443_closed(site: Site) -> None:
    site.fresh()
    site.load(docker_user_rules())
    assert site.probe(targets(site)) == expected(site, rules=True, public_ports=False)


def test_loading_again_replaces_and_keeps_dockers_rules(site: Site) -> None:
    site.fresh()
    docker_forward, docker_nat = site.chain("FORWARD"), site.chain("DOCKER", "nat")
    site.load(docker_user_rules(MONITORING_PORTS))
    once = site.chain("DOCKER-USER")
    site.load(docker_user_rules(MONITORING_PORTS))
    assert site.chain("DOCKER-USER") == once
    rendered = [line for line in docker_user_rules(MONITORING_PORTS).splitlines()
                if line.startswith("-A ")]  # fmt: skip
    assert once == ["-N DOCKER-USER", *rendered]  # Docker's RETURN is gone, nothing else
    assert site.chain("FORWARD") == docker_forward
    assert site.chain("DOCKER", "nat") == docker_nat
    site.load(docker_user_rules())  # the monitoring role moves away: 80/443 rules go
    assert not any("ctorigdstport" in rule for rule in site.chain("DOCKER-USER"))


@pytest.mark.parametrize("ports", [(), MONITORING_PORTS, (1, 65535)])
def test_iptables_restore_test_accepts_the_rules(site: Site, ports: tuple[int, ...]) -> None:
    result = site.run("host", ["iptables-restore", "--test", "--noflush"],
                      stdin=docker_user_rules(ports), check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


# --- the install script -------------------------------------------------------------------
def install(site: Site, root: Path, stdin: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run APPLY_SCRIPT in the host with files below `root` and a recording systemctl."""
    stubs = site.workdir / "stubs"
    log = root.parent / f"{root.name}-systemctl.log"
    stubs.mkdir(exist_ok=True)
    systemctl = stubs / "systemctl"
    systemctl.write_text('#!/bin/sh\necho "$*" >> "$SYSTEMCTL_LOG"\n')
    systemctl.chmod(0o755)
    env = {"UNITYPLAN_ROOT": str(root), "SYSTEMCTL_LOG": str(log),
           "PATH": f"{stubs}:{site.env['PATH']}"}  # fmt: skip
    return site.run("host", ["sh", "-c", APPLY_SCRIPT], stdin=stdin, check=False, env=env), log


def test_install_script_writes_enables_and_applies(site: Site, tmp_path: Path) -> None:
    site.fresh()
    root = tmp_path / "root"
    rules = docker_user_rules(MONITORING_PORTS)
    for _ in range(2):  # idempotent
        result, log = install(site, root, rules)
        assert result.returncode == 0, result.stderr
    rules_file, unit_file = root / RULES_PATH.lstrip("/"), root / UNIT_PATH.lstrip("/")
    assert rules_file.read_text() == rules
    assert unit_file.read_text() == FIREWALL_UNIT
    for path in (rules_file, unit_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no *.new left
    assert log.read_text().splitlines() == 2 * ["daemon-reload", f"enable --quiet {UNIT_NAME}"]
    rendered = [line for line in rules.splitlines() if line.startswith("-A ")]
    assert site.chain("DOCKER-USER") == ["-N DOCKER-USER", *rendered]  # applied at once
    assert site.probe(targets(site)) == expected(site, rules=True, public_ports=True)


@pytest.mark.parametrize(
    "stdin",
    [
        "",  # nothing arrived
        "*filter\n-A FORWARD -j DROP\nCOMMIT\n",  # not our file
        docker_user_rules().replace("-j DROP\nCOMMIT", "-j NOSUCHTARGET\nCOMMIT"),  # broken
    ],
    ids=["empty", "foreign", "broken"],
)
def test_install_script_refuses_bad_rules(site: Site, tmp_path: Path, stdin: str) -> None:
    site.fresh()
    root = tmp_path / "root"
    good = docker_user_rules()
    assert install(site, root, good)[0].returncode == 0
    before = site.chain("DOCKER-USER")
    result, _ = install(site, root, stdin)
    assert result.returncode != 0
    assert (root / RULES_PATH.lstrip("/")).read_text() == good  # the working file stays
    assert site.chain("DOCKER-USER") == before
    assert [p.name for p in (root / RULES_PATH.lstrip("/")).parent.iterdir()] == [
        Path(RULES_PATH).name
    ]


# --- static checks ------------------------------------------------------------------------
def test_install_script_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", "--shell=sh", "-"], input=APPLY_SCRIPT,
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / UNIT_NAME
    unit.write_text(FIREWALL_UNIT)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--noflush" in FIREWALL_UNIT and "Before=docker.service" in FIREWALL_UNIT


@pytest.mark.parametrize("ports", [[0], [65536], [-1], [True], ["443"], "443", [80.0]])
def test_ports_are_validated(ports: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        docker_user_rules(ports)  # type: ignore[arg-type]


def test_ports_are_sorted_once_each() -> None:
    text = docker_user_rules([443, 80, 443])
    assert [line.split("--ctorigdstport ")[1].split()[0] for line in text.splitlines()
            if "--ctorigdstport" in line] == ["80", "443"]  # fmt: skip


def test_rule_order() -> None:
    """Metadata first (nothing may pass it), DROP last (everything else)."""
    rules = [line for line in docker_user_rules([443]).splitlines() if line.startswith("-A ")]
    assert rules[0] == f"-A DOCKER-USER -d {METADATA}/32 -j DROP"
    assert rules[-1] == "-A DOCKER-USER -j DROP"
    assert docker_user_rules().endswith("COMMIT\n")
