"""Run `docker` on a pod's host from the operator's machine.

Single host: the local `docker` client (with the operator's own DOCKER_HOST, as `pulumi up`
used it). Multi-host: `docker` on the server over `ssh`, accepting only the host key the
stack pinned (outputs `hosts.<name>.sshHostKey`), as `verify` does.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unityplan_infra.render.ssh import pinned_host_key_options
from unityplan_infra.verify.outputs import HostOutputs, OutputsError, StackOutputs


@dataclass(frozen=True)
class DockerOnHost:
    host: HostOutputs | None  # None: this machine's engine
    ssh_config: Path | None = None

    @classmethod
    def of(cls, outputs: StackOutputs, pod: str, ssh_config: Path | None = None) -> DockerOnHost:
        if pod not in outputs.pods:
            raise OutputsError(f"no pod {pod!r} in the outputs (pods: {', '.join(outputs.pods)})")
        name = outputs.pods[pod].host
        if not outputs.hosts:
            return cls(None)
        if name not in outputs.hosts:
            raise OutputsError(f"pod {pod} runs on host {name!r}, which the outputs lack")
        return cls(outputs.hosts[name], ssh_config)

    def argv(self, docker_args: Sequence[str]) -> list[str]:
        command = ["docker", *docker_args]
        if self.host is None:
            return command
        host = self.host
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        if host.ssh_host_key:
            options += pinned_host_key_options(host.ssh_host_key)
        if self.ssh_config is not None:
            options += ["-F", str(self.ssh_config)]
        return ["ssh", *options, "-p", str(host.ssh_port),
                f"{host.ssh_user}@{host.public_address}", shlex.join(command)]  # fmt: skip

    def run(self, docker_args: Sequence[str], *, capture: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(docker_args), text=True, check=False, stdin=subprocess.DEVNULL,
            capture_output=capture,
        )  # fmt: skip
