"""What a check is, what it finds, and where it sends its probes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit, urlunsplit

from unityplan_infra.verify.outputs import StackOutputs

MESH = "mesh"  # the scope of a check about the whole stack rather than one pod


@dataclass(frozen=True)
class Finding:
    """The result of one check: what it saw and, when it failed, the likely cause and fix."""

    check: str
    scope: str
    ok: bool
    saw: str
    cause: str = ""
    fix: str = ""
    seconds: float = 0.0


def passed(check: str, scope: str, saw: str) -> Finding:
    return Finding(check, scope, True, saw)


def failed(check: str, scope: str, saw: str, cause: str, fix: str) -> Finding:
    return Finding(check, scope, False, saw, cause, fix)


@dataclass(frozen=True)
class Check:
    """A probe of one service for one scope; it returns one finding or several."""

    service: str
    """postgres, redis, nats, ipfs, matrix, prometheus or grafana (for --only / --skip)."""
    name: str
    scope: str
    probe: Callable[[], list[Finding]]
    unreachable_cause: str
    unreachable_fix: str


@dataclass(frozen=True)
class Context:
    """The outputs, the probe timeout, and how to reach an address the outputs name."""

    outputs: StackOutputs
    timeout: float
    forwards: Mapping[tuple[str, str, int], tuple[str, int]] = field(default_factory=dict)
    """(host name, address, port) -> local (address, port): SSH forwards (multi-host)."""

    def address(self, host: str, url: str) -> tuple[str, int]:
        """Where to connect for `url`, an endpoint of `host` (`local` in single-host)."""
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"endpoint {url!r} has no host and port")
        return self.forwards.get((host, parts.hostname, parts.port), (parts.hostname, parts.port))

    def url(self, host: str, url: str) -> str:
        """`url` rewritten to go through its forward, if it has one."""
        address, port = self.address(host, url)
        parts = urlsplit(url)
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        return urlunsplit(parts._replace(netloc=netloc))


def down_cause(container: str) -> str:
    return f"{container} is not running, or its port is not published"


def down_fix(container: str) -> str:
    return f"docker logs {container}; then `./scripts/up.sh STACK`"


def per_pod(
    context: Context, service: str, name: str, probe: Callable[[Context, str], list[Finding]]
) -> list[Check]:
    """One check of `service` per pod; a probe that cannot connect means the pod's
    `service-<service>-<code>` container is down or unpublished."""
    return [
        Check(service, name, code, partial(probe, context, code),
              down_cause(f"service-{service}-{code}"), down_fix(f"service-{service}-{code}"))
        for code in context.outputs.pods
    ]  # fmt: skip
