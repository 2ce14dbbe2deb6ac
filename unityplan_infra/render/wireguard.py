"""WireGuard full mesh: one `wg0.conf` (wg-quick format) per host.

Host in slot N has address 10.0.N.1/24 and one [Peer] per other host, allowed
10.0.<its slot>.0/24, reached at its public address on 51820/udp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from unityplan_infra.topology.plan import (
    VPN_PREFIX,
    WIREGUARD_PORT,
    Deployment,
    HostPlan,
    vpn_network,
)

KEEPALIVE_SECONDS = 25


@dataclass(frozen=True)
class PeerKeys:
    """What the other hosts need to know about one host."""

    public_key: str
    endpoint: str  # public IP address


def _section(name: str, items: list[tuple[str, object]]) -> list[str]:
    return [f"[{name}]", *(f"{key} = {value}" for key, value in items), ""]


def render_wg_conf(
    deployment: Deployment,
    host: HostPlan,
    private_key: str,
    peers: Mapping[str, PeerKeys],
) -> str:
    """`/etc/wireguard/wg0.conf` of `host`; `peers` maps every host name to its keys."""
    lines = _section(
        "Interface",
        [
            ("Address", f"{host.vpn_address}/{VPN_PREFIX}"),
            ("ListenPort", WIREGUARD_PORT),
            ("PrivateKey", private_key),
        ],
    )
    for other in deployment.hosts:
        if other.name == host.name:
            continue
        keys = peers[other.name]
        lines.append(f"# {other.name} (slot {other.slot})")
        lines += _section(
            "Peer",
            [
                ("PublicKey", keys.public_key),
                ("Endpoint", _endpoint(keys.endpoint)),
                ("AllowedIPs", vpn_network(other.slot)),
                ("PersistentKeepalive", KEEPALIVE_SECONDS),
            ],
        )
    return "\n".join(lines)


def _endpoint(address: str) -> str:
    return f"[{address}]:{WIREGUARD_PORT}" if ":" in address else f"{address}:{WIREGUARD_PORT}"


# Applied on the host after wg0.conf is written. `wg syncconf` changes peers in place, so
# existing tunnels stay up when a host is added; wg-quick@wg0 brings the mesh back at boot.
APPLY_SCRIPT = """set -eu
umask 077
install -d -m 0700 /etc/wireguard
cat > /etc/wireguard/wg0.conf.new
mv -f /etc/wireguard/wg0.conf.new /etc/wireguard/wg0.conf
systemctl enable wg-quick@wg0 >/dev/null 2>&1
if ip link show wg0 >/dev/null 2>&1; then
  wg-quick strip wg0 > /run/wg0.stripped
  wg syncconf wg0 /run/wg0.stripped
  rm -f /run/wg0.stripped
  # wg-quick routes peers' AllowedIPs only at `up`; a peer added live needs its route.
  for network in $(wg show wg0 allowed-ips | cut -f2); do
    ip route replace "$network" dev wg0
  done
else
  systemctl start wg-quick@wg0
fi
"""
