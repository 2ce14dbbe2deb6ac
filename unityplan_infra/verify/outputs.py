"""The stack outputs `verify` reads, as typed models.

Only what the checks need is modelled; other outputs are ignored, so an older or newer
program's extra keys do not break `verify`. A missing key is an error that names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel


class OutputsError(Exception):
    """The outputs file cannot be read or lacks what `verify` needs (exit code 2)."""


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class PodEndpoints(_Model):
    postgres: str
    redis: str
    nats: str
    nats_monitor: str
    ipfs_api: str
    matrix: str
    matrix_federation: str


class PodOutputs(_Model):
    endpoints: PodEndpoints
    postgres_user: str
    postgres_password: str
    redis_password: str
    databases: list[str]
    nats_server_name: str
    matrix_server_name: str
    ipfs_peer_id: str
    host: str
    """The host the pod runs on (`local` in single-host)."""


class StreamOutputs(_Model):
    name: str
    replicas: int
    placement_tags: list[str] = Field(default_factory=list)


class NatsOutputs(_Model):
    cluster: str
    streams: list[StreamOutputs]


class HostOutputs(_Model):
    """A server of the multi-host layout, as SSH sees it."""

    public_address: str
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_host_key: str | None = None
    """Pinned: an SSH forward accepts this host key and no other."""


class StackOutputs(_Model):
    pods: dict[str, PodOutputs]
    nats: NatsOutputs
    nats_client_user: str
    nats_client_password: str
    urls: dict[str, str] = Field(default_factory=dict)
    grafana_admin_user: str | None = None
    grafana_admin_password: str | None = None
    hosts: dict[str, HostOutputs] = Field(default_factory=dict)
    monitoring_host: str = "local"

    def secrets(self) -> list[str]:
        """Every secret value, for redaction of anything `verify` prints."""
        values = [self.nats_client_password, self.grafana_admin_password or ""]
        for pod in self.pods.values():
            values += [pod.postgres_password, pod.redis_password]
        return [value for value in values if value]


def load_outputs(path: Path) -> StackOutputs:
    """Read `pulumi stack output --json --show-secrets` from `path`."""
    try:
        raw: Any = json.loads(path.read_text())
    except OSError as error:
        raise OutputsError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise OutputsError(
            f"{path} is not JSON ({error.msg} at line {error.lineno}); write it with"
            " `pulumi stack output --json --show-secrets > FILE`"
        ) from None
    if isinstance(raw, dict) and "[secret]" in json.dumps(raw):
        raise OutputsError(
            f"{path} holds '[secret]' placeholders: write it with --show-secrets"
        )
    try:
        return StackOutputs.model_validate(raw)
    except ValidationError as error:
        missing = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise OutputsError(
            f"{path} lacks outputs verify needs ({missing}); deploy this version of the"
            " program first (`./scripts/up.sh STACK`)"
        ) from None


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of a URL with an explicit port."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise OutputsError(f"endpoint {url!r} has no host and port")
    return parts.hostname, parts.port
