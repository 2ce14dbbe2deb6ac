"""Reach a multi-host stack's endpoints from the operator's machine over SSH.

Pod endpoints sit on WireGuard addresses (or on a host's loopback) that the operator's
machine is not part of. For each host, one `ssh -N` process forwards a local port to every
endpoint the checks need on that host, as the host itself sees it (`-L 127.0.0.1:LOCAL:
ADDRESS:PORT`), using the operator's own ssh client, keys and agent, and accepting only the
host key the stack pinned (outputs `hosts.<name>.sshHostKey`).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from unityplan_infra.render.ssh import pinned_host_key_options
from unityplan_infra.verify.outputs import StackOutputs, host_port

Forwards = dict[tuple[str, str, int], tuple[str, int]]
LOOPBACK = "127.0.0.1"


class TunnelError(Exception):
    """An SSH forward could not be set up."""


def endpoints_by_host(outputs: StackOutputs) -> dict[str, set[tuple[str, int]]]:
    """(address, port) pairs each host must forward for the checks."""
    needed: dict[str, set[tuple[str, int]]] = {name: set() for name in outputs.hosts}
    for pod in outputs.pods.values():
        e = pod.endpoints
        for url in (e.postgres, e.redis, e.nats_monitor, e.ipfs_api, e.matrix, e.matrix_federation):
            needed.setdefault(pod.host, set()).add(host_port(url))
    for name in ("prometheus", "grafana"):
        if name in outputs.urls:
            needed.setdefault(outputs.monitoring_host, set()).add(host_port(outputs.urls[name]))
    return needed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def ssh_argv(
    user: str, address: str, port: int, forwards: Sequence[tuple[int, str, int]],
    ssh_config: Path | None, connect_timeout: float, host_key: str | None = None,
) -> list[str]:
    """`ssh -N` with one `-L` per forward; fails at once if any forward cannot bind. With
    `host_key` (the stack's outputs have it) the server must present exactly that key;
    command-line options win over any ssh config."""
    argv = ["ssh", "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", f"ConnectTimeout={max(1, round(connect_timeout))}",
            "-o", "ServerAliveInterval=5"]  # fmt: skip
    if host_key is not None:
        argv += pinned_host_key_options(host_key)
    if ssh_config is not None:
        argv += ["-F", str(ssh_config)]
    for local, target, target_port in sorted(forwards):
        target_host = f"[{target}]" if ":" in target else target
        argv += ["-L", f"{LOOPBACK}:{local}:{target_host}:{target_port}"]
    return [*argv, "-p", str(port), f"{user}@{address}"]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def ssh_forwards(
    outputs: StackOutputs, ssh_config: Path | None = None, timeout: float = 15.0
) -> Iterator[Forwards]:
    """Forwards for every host of `outputs`; closed when the block ends."""
    processes: list[subprocess.Popen[bytes]] = []
    mapping: Forwards = {}
    try:
        for name, needed in endpoints_by_host(outputs).items():
            host = outputs.hosts[name]
            plan = [(_free_port(), address, port) for address, port in sorted(needed)]
            process = subprocess.Popen(
                ssh_argv(host.ssh_user, host.public_address, host.ssh_port, plan, ssh_config,
                         timeout, host.ssh_host_key),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            processes.append(process)
            _wait_listening(process, [local for local, _, _ in plan], name, timeout)
            for local, address, port in plan:
                mapping[(name, address, port)] = (LOOPBACK, local)
        yield mapping
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_listening(
    process: subprocess.Popen[bytes], ports: list[int], host: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not all(_listening(port) for port in ports):
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
            raise TunnelError(f"ssh to host {host} failed: {error or process.returncode}")
        if time.monotonic() > deadline:
            raise TunnelError(f"ssh to host {host}: forwards not ready within {timeout:.0f} s")
        time.sleep(0.1)
