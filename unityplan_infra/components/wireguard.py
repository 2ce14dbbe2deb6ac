"""`WireGuardPeer`: one host of the WireGuard full mesh.

The private key is random bytes kept (secret) in the stack state; the public key is derived
with `cryptography`. The host's wg0.conf goes over SSH and is applied with `wg syncconf`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_command as command

from unityplan_infra.components.host import sha256
from unityplan_infra.components.secrets import random_bytes, secret_base64
from unityplan_infra.crypto.keys import wireguard_private_key, wireguard_public_key
from unityplan_infra.render.wireguard import APPLY_SCRIPT, PeerKeys, render_wg_conf
from unityplan_infra.topology.plan import Deployment, HostPlan


class WireGuardKey:
    """A host's key pair; created before the peers so every config can list every key."""

    def __init__(self, host: HostPlan, parent: pulumi.Resource) -> None:
        material = secret_base64(random_bytes(f"wg-{host.name}-private-key", parent))
        self.private_key: pulumi.Output[str] = pulumi.Output.secret(
            material.apply(wireguard_private_key)
        )
        # Public by nature: unwrap the secret marking inherited from the private key.
        self.public_key: pulumi.Output[str] = pulumi.Output.unsecret(
            self.private_key.apply(wireguard_public_key)
        )


class WireGuardPeer(pulumi.ComponentResource):
    """wg0.conf of one host, pushed and applied over SSH."""

    public_key: pulumi.Output[str]
    address: str
    """The host's VPN address, 10.0.<slot>.1."""
    config: pulumi.Output[str]
    """The rendered wg0.conf (secret: it holds the private key)."""

    def __init__(
        self,
        deployment: Deployment,
        host: HostPlan,
        *,
        keys: Mapping[str, WireGuardKey],
        endpoints: Mapping[str, pulumi.Input[str]],
        connection: command.remote.ConnectionArgs,
        ready: Sequence[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:WireGuardPeer", f"wg-{host.name}", None, opts)
        self.public_key = keys[host.name].public_key
        self.address = str(host.vpn_address)
        names = [h.name for h in deployment.hosts]
        public_keys = pulumi.Output.all(*(keys[n].public_key for n in names))
        addresses = pulumi.Output.all(*(endpoints[n] for n in names))
        self.config = pulumi.Output.secret(
            pulumi.Output.all(keys[host.name].private_key, public_keys, addresses).apply(
                lambda values: render_wg_conf(
                    deployment,
                    host,
                    values[0],
                    {
                        n: PeerKeys(k, a)
                        for n, k, a in zip(names, values[1], values[2], strict=True)
                    },
                )
            )
        )
        self.apply_command = command.remote.Command(
            f"wg-{host.name}-apply",
            connection=connection,
            create=APPLY_SCRIPT,
            stdin=self.config,
            triggers=[self.config.apply(sha256)],
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(ready)),
        )
        self.register_outputs({"publicKey": self.public_key, "address": self.address})
