"""The servers' cloud-config passes the real `cloud-init schema` check.

A server's user data is applied once, at first boot, and changing it replaces the server:
an invalid key would only show as a half-configured host. `cloud-init schema --config-file`
(the Debian package's cloud-init) validates it here instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tests.support.tools import run_checker
from unityplan_infra.render.cloudinit import HostKey, cloud_config, render_cloud_config

pytestmark = pytest.mark.timeout(60)

CLOUD_INIT = shutil.which("cloud-init") or "/usr/bin/cloud-init"
_KEY = Ed25519PrivateKey.generate()
HOST_KEY = HostKey(
    _KEY.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode(),
    _KEY.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + "\n",
)


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    """Run `cloud-init schema --config-file <path>`; stdout and stderr merged."""
    return run_checker([CLOUD_INIT, "schema", "--config-file", str(path)])


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "user-data.yaml"
    path.write_text("#cloud-config\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def test_generated_cloud_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(render_cloud_config(HOST_KEY))
    result = schema_check(path)
    assert result.returncode == 0, result.stdout
    assert f"Valid cloud-config: {path}" in result.stdout
    # The program's host key, and no other, as the files sshd reads.
    document = yaml.safe_load(path.read_text())
    assert document["ssh_deletekeys"] is True and document["ssh_genkeytypes"] == ["ed25519"]
    assert document["ssh_keys"] == {
        "ed25519_private": HOST_KEY.private_openssh,
        "ed25519_public": " ".join(HOST_KEY.public_openssh.split()[:2]),
    }


def test_docker_comes_from_the_image_or_the_package() -> None:
    # What the schema cannot know: WireGuard and iptables always; Docker installed only
    # where the image lacks it, so one user data fits every image (a replaced server
    # keeps the old one).
    config = cloud_config(HOST_KEY)
    assert {"wireguard", "wireguard-tools", "iptables"} <= set(config["packages"])
    assert "docker.io" not in config["packages"]
    (install,) = [c for c in config["runcmd"] if "docker.io" in " ".join(c)]
    assert install[-1].startswith("command -v docker >/dev/null ||")


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c.update(packages="wireguard"), "packages: 'wireguard' is not of type 'array'"),
        (
            lambda c: c["write_files"][0].update(permissions=0o644),
            "write_files.0.permissions: 420 is not of type 'string'",
        ),
        (lambda c: c.update(package_update="yes"), "package_update: 'yes' is not of type"),
    ],
    ids=["packages-not-a-list", "permissions-not-a-string", "package-update-not-a-bool"],
)
def test_schema_check_rejects_a_wrong_type(tmp_path: Path, mutate: Any, error: str) -> None:
    # Negative control: the same command must fail on a broken config, or passing means nothing.
    config = cloud_config(HOST_KEY)
    mutate(config)
    result = schema_check(write_config(tmp_path, config))
    assert result.returncode != 0, result.stdout
    assert "Valid cloud-config" not in result.stdout
    assert error in result.stdout
