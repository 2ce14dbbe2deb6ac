"""Run `__main__.py` under Pulumi mocks and capture the resource graph.

Provider-computed outputs get deterministic fake values (random results derived from the
resource name), so derived keys are stable across runs and differ between resources.
"""

from __future__ import annotations

import base64
import hashlib
import runpy
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pulumi.runtime.mocks import MockMonitor

from tests.support.stackfile import ROOT

MAIN = ROOT / "__main__.py"


SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def unwrap(value: Any) -> Any:
    """A mock input with its secret marker removed (recursively)."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@dataclass
class Options:
    """Resource options the engine sees (recorded from the register request)."""

    urn: str
    dependencies: list[str]
    delete_before_replace: bool
    retain_on_delete: bool


@dataclass
class Resource:
    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    provider: str | None
    options: Options | None = None


@dataclass
class Graph:
    """What one program run registered."""

    resources: list[Resource] = field(default_factory=list)
    exports: dict[str, Any] = field(default_factory=dict)

    def by_urn(self) -> dict[str, Resource]:
        return {r.options.urn: r for r in self.resources if r.options is not None}

    def depends_on(self, resource: Resource, other: Resource) -> bool:
        """Whether `resource` waits for `other`, directly or through other resources."""
        assert resource.options is not None and other.options is not None
        index, seen = self.by_urn(), set()
        pending = list(resource.options.dependencies)
        while pending:
            urn = pending.pop()
            if urn == other.options.urn:
                return True
            if urn in seen or urn not in index:
                continue
            seen.add(urn)
            options = index[urn].options
            pending.extend(options.dependencies if options else [])
        return False

    def of_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]

    def named(self, name: str) -> Resource:
        (found,) = [r for r in self.resources if r.name == name]
        return found

    def containers(self) -> dict[str, Resource]:
        return {r.inputs["name"]: r for r in self.of_type("docker:index/container:Container")}


class GraphMocks(pulumi.runtime.Mocks):
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.server_count = 0

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        seed = _digest(args.name)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = (
                base64.b32encode(seed).decode().rstrip("=")[: int(args.inputs["length"])]
            )
        elif args.typ == "random:index/randomBytes:RandomBytes":
            raw = (seed * 4)[: int(args.inputs["length"])]
            outputs |= {"base64": base64.b64encode(raw).decode(), "hex": raw.hex()}
        elif args.typ == "tls:index/privateKey:PrivateKey":
            outputs["privateKeyPem"] = f"-----BEGIN PRIVATE KEY-----\n{seed.hex()}\n"
        elif args.typ == "tls:index/selfSignedCert:SelfSignedCert":
            outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\n{seed.hex()}\n"
        elif args.typ == "hcloud:index/server:Server":
            self.server_count += 1
            outputs["ipv4Address"] = f"203.0.113.{10 + self.server_count}"
        elif args.typ.startswith("command:"):
            outputs["stdout"] = "12D3KooW" + base64.b32encode(seed).decode()[:44]
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = f"sha256:{seed.hex()}"
        resource = Resource(args.typ, args.name, dict(args.inputs), outputs, args.provider)
        self.graph.resources.append(resource)
        if args.typ.startswith("hcloud:"):
            # Hetzner IDs are numbers; the program converts some of them with int().
            return str(int.from_bytes(seed[:3], "big")), outputs
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


class RecordingMonitor(MockMonitor):
    """Records what the mocks do not see: dependencies and lifecycle options."""

    def __init__(self, mocks: GraphMocks) -> None:
        super().__init__(mocks)
        self.options: dict[tuple[str, str], Options] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        # Registrations run on several threads: key by name, attach after the run.
        self.options[(request.type, request.name)] = Options(
            urn=response.urn,
            dependencies=list(request.dependencies),
            delete_before_replace=bool(request.deleteBeforeReplace),
            retain_on_delete=bool(request.retainOnDelete),
        )
        return response


def run_program(config: dict[str, str], stack: str = "dev", graph: Graph | None = None) -> Graph:
    """Run the program with `config` (already encoded as Pulumi passes it). Pass `graph` to
    inspect what was registered even when the program raises."""
    graph = graph if graph is not None else Graph()
    mocks = GraphMocks(graph)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(
        mocks, project="unityplan-infra", stack=stack, preview=False, monitor=monitor
    )
    runtime_config.set_all_config(config)
    captured: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> None:
        original = pulumi.export

        def export(name: str, value: Any) -> None:
            captured[name] = value
            original(name, value)

        pulumi.export = export  # type: ignore[assignment]
        try:
            runpy.run_path(str(MAIN), run_name="__main__")
        finally:
            pulumi.export = original  # type: ignore[assignment]

    try:
        program()
    finally:
        for resource in graph.resources:
            resource.options = monitor.options.get((resource.type, resource.name))
    graph.exports = captured
    return graph
