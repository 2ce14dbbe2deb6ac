"""Emulate several hosts on this machine with Linux network namespaces.

Why: real-software tests (a nats-server cluster, later WireGuard between pods) need several
machines that reach each other by name over a real network stack, without Docker or VMs and
without touching this machine's own network. Each emulated host is a network namespace with
one veth leg (`eth0`) on a private bridge. The bridge lives in a namespace of its own, so
nothing is attached to the root namespace and no namespace has a default route: traffic
stays inside the lab.

Names resolve "as Docker would" on a shared network (every container resolves every other
container's name) through `/etc/netns/<ns>/hosts`, which `ip netns exec` bind-mounts over
/etc/hosts for each command it starts. Run everything through `NetnsLab.run` / `spawn` (or
`exec_argv`); a process that enters a namespace by other means sees the real /etc/hosts.

Everything a lab creates is named `upt-<pid>-<seq>...` and recorded as it is created;
`close()` undoes exactly that, in reverse order, also after a failed setup or test. Use the
lab as a context manager, e.g. in a pytest fixture:

    @pytest.fixture(scope="module")
    def lab(tmp_path_factory):
        with NetnsLab(["dk", "se"], workdir=tmp_path_factory.mktemp("lab")) as lab:
            yield lab

WireGuard (wireguard-go): the UAPI socket `/var/run/wireguard/<ifname>.sock` is shared by all
namespaces (so `wg show` lists every lab's interfaces: name the one you mean), and interface
names must be unique across namespaces and concurrent test runs: take them from
`NetnsLab.ifname`. Start it with `spawn(host, ["wireguard-go", "-f", name], ...)`: `run`
waits for its output pipes to close, which a daemon (wireguard-go without -f) never does.
`close()` still ends whatever runs inside the lab's namespaces (SIGTERM first, so
wireguard-go removes its socket).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

BENCHMARK_RANGE = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544: never routed
DEFAULT_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
NETNS_ETC = Path("/etc/netns")
BRIDGE = "br0"
INTERFACE = "eth0"
IFNAMSIZ = 15  # longest Linux interface name
HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # also the namespace name's suffix
STOP_GRACE_SECONDS = 5.0

_sequence = itertools.count()


class NetnsError(RuntimeError):
    """A command of the lab failed; the message carries its stdout and stderr."""


@dataclass(frozen=True)
class Host:
    """One emulated host: a network namespace with one address on the lab's bridge."""

    name: str
    netns: str
    index: int
    address: ipaddress.IPv4Address
    interface: str = INTERFACE


@dataclass
class LoggedProcess:
    """A process whose stdout and stderr go to `log`."""

    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Background(LoggedProcess):
    """A long-running process inside a namespace; its stdout and stderr go to `log`."""

    host: Host = field(kw_only=True)
    name: str = field(kw_only=True)

    def wait_for_output(self, text: str, timeout: float = 10.0) -> None:
        """Wait until `text` appears in the log; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.running():
                raise NetnsError(
                    f"{self} exited ({self.popen.returncode}) before printing"
                    f" {text!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise NetnsError(f"{self} did not print {text!r} in {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM the process group (clean shutdown), SIGKILL it after `grace` seconds."""
        if self.running():
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(grace)
        return self.popen.returncode

    def __str__(self) -> str:
        return f"{self.name} in {self.host.netns} (pid {self.popen.pid})"


class NetnsLab:
    """Hosts on a private bridge, each in its own network namespace; see the module doc."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        subnet: ipaddress.IPv4Network = DEFAULT_SUBNET,
        workdir: Path | None = None,
    ) -> None:
        _check_names(names)
        if not subnet.subnet_of(BENCHMARK_RANGE):
            raise ValueError(f"{subnet} is outside {BENCHMARK_RANGE}: labs never use real ranges")
        if len(names) > subnet.num_addresses - 2:
            raise ValueError(f"{subnet} is too small for {len(names)} hosts")
        self.sequence = next(_sequence)
        self.prefix = f"upt-{os.getpid()}-{self.sequence}"
        self.subnet = subnet
        self.bridge_netns = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {
            name: Host(name, f"{self.prefix}-{name}", index, subnet.network_address + index + 1)
            for index, name in enumerate(names)
        }
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._aliases: dict[str, str] = {}  # resolvable name -> host name
        self._elsewhere: dict[str, str] = {}  # resolvable name -> an address of no lab host
        self._processes: list[Background] = []
        self._undo: list[tuple[str, Callable[[], None]]] = []

    # --- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(raise_errors=error is None)

    def start(self) -> None:
        """Create namespaces, bridge and links; on any failure undo what was created."""
        try:
            self._setup()
        except BaseException:
            self.close(raise_errors=False)
            raise

    def close(self, raise_errors: bool = True) -> None:
        """Stop processes, then undo every creation in reverse order, whatever fails."""
        errors: list[str] = []
        for process in reversed(self._processes):
            _collect(errors, f"stop {process}", process.stop)
        self._processes.clear()
        for netns in self.namespaces():
            _collect(errors, f"end processes in {netns}", functools.partial(_end_netns_pids, netns))
        while self._undo:
            what, undo = self._undo.pop()
            _collect(errors, what, undo)
        if errors and raise_errors:
            raise NetnsError("lab teardown incomplete:\n" + "\n".join(errors))

    @property
    def workdir(self) -> Path:
        """Directory for logs and files of the lab's processes."""
        if self._workdir is None:
            raise NetnsError("the lab is not started")
        return self._workdir

    def namespaces(self) -> list[str]:
        """Every namespace of the lab (hosts and bridge)."""
        return [*(host.netns for host in self.hosts.values()), self.bridge_netns]

    # --- setup -------------------------------------------------------------------------
    def _setup(self) -> None:
        self._make_workdir()
        self._add_netns(self.bridge_netns)
        self._ip(self.bridge_netns, "link", "add", BRIDGE, "type", "bridge")
        self._ip(self.bridge_netns, "link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            self._add_host(host)

    def _make_workdir(self) -> None:
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self._workdir = self._given_workdir
            return
        created = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._workdir = created
        self._undo.append((f"remove {created}", lambda: shutil.rmtree(created)))

    def _add_netns(self, netns: str) -> None:
        _command(["ip", "netns", "add", netns])
        self._undo.append((f"delete netns {netns}", lambda: _delete_netns(netns)))

    def _add_host(self, host: Host) -> None:
        # Config files first: `ip netns exec` bind-mounts them only if they exist at exec.
        self._add_etc(host)
        self._add_netns(host.netns)
        leg = f"v{host.index}"  # bridge side; names are per namespace, so short is fine
        self._ip(self.bridge_netns, "link", "add", leg, "type", "veth",
                 "peer", "name", host.interface, "netns", host.netns)  # fmt: skip
        self._ip(self.bridge_netns, "link", "set", leg, "master", BRIDGE, "up")
        self._ip(host.netns, "link", "set", "lo", "up")
        address = f"{host.address}/{self.subnet.prefixlen}"
        self._ip(host.netns, "addr", "add", address, "dev", host.interface)
        self._ip(host.netns, "link", "set", host.interface, "up")

    def _add_etc(self, host: Host) -> None:
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir(exist_ok=True)
            self._undo.append((f"remove {NETNS_ETC} if empty", lambda: _rmdir_if_empty(NETNS_ETC)))
        directory = NETNS_ETC / host.netns
        directory.mkdir(parents=True)  # parents: another lab may just have removed NETNS_ETC
        self._undo.append((f"remove {directory}", lambda: shutil.rmtree(directory)))
        # No nameserver: a name missing from the hosts file fails at once, inside the lab.
        (directory / "resolv.conf").write_text("# lab namespace: names come from hosts only\n")
        self._write_hosts(host)

    # --- names -------------------------------------------------------------------------
    def alias(self, host: Host | str, *names: str) -> None:
        """Make `names` resolve to `host` in every namespace, as a shared Docker network does."""
        target = self.host(host)
        for name in names:
            owner = self._aliases.get(name)
            if owner is not None and owner != target.name:
                raise ValueError(f"{name} already resolves to {owner}")
            self._aliases[name] = target.name
        for each in self.hosts.values():
            self._write_hosts(each)

    def resolve(self, name: str, address: str) -> None:
        """Make `name` resolve to `address` (in the benchmark range, usually no lab host's)
        in every namespace: a server somewhere else, which nothing in the lab routes to."""
        if ipaddress.ip_address(address) not in BENCHMARK_RANGE:
            raise ValueError(f"{address} is outside {BENCHMARK_RANGE}: labs never use real ranges")
        if name in self._aliases:
            raise ValueError(f"{name} already resolves to {self._aliases[name]}")
        self._elsewhere[name] = address
        for each in self.hosts.values():
            self._write_hosts(each)

    def hosts_file(self, host: Host | str) -> Path:
        return NETNS_ETC / self.host(host).netns / "hosts"

    def _write_hosts(self, host: Host) -> None:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for name, owner in sorted(self._aliases.items()):
            lines.append(f"{self.hosts[owner].address}\t{name}")
        for name, address in sorted(self._elsewhere.items()):
            lines.append(f"{address}\t{name}")
        # In place, not by rename: running processes keep the bind-mounted inode.
        self.hosts_file(host).write_text("\n".join(lines) + "\n")

    def host(self, host: Host | str) -> Host:
        return host if isinstance(host, Host) else self.hosts[host]

    def leaks(self) -> list[str]:
        """Ways out of the lab, if any: routes beyond the lab subnet, an IPv6 default
        route, or a public address that is not refused locally. Empty: the lab is sealed."""
        found: list[str] = []
        for host in self.hosts.values():
            routes = self.run(host, ["ip", "-4", "route", "show"]).stdout.splitlines()
            found += [f"{host.name}: {r}" for r in routes if not r.startswith(str(self.subnet))]
            default6 = self.run(host, ["ip", "-6", "route", "show", "default"]).stdout.strip()
            if default6:
                found.append(f"{host.name}: {default6}")
            # A documentation address (TEST-NET-1): refused at once, no packet leaves.
            ping = self.run(host, ["ping", "-n", "-c", "1", "-W", "1", "192.0.2.1"], check=False)
            if ping.returncode == 0 or "unreachable" not in ping.stderr.lower():
                found.append(f"{host.name}: 192.0.2.1 not refused locally ({ping.stderr.strip()})")
        return found

    def ifname(self, host: Host | str, base: str) -> str:
        """An interface name unique across namespaces, labs and runs (for wireguard-go)."""
        name = f"{base}-{os.getpid():x}-{self.sequence:x}-{self.host(host).index:x}"
        if len(name) > IFNAMSIZ:
            raise ValueError(f"{name!r} is longer than {IFNAMSIZ} characters: shorten {base!r}")
        return name

    # --- processes ---------------------------------------------------------------------
    def exec_argv(self, host: Host | str, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside the namespace of `host`."""
        return ["ip", "netns", "exec", self.host(host).netns, *argv]

    def run(
        self,
        host: Host | str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        check: bool = True,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside `host`; with `check`, fail with its output.

        Output is captured until the pipes close, so start daemons with `spawn` instead.
        """
        argv = self.exec_argv(host, argv)
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
            env=_environment(env), stdin=None if stdin is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise NetnsError(_describe(argv, result))
        return result

    def spawn(
        self,
        host: Host | str,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> Background:
        """Start a background process inside `host`; `close()` stops it."""
        target = self.host(host)
        log = self.workdir / f"{target.name}-{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                self.exec_argv(target, argv), stdin=subprocess.DEVNULL, stdout=sink,
                stderr=subprocess.STDOUT, env=_environment(env), start_new_session=True,
            )  # fmt: skip
        process = Background(popen, log, host=target, name=name)
        self._processes.append(process)
        return process

    def _ip(self, netns: str, *args: str) -> None:
        _command(["ip", "-n", netns, *args])


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str | Callable[[], str],
) -> None:
    """Poll `condition` until true; why: distributed state converges, it is never instant.

    `what` describes the awaited state; a callable is evaluated at the timeout, so it can
    report the state (logs, last reply) as it was then.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            description = what() if callable(what) else what
            raise TimeoutError(f"not within {timeout}s: {description}")
        time.sleep(interval)


# --- helpers -----------------------------------------------------------------------------
def _check_names(names: Sequence[str]) -> None:
    if not names:
        raise ValueError("a lab needs at least one host")
    if len(set(names)) != len(names):
        raise ValueError(f"host names repeat: {list(names)}")
    for name in names:
        if not HOST_NAME.fullmatch(name) or name == "br":
            raise ValueError(f"host name {name!r}: 1-12 of a-z0-9, starting with a letter, not br")


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(extra or {})}


def _command(argv: list[str], timeout: float = 30.0) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise NetnsError(_describe(argv, result))
    return result.stdout


def _describe(argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{' '.join(argv)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


def _collect(errors: list[str], what: str, action: Callable[[], object]) -> None:
    try:
        action()
    except (NetnsError, OSError, subprocess.SubprocessError) as error:
        # Teardown goes on; the caller reports everything at the end.
        errors.append(f"{what}: {error}")


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pid, signum)


def _netns_pids(netns: str) -> list[int]:
    if not Path("/var/run/netns", netns).exists():
        return []
    return [int(pid) for pid in _command(["ip", "netns", "pids", netns]).split()]


def _end_netns_pids(netns: str, grace: float = STOP_GRACE_SECONDS) -> None:
    """End what still runs in a lab namespace (daemons, leftovers of timed-out commands)."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        pids = _netns_pids(netns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while _netns_pids(netns) and time.monotonic() < deadline:
            time.sleep(0.05)
    if pids := _netns_pids(netns):
        raise NetnsError(f"processes {pids} survive in {netns}")


def _delete_netns(netns: str) -> None:
    if Path("/var/run/netns", netns).exists():
        _command(["ip", "netns", "delete", netns])


def _rmdir_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: another lab (or the system) uses it
        directory.rmdir()
