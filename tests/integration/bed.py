"""The multi-host test bed: emulated servers running WireGuard and NATS from generated configs.

Each server of the `nordic` stack is a network namespace of a `NetnsLab`; the lab's bridge is
their "public" network and each namespace's bridge address stands in for the server's public
IP (the WireGuard endpoint). A spare host (`fi`) is in the lab from the start, with nothing
but its public address, like a freshly created server before provisioning.

Every file the servers run on is produced by the program's own code, as generated; only
paths and the interface name are adjusted:

- wg0.conf: `render_wg_conf` with keys from `crypto.keys`, installed and applied by the
  program's own `APPLY_SCRIPT` (see `MeshBed.apply_wireguard`), run inside the host with its
  paths moved into the lab and `wg0` renamed to the lab's interface name. Where the script
  hands over to systemd (`systemctl start wg-quick@wg0`, first boot), the bed plays systemd
  and wg-quick: `MeshBed.wg_quick_up` does what `wg-quick up` does, step by step;
- nats.json: `nats_config`, serialised as `render_nats_config` does, reloaded with SIGHUP as
  `signal_reload` does (`docker kill --signal HUP`).

What differs from the real servers, and so is not proven here:
- WireGuard is wireguard-go (what wg-quick itself falls back to without the kernel module),
  started in the foreground with `NetnsLab.spawn`; systemd is not there: `systemctl` is a
  stub that records what the script asked of it;
- nats-server runs as a process of the host, not in its Docker container: it listens on all
  addresses of its namespace, where Docker would publish its ports on 10.0.<slot>.1 only;
- nats-server is Debian's (2.9.10), the stack's image is nats:2.10.x.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.nats_checks import NatsNode
from tests.support.netns import Background, NetnsLab, wait_until
from tests.support.stackfile import as_pulumi_config
from unityplan_infra.crypto.keys import wireguard_private_key, wireguard_public_key
from unityplan_infra.deployment import load_deployment
from unityplan_infra.render.nats import CLIENT_USER, STORE_DIR, nats_config, render_nats_config
from unityplan_infra.render.wireguard import APPLY_SCRIPT, PeerKeys, render_wg_conf
from unityplan_infra.topology.plan import Deployment

WG_INTERFACE = "wg0"  # the program's interface (and so file and unit) name
WG_BASE = "wg"  # base of the lab's WireGuard interface names (unique across namespaces)
# Where APPLY_SCRIPT keeps its files on a server; the bed moves them into the lab.
WG_DIRECTORIES = {"/etc/wireguard": "etc-wireguard", "/run": "run"}
SYSTEMCTL_STUB = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/systemctl.log"
"""
# Keys of [Interface] that wg-quick consumes itself (everything else goes to `wg setconf`).
WG_QUICK_KEYS = ("Address", "MTU", "DNS", "Table", "PreUp", "PreDown", "PostUp", "PostDown",
                 "SaveConfig")  # fmt: skip
WG_QUICK_OVERHEAD = 80  # wg-quick: MTU = MTU of the route to the endpoints - 80

# Pings a list of addresses every `interval` seconds for at most `duration` seconds; one JSON
# line per ping: {"t": wall clock at send, "target", "ok"}. Runs inside a namespace.
PING_PROBE_SCRIPT = """
import json, subprocess, sys, time

targets, interval, duration = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + duration
while time.monotonic() < end:
    started = time.monotonic()
    for target in targets:
        wall = time.time()
        result = subprocess.run(["ping", "-n", "-q", "-c", "1", "-W", "1", target],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(json.dumps({"t": wall, "target": target, "ok": result.returncode == 0}), flush=True)
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
"""


def random_wireguard_key() -> str:
    """A private key as the program derives it: from 32 random bytes kept by Pulumi."""
    return wireguard_private_key(base64.b64encode(os.urandom(32)).decode())


def wg_quick_settings(conf: str) -> dict[str, list[str]]:
    """The [Interface] keys wg-quick handles itself (parsed as wg-quick parses them)."""
    settings: dict[str, list[str]] = {}
    in_interface = False
    for line in conf.splitlines():
        stripped = line.split("#", 1)[0]
        key, _, value = (part.strip() for part in stripped.partition("="))
        if key.startswith("["):
            in_interface = key.lower() == "[interface]"
            continue
        for known in WG_QUICK_KEYS:
            if in_interface and key.lower() == known.lower():
                settings.setdefault(known, []).extend(v for v in re.split(r"[,\s]+", value) if v)
    return settings


@dataclass
class Probe:
    """A background prober (ping or NATS round trip); its log holds one JSON line per probe."""

    process: Background

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.process.output().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by the final kill, or a warning
        return found

    def records(self) -> list[dict[str, Any]]:
        """The probes, in order."""
        return [line for line in self.lines() if "ok" in line]

    def events(self) -> list[dict[str, Any]]:
        """Changes of the prober's connection (NATS probers report them)."""
        return [line for line in self.lines() if "event" in line]

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [r for r in self.records() if start <= r["t"] <= end]

    def wait_ok(self, count: int, timeout: float) -> None:
        """Wait for `count` successful probes in a row (the prober is warmed up)."""

        def streak() -> bool:
            if not self.process.running():
                raise AssertionError(f"{self.process} exited:\n{self.process.output()}")
            tail = self.records()[-count:]
            return len(tail) == count and all(r["ok"] for r in tail)

        wait_until(streak, timeout=timeout, interval=0.1,
                   what=lambda: f"{count} good probes by {self.process}:\n"
                                f"{self.process.output()[-2000:]}")  # fmt: skip


@dataclass
class MeshBed:
    """The generated configs of a stack, and the hosts of a lab running them."""

    lab: NetnsLab
    values: dict[str, Any]  # the stack's config values, as in Pulumi.<stack>.yaml
    route_password: str
    client_password: str
    system_password: str = "mesh-bed-system"  # the system account's user (render/nats.py)
    private_keys: dict[str, str] = field(default_factory=dict)  # by host name
    wireguard: dict[str, Background] = field(default_factory=dict)
    servers: dict[str, Background] = field(default_factory=dict)  # nats-server by pod code
    starts: dict[str, int] = field(default_factory=dict)  # nats-server starts by pod code
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.deployment = self.plan(self.values)

    # --- the program's view ----------------------------------------------------------------
    @staticmethod
    def plan(values: Mapping[str, Any]) -> Deployment:
        return load_deployment(as_pulumi_config(dict(values)))

    def replan(self, values: dict[str, Any]) -> None:
        """A changed stack (e.g. one more pod), as the next `pulumi up` would see it."""
        self.values = values
        self.deployment = self.plan(values)

    def private_key(self, name: str) -> str:
        """A host's key is created once and kept, as the stack state keeps its random bytes."""
        if name not in self.private_keys:
            self.private_keys[name] = random_wireguard_key()
        return self.private_keys[name]

    def peers(self) -> dict[str, PeerKeys]:
        """Every host's public key and public address (its namespace's bridge address)."""
        return {
            host.name: PeerKeys(
                wireguard_public_key(self.private_key(host.name)),
                str(self.lab.hosts[host.name].address),
            )
            for host in self.deployment.hosts
        }

    def wg_conf(self, name: str) -> str:
        host = self.deployment.hosts_by_name[name]
        return render_wg_conf(self.deployment, host, self.private_key(name), self.peers())

    def nats_json(self, code: str) -> str:
        """The pod's nats.json as `render_nats_config` writes it, store directory adjusted."""
        pod = self.deployment.pod(code)
        store = str(self.directory(code, "jetstream"))
        config = nats_config(self.deployment, pod, route_password=self.route_password,
                             client_password=self.client_password,
                             system_password=self.system_password, store_dir=store)  # fmt: skip
        # Same serialisation as the program's renderer; the store path is the only change.
        rendered = json.loads(render_nats_config(
            self.deployment, pod, route_password=self.route_password,
            client_password=self.client_password, system_password=self.system_password,
        ))  # fmt: skip
        if {**config, "jetstream": {**config["jetstream"], "store_dir": STORE_DIR}} != rendered:
            raise AssertionError(f"nats_config of {code} differs from the rendered file")
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    # --- files -----------------------------------------------------------------------------
    def directory(self, name: str, *parts: str) -> Path:
        path = self.lab.workdir.joinpath(name, *parts)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def wg_path(self, name: str) -> Path:
        """The host's wg0.conf (named after the lab's interface name, as wg-quick wants)."""
        return self.directory(name, WG_DIRECTORIES["/etc/wireguard"]) / f"{self.ifname(name)}.conf"

    def nats_path(self, code: str) -> Path:
        return self.directory(code, "nats") / "nats.json"

    @staticmethod
    def _install(path: Path, text: str, mode: int) -> None:
        """Write atomically (temp file + rename), as the program's scripts do."""
        temporary = path.with_name(f".{path.name}.new")
        temporary.write_text(text)
        temporary.chmod(mode)
        temporary.replace(path)

    def write_nats(self, code: str) -> str:
        text = self.nats_json(code)
        self._install(self.nats_path(code), text, 0o644)
        return text

    # --- WireGuard -------------------------------------------------------------------------
    def ifname(self, name: str) -> str:
        return self.lab.ifname(name, WG_BASE)

    def vpn_address(self, name: str) -> str:
        return str(self.deployment.hosts_by_name[name].vpn_address)

    def strip(self, name: str) -> str:
        """`wg-quick strip` of the host's wg0.conf: what wg-quick hands to `wg setconf`."""
        return self.lab.run(name, ["wg-quick", "strip", str(self.wg_path(name))]).stdout

    def apply_wireguard(self, name: str) -> list[str]:
        """Install and apply the host's generated wg0.conf with the program's APPLY_SCRIPT.

        The script runs inside the host, fed the file on stdin as the program feeds it, with
        its directories moved into the lab and `wg0` renamed to the lab's interface name.
        Returns what it asked of systemctl; `start wg-quick@<if>` (the interface does not
        exist yet: first boot) is carried out by `wg_quick_up`, as systemd would.
        """
        interface = self.ifname(name)
        script = self.apply_script(name)
        stub = self.directory(name, "bin")
        (stub / "systemctl").write_text(SYSTEMCTL_STUB)
        (stub / "systemctl").chmod(0o755)
        log = stub / "systemctl.log"
        log.write_text("")
        env = {"PATH": f"{stub}:{os.environ.get('PATH', '')}"}
        self.lab.run(name, ["bash", "-c", script], stdin=self.wg_conf(name), env=env)
        asked = log.read_text().splitlines()
        if f"start wg-quick@{interface}" in asked:
            self.wg_quick_up(name)
        return asked

    def apply_script(self, name: str) -> str:
        """APPLY_SCRIPT with the server's directories moved into the lab, `wg0` renamed."""
        # A bare name makes wg-quick read /etc/wireguard/<name>.conf: give it the path.
        script = APPLY_SCRIPT.replace(
            f"wg-quick strip {WG_INTERFACE}", f"wg-quick strip /etc/wireguard/{WG_INTERFACE}.conf"
        )
        # Placeholders first (NUL-delimited, no "/"), so that a replacement is never rescanned.
        marks = {path: f"\0{index}\0" for index, path in enumerate(WG_DIRECTORIES)}
        pattern = "|".join(rf"{re.escape(path)}\b" for path in WG_DIRECTORIES)
        script = re.sub(pattern, lambda match: marks[match.group()], script)
        script = re.sub(rf"\b{WG_INTERFACE}\b", "\0if\0", script)
        unknown = set(re.findall(r"(?<![\w.])/[\w./-]+", script)) - {"/dev/null"}
        if unknown:  # the script changed in a way the bed does not know how to adjust
            raise AssertionError(f"APPLY_SCRIPT uses paths {unknown} the bed cannot move")
        for path, mark in marks.items():
            script = script.replace(mark, str(self.directory(name, WG_DIRECTORIES[path])))
        return script.replace("\0if\0", self.ifname(name))

    def wg_quick_up(self, name: str) -> None:
        """`wg-quick up wg0` from the installed file, step by step (wg-quick's cmd_up):

        add_if     -> wireguard-go (wg-quick's own fallback without the kernel module),
                      in the foreground under the lab;
        set_config -> `wg setconf <if> <(wg-quick strip wg0.conf)`;
        add_addr   -> `ip -4 address add <Address> dev <if>` for each Address;
        set_mtu_up -> `ip link set mtu <endpoint route MTU - 80> up dev <if>`;
        set_dns    -> nothing: the file has no DNS (checked, as are the other wg-quick keys);
        add_route  -> `ip -4 route add <net> dev <if>` for each AllowedIPs network not yet
                      routed via the interface (`add_routes`).
        """
        conf = self.wg_path(name).read_text()
        settings = wg_quick_settings(conf)
        if set(settings) != {"Address"}:  # anything else would need more than the steps below
            raise AssertionError(f"wg0.conf of {name} uses wg-quick settings {settings}")
        interface = self.ifname(name)
        process = self.lab.spawn(name, ["wireguard-go", "-f", interface], name="wireguard-go")
        self.wireguard[name] = process
        socket = Path("/var/run/wireguard", f"{interface}.sock")
        wait_until(lambda: socket.exists() or not process.running(), timeout=10,
                   what=f"wireguard-go {interface} listening")  # fmt: skip
        if not process.running():
            raise AssertionError(f"wireguard-go of {name} exited:\n{process.output()}")
        stripped = self.directory(name, WG_DIRECTORIES["/run"]) / "wg-quick.stripped"
        self._install(stripped, self.strip(name), 0o600)
        self.lab.run(name, ["wg", "setconf", interface, str(stripped)])
        for address in settings["Address"]:
            self.lab.run(name, ["ip", "-4", "address", "add", address, "dev", interface])
        mtu = self._endpoint_mtu(name) - WG_QUICK_OVERHEAD
        self.lab.run(name, ["ip", "link", "set", "mtu", str(mtu), "up", "dev", interface])
        self.add_routes(name)

    def _endpoint_mtu(self, name: str) -> int:
        """wg-quick's MTU source: the largest MTU of the routes to the peers' endpoints."""
        mtu = 0
        for line in self.lab.run(name, ["wg", "show", self.ifname(name), "endpoints"]).stdout \
                .splitlines():  # fmt: skip
            endpoint = line.split("\t")[1].rsplit(":", 1)[0].strip("[]")
            route = self.lab.run(name, ["ip", "-o", "route", "get", endpoint]).stdout
            device = re.search(r"\bdev (\S+)", route)
            if device:
                link = self.lab.run(name, ["ip", "-o", "link", "show", "dev", device[1]]).stdout
                found = re.search(r"\bmtu (\d+)", link)
                mtu = max(mtu, int(found[1])) if found else mtu
        return mtu or 1500

    def add_routes(self, name: str) -> list[str]:
        """wg-quick's add_route loop: a route via the interface for each AllowedIPs network
        that has none yet."""
        interface = self.ifname(name)
        allowed = self.lab.run(name, ["wg", "show", interface, "allowed-ips"]).stdout
        networks = sorted(
            {net for line in allowed.splitlines() for net in line.split()[1:] if "/" in net},
            key=lambda net: -ipaddress.ip_network(net).prefixlen,
        )
        added = []
        for net in networks:
            show = ["ip", "-4", "route", "show", "dev", interface, "match", net]
            if not self.lab.run(name, show).stdout.strip():
                self.lab.run(name, ["ip", "-4", "route", "add", net, "dev", interface])
                added.append(net)
        return added

    def handshakes(self, name: str) -> dict[str, int]:
        """`wg show <if> latest-handshakes` by peer public key (0: never)."""
        out = self.lab.run(name, ["wg", "show", self.ifname(name), "latest-handshakes"]).stdout
        return {key: int(stamp) for key, stamp in (line.split("\t") for line in out.splitlines())}

    def ping(self, name: str, address: str, wait: int = 2) -> bool:
        argv = ["ping", "-n", "-q", "-c", "1", "-W", str(wait), address]
        return self.lab.run(name, argv, check=False).returncode == 0

    def crash_nats(self, code: str) -> None:
        """SIGKILL the pod's nats-server: no shutdown, as in a crash or power loss."""
        server = self.servers[code]
        os.kill(server.pid, signal.SIGKILL)  # `ip netns exec` execs nats-server
        server.popen.wait(10)

    def set_link(self, name: str, up: bool) -> None:
        interface = self.ifname(name)
        self.lab.run(name, ["ip", "link", "set", interface, "up" if up else "down"])

    def diagnose(self) -> str:
        """The network as each host sees it (tunnel state, routes, TCP), for failure messages."""
        parts = []
        for name, process in self.wireguard.items():
            interface = self.ifname(name)
            commands = [["wg", "show", interface], ["ip", "-4", "route"],
                        ["ss", "-tnoi", "state", "established"]]  # fmt: skip
            parts.append(f"=== {name} (wireguard-go running: {process.running()})")
            for argv in commands:
                result = self.lab.run(name, argv, check=False)
                parts.append(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
            reach = {other: self.ping(name, self.vpn_address(other), wait=1)
                     for other in self.wireguard if other != name}  # fmt: skip
            parts.append(f"pings: {reach}")
        return "\n".join(parts)

    # --- NATS ------------------------------------------------------------------------------
    def node(self, code: str) -> NatsNode:
        pod = self.deployment.pod(code)
        host, port = pod.nats_client
        monitor = f"http://{pod.nats_host}:{pod.nats_ports['monitor']}"
        return NatsNode(self.lab, pod.host, f"nats://{host}:{port}", monitor, CLIENT_USER,
                        self.client_password, self.servers.get(code))  # fmt: skip

    def nodes(self) -> dict[str, NatsNode]:
        return {pod.code: self.node(pod.code) for pod in self.deployment.pods}

    def nats_start(self, code: str) -> Background:
        """Start the pod's nats-server on its (re)written config; its store is kept."""
        self.write_nats(code)
        pod = self.deployment.pod(code)
        self.starts[code] = self.starts.get(code, 0) + 1
        name = "nats-server" if self.starts[code] == 1 else f"nats-server-{self.starts[code]}"
        server = self.lab.spawn(pod.host, ["nats-server", "-c", str(self.nats_path(code))],
                                name=name)  # fmt: skip
        self.servers[code] = server
        return server

    def nats_reload(self, code: str) -> None:
        """Rewrite nats.json and SIGHUP the server, as the program's signal_reload does."""
        self.write_nats(code)
        os.kill(self.servers[code].pid, signal.SIGHUP)  # `ip netns exec` execs nats-server

    # --- probes ----------------------------------------------------------------------------
    def ping_probe(self, name: str, targets: list[str], duration: float, label: str) -> Probe:
        argv = [sys.executable, "-c", PING_PROBE_SCRIPT, ",".join(targets), "0.2", str(duration)]
        return Probe(self.lab.spawn(name, argv, name=f"ping-probe-{label}"))


def since(start: float) -> float:
    return round(time.monotonic() - start, 3)
