"""Run `__main__.py` under Pulumi mocks and capture the resource graph.

Every registration is recorded as the engine would receive it: type, name, inputs, the
outputs the mocks answer, ID, URN, provider, the URNs it waits for and its lifecycle
options. Provider-computed outputs get deterministic fake values derived from the resource
name alone, so derived keys are stable across runs (whatever order the SDK's worker threads
register in) and differ between resources. The stack's exports are resolved to plain values,
each export's secret marking kept beside it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import runpy
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pulumi
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from pulumi.runtime import config as runtime_config
from pulumi.runtime.mocks import MockMonitor

from tests.support import engine
from tests.support.secret_values import is_secret, unwrap

__all__ = ["Graph", "Resource", "is_secret", "run_program", "unwrap"]

# No imports from the dev-only test stack here: tests/support/evaluate.py runs this module in
# a venv built from requirements.txt alone.
ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "__main__.py"
STACK_TYPE = "pulumi:pulumi:Stack"
STACK_REFERENCE_TYPE = "pulumi:pulumi:StackReference"
CONTAINER_TYPE = engine.CONTAINER
NETWORK_TYPE = engine.NETWORK


@dataclass
class Resource:
    """One RegisterResource request, with what the mocks answered for it."""

    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    id: str
    urn: str
    custom: bool
    provider: str | None
    """"<provider urn>::<provider id>"; None when the resource uses the default provider."""
    dependencies: list[str]
    """URNs of `depends_on` and of every resource an input comes from (the SDK merges both)."""
    property_dependencies: dict[str, list[str]]
    delete_before_replace: bool
    retain_on_delete: bool
    ignore_changes: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    protect: bool = False

    @property
    def provider_urn(self) -> str | None:
        return self.provider.rsplit("::", 1)[0] if self.provider else None

    def of_pods(self, codes: tuple[str, ...]) -> bool:
        """Whether the resource belongs to one of the pods `codes`, by its (container) name."""
        name = str(self.inputs.get("name", self.name))
        return any(f"-{code}" in name or name.startswith(f"{code}-") for code in codes)

    def edges(self) -> set[str]:
        """URNs this resource waits for: depends_on, inputs from others, its provider."""
        found = set(self.dependencies)
        for urns in self.property_dependencies.values():
            found |= set(urns)
        if self.provider_urn:
            found.add(self.provider_urn)
        return found


@dataclass
class Graph:
    """What one program run registered (duplicates included) and exported."""

    resources: list[Resource] = field(default_factory=list)
    exports: dict[str, Any] = field(default_factory=dict)
    """Exports resolved to plain values (secrets unwrapped); empty if the program failed."""
    secret_exports: dict[str, bool] = field(default_factory=dict)
    """Whether each top-level export is marked secret."""

    def of_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]

    def named(self, name: str) -> Resource:
        (found,) = [r for r in self.resources if r.name == name]
        return found

    def containers(self) -> dict[str, Resource]:
        """Docker containers by container name (names repeat across hosts in multi-host)."""
        return {r.inputs["name"]: r for r in self.of_type(CONTAINER_TYPE)}

    def by_urn(self) -> dict[str, list[Resource]]:
        """Registrations by URN; a URN registered twice (the engine rejects it) lists both."""
        index: dict[str, list[Resource]] = {}
        for resource in self.resources:
            index.setdefault(resource.urn, []).append(resource)
        return index

    def ancestors(self, resource: Resource) -> set[str]:
        """Every URN `resource` waits for, directly or transitively."""
        index = self.by_urn()
        seen = resource.edges()
        todo = list(seen)
        while todo:
            for current in index.get(todo.pop(), []):
                for edge in current.edges() - seen:
                    seen.add(edge)
                    todo.append(edge)
        return seen

    def steps(self, prior: Graph) -> dict[str, engine.Step]:
        """What the engine would do to each custom resource of this run, `prior` being the
        state: "same", "update" (a command runs again) or "replace"; "create" for a new one."""
        old = {(r.type, r.name): r for r in prior.resources if r.custom}
        planned: dict[str, engine.Step] = {}
        for resource in self.resources:
            if not resource.custom:
                continue
            before = old.get((resource.type, resource.name))
            if before is None:
                planned[resource.urn] = "create"
                continue
            changed = engine.changed_keys(
                resource.type, before.inputs, before.outputs, resource.inputs,
                resource.ignore_changes,
            )  # fmt: skip
            planned[resource.urn] = engine.step(resource.type, changed, resource.replace_on_changes)
        return planned

    def changed_since(self, prior: Graph) -> list[Resource]:
        """The custom resources this run updates (a command runs again) or replaces."""
        return [self.by_urn()[urn][0] for urn, step in self.steps(prior).items()
                if step in ("update", "replace")]  # fmt: skip

    def depends_on(self, resource: Resource, other: Resource) -> bool:
        """Whether `resource` waits for `other`, directly or through other resources."""
        return other.urn in self.ancestors(resource)


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@cache
def ed25519_pair(seed: bytes) -> tuple[str, str]:
    """A real Ed25519 key pair from `seed`, OpenSSH formats. Cached: the private key format
    holds a random check number, and a run must see the same text for the same key."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private, public + "\n"


def fake_outputs(type_token: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs as the provider reads them back, plus the outputs it would compute (derived
    from the name alone)."""
    outputs = engine.read_back(type_token, inputs)
    seed = _digest(name)
    if type_token == "random:index/randomPassword:RandomPassword":
        outputs["result"] = base64.b32encode(seed).decode().rstrip("=")[: int(inputs["length"])]
    elif type_token == "random:index/randomBytes:RandomBytes":
        raw = (seed * 4)[: int(inputs["length"])]
        outputs |= {"base64": base64.b64encode(raw).decode(), "hex": raw.hex()}
    elif type_token == "tls:index/privateKey:PrivateKey":
        outputs["privateKeyPem"] = f"-----BEGIN PRIVATE KEY-----\n{seed.hex()}\n"
        if inputs.get("algorithm") == "ED25519":
            outputs["privateKeyOpenssh"], outputs["publicKeyOpenssh"] = ed25519_pair(seed)
    elif type_token == "tls:index/selfSignedCert:SelfSignedCert":
        outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\n{seed.hex()}\n"
    elif type_token == "hcloud:index/server:Server":
        # 198.18.0.0/15 (RFC 2544): by name, not by arrival order, so runs agree.
        outputs["ipv4Address"] = f"198.{18 + seed[0] % 2}.{seed[1]}.{1 + seed[2] % 254}"
    elif type_token.startswith("command:"):
        outputs["stdout"] = "12D3KooW" + base64.b32encode(seed).decode()[:44]
    elif type_token == "docker:index/remoteImage:RemoteImage":
        outputs["imageId"] = f"sha256:{seed.hex()}"
    return outputs


def fake_id(type_token: str, name: str) -> str:
    if type_token.startswith("hcloud:"):
        # Hetzner IDs are numbers; the program converts some of them with int().
        return str(int.from_bytes(_digest(name)[:3], "big"))
    return f"{name}-id"


class GraphMocks(pulumi.runtime.Mocks):
    """Answers registrations with fake outputs and leaves each answer for the monitor.

    `new_resource` runs inside `MockMonitor.RegisterResource`, on the thread that registers:
    the answer waits in that thread's storage under (type, name) until the monitor takes it.

    With `prior` (the graph of an earlier run, standing for the stack's state), a resource
    the engine would leave alone ("same": no change the provider would see, after
    `ignore_changes`) gets its old ID and outputs back, as in a real `up`.
    """

    def __init__(self, prior: Graph | None = None) -> None:
        self._local = threading.local()
        self._prior = {(r.type, r.name): r for r in prior.resources} if prior else {}
        # What a stack reference to this very stack reads: the prior run's exports.
        self._stack_outputs = dict(prior.exports) if prior else {}

    def _answers(self) -> dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
        answers: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] | None
        answers = getattr(self._local, "answers", None)
        if answers is None:
            answers = self._local.answers = {}
        return answers

    def expect_options(self, ignore_changes: list[str], replace_on_changes: list[str]) -> None:
        """The options of the registration this thread is about to make."""
        self._local.ignore_changes = ignore_changes
        self._local.replace_on_changes = replace_on_changes

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.typ == STACK_REFERENCE_TYPE:  # a read, not a registration: nothing recorded
            name = args.resource_id or args.inputs.get("name", args.name)
            return name, {"name": name, "outputs": self._stack_outputs, "secretOutputNames": []}
        inputs = dict(args.inputs)
        old = self._prior.get((args.typ, args.name))
        if old is not None:
            ignored = getattr(self._local, "ignore_changes", [])
            for key in ignored:  # the engine keeps the old value of an ignored input
                if key in old.inputs:
                    inputs[key] = old.inputs[key]
            changed = engine.changed_keys(args.typ, old.inputs, old.outputs, inputs, ignored)
            if not changed:
                self._answers()[(args.typ, args.name)] = (inputs, old.outputs)
                return old.id, old.outputs
            outputs = fake_outputs(args.typ, args.name, inputs)
            self._answers()[(args.typ, args.name)] = (inputs, outputs)
            # An update keeps the ID; a replacement is a new object with a new ID.
            replaced = engine.step(args.typ, changed, self._replace_on_changes()) == "replace"
            return (f"{old.id}-replaced" if replaced else old.id), outputs
        outputs = fake_outputs(args.typ, args.name, inputs)
        self._answers()[(args.typ, args.name)] = (inputs, outputs)
        return fake_id(args.typ, args.name), outputs

    def _replace_on_changes(self) -> list[str]:
        return list(getattr(self._local, "replace_on_changes", []))

    def take(self, type_token: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Inputs and outputs of the registration of (type, name) this thread just made."""
        return self._answers().pop((type_token, name))

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        if args.token == "hcloud:index/getSshKey:getSshKey":
            name = args.args["name"]
            return {"id": int.from_bytes(_digest(name)[:3], "big"), "name": name}, []
        return {}, []


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, recording every registration (duplicates included) in a Graph.

    The SDK calls it from several worker threads. Each record pairs a request with the mocks'
    answer by (type, name) on the calling thread (never by position in a shared list), and is
    appended under a lock.
    """

    def __init__(self, mocks: GraphMocks, graph: Graph) -> None:
        super().__init__(mocks)
        self.answers = mocks
        self.graph = graph
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:
        self.answers.expect_options(list(request.ignoreChanges), list(request.replaceOnChanges))
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type == STACK_TYPE:  # answered by the monitor, not the mocks
            return response
        inputs, outputs = self.answers.take(request.type, request.name)
        resource = Resource(
            type=request.type,
            name=request.name,
            inputs=inputs,
            outputs=outputs,
            id=response.id,
            urn=response.urn,
            custom=bool(request.custom),
            provider=request.provider or None,
            dependencies=list(request.dependencies),
            property_dependencies={
                key: list(deps.urns) for key, deps in request.propertyDependencies.items()
            },
            delete_before_replace=bool(request.deleteBeforeReplace),
            retain_on_delete=bool(request.retainOnDelete),
            ignore_changes=list(request.ignoreChanges),
            replace_on_changes=list(request.replaceOnChanges),
            protect=bool(request.protect),
        )
        with self._lock:
            self.graph.resources.append(resource)
        return response

    def ReadResource(self, request: Any) -> Any:
        """A read (the stack reference to itself): recorded as a resource that waits for
        nothing, so graphs that follow edges know it."""
        response = super().ReadResource(request)  # type: ignore[no-untyped-call]
        resource = Resource(
            type=request.type, name=request.name, inputs={}, outputs={}, id=request.id,
            urn=response.urn, custom=True, provider=request.provider or None, dependencies=[],
            property_dependencies={}, delete_before_replace=False, retain_on_delete=False,
        )  # fmt: skip
        with self._lock:
            self.graph.resources.append(resource)
        return response

    def sort_records(self) -> None:
        """Order the records by URN: the threads' order of registration varies between runs."""
        with self._lock:
            self.graph.resources.sort(key=lambda resource: (resource.urn, resource.id))


def run_program(
    config: dict[str, str],
    stack: str = "dev",
    graph: Graph | None = None,
    prior: Graph | None = None,
) -> Graph:
    """Run the program with `config` (already encoded as Pulumi passes it). Pass `graph` to
    inspect what was registered even when the program raises, and `prior` to run it again
    against the state an earlier run left (see `Graph.steps`)."""
    graph = graph if graph is not None else Graph()
    # The SDK runs on the current event loop; a test that used asyncio.run() leaves none.
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = GraphMocks(prior)
    monitor = RecordingMonitor(mocks, graph)
    pulumi.runtime.set_mocks(
        mocks, project="unityplan-infra", stack=stack, preview=False, monitor=monitor
    )
    runtime_config.set_all_config(config)
    captured: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    secret: dict[str, bool] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[Any]:
        original = pulumi.export

        def export(name: str, value: Any) -> None:
            captured[name] = value
            original(name, value)

        pulumi.export = export
        try:
            runpy.run_path(str(MAIN), run_name="__main__")
        finally:
            pulumi.export = original

        def store(values: list[Any]) -> None:
            for name, value, marked in values:
                resolved[name] = value
                secret[name] = marked

        # Output.all resolves nested dicts and lists of Outputs; `unsecret` lets the test
        # read the values while `is_secret` keeps the marking.
        return pulumi.Output.all(
            *(
                pulumi.Output.all(
                    name,
                    pulumi.Output.unsecret(pulumi.Output.from_input(value)),
                    pulumi.Output.from_input(value).is_secret(),
                )
                for name, value in captured.items()
            )
        ).apply(store)

    try:
        program()
    finally:
        monitor.sort_records()
    graph.exports = resolved
    graph.secret_exports = secret
    return graph
