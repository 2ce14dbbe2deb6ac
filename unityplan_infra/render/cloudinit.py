"""cloud-init user data of a Hetzner server.

Kept minimal and identical for every server: changing `user_data` replaces a server, so
anything that changes (WireGuard peers, service config) goes over SSH instead.
"""

from __future__ import annotations

from typing import Any

import yaml

DOCKER_IMAGE = "docker-ce"  # Hetzner app image with Docker preinstalled


def cloud_config(image: str) -> dict[str, Any]:
    packages = ["wireguard", "wireguard-tools"]
    if image != DOCKER_IMAGE:
        packages.append("docker.io")
    return {
        "package_update": True,
        "packages": packages,
        "write_files": [
            {
                # Forwarding for Docker's published ports; non-local bind so that a container
                # publishing on the WireGuard address can start before wg0 exists.
                "path": "/etc/sysctl.d/60-unityplan.conf",
                "content": "net.ipv4.ip_forward = 1\nnet.ipv4.ip_nonlocal_bind = 1\n",
                "permissions": "0644",
            },
            {
                # After a reboot, bring the mesh up before Docker restarts the containers
                # that publish on 10.0.<slot>.1 (a failed bind is never retried).
                "path": "/etc/systemd/system/docker.service.d/10-after-wireguard.conf",
                "content": "[Unit]\nWants=wg-quick@wg0.service\nAfter=wg-quick@wg0.service\n",
                "permissions": "0644",
            },
        ],
        "runcmd": [
            ["sysctl", "--system"],
            ["systemctl", "daemon-reload"],
            ["install", "-d", "-m", "0700", "/etc/wireguard", "/opt/unityplan"],
            ["systemctl", "enable", "--now", "docker"],
        ],
    }


def render_cloud_config(image: str) -> str:
    return "#cloud-config\n" + yaml.safe_dump(cloud_config(image), sort_keys=False)
