"""Run `__main__.py` under Pulumi mocks and also record what the engine would be told about
ordering: each resource's URN, its `depends_on` and property dependencies (as URNs), and its
provider. `tests.support.mocks.Graph` carries inputs and outputs; this adds the edges.

The stack's exports are resolved to plain values (secrets unwrapped) so tests can look for
leaked material in them, and each export's secret marking is kept beside it.
"""

from __future__ import annotations

import runpy
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pulumi.runtime.mocks import MockMonitor

from tests.support.mocks import MAIN, Graph, GraphMocks

# How the mock monitor hands a secret value to `Mocks.new_resource` (Pulumi's secret sig).
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def is_secret_value(value: Any) -> bool:
    """Whether a mock input is a secret-wrapped value."""
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def plain(value: Any) -> Any:
    """`value` with every secret wrapper (at any depth) replaced by what it wraps."""
    if is_secret_value(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


@dataclass
class Registration:
    """What one RegisterResource request said about ordering."""

    urn: str
    type: str
    name: str
    custom: bool
    provider: str  # "<provider urn>::<provider id>", or "" (default provider)
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]

    @property
    def provider_urn(self) -> str | None:
        return self.provider.rsplit("::", 1)[0] if self.provider else None

    def edges(self) -> set[str]:
        """URNs this resource waits for: depends_on, inputs from others, its provider."""
        found = set(self.dependencies)
        for urns in self.property_dependencies.values():
            found |= set(urns)
        if self.provider_urn:
            found.add(self.provider_urn)
        return found


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, remembering every registration (duplicates included)."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        self.registrations.append(
            Registration(
                urn=response.urn,
                type=request.type,
                name=request.name,
                custom=bool(request.custom),
                provider=request.provider,
                dependencies=list(request.dependencies),
                property_dependencies={
                    key: list(deps.urns) for key, deps in request.propertyDependencies.items()
                },
            )
        )
        return response


@dataclass
class DepGraph:
    """A program run: its resources (with inputs) and the ordering edges between them."""

    graph: Graph
    registrations: list[Registration]
    exports: dict[str, Any] = field(default_factory=dict)
    """Exports resolved to plain values."""
    secret_exports: dict[str, bool] = field(default_factory=dict)
    """Whether each top-level export is marked secret."""

    def by_name(self, name: str) -> Registration:
        (found,) = [r for r in self.registrations if r.name == name]
        return found

    def by_urn(self) -> dict[str, Registration]:
        return {r.urn: r for r in self.registrations}

    def ancestors(self, urn: str) -> set[str]:
        """Every URN `urn` waits for, directly or transitively."""
        index = self.by_urn()
        seen: set[str] = set()
        todo = [urn]
        while todo:
            current = index.get(todo.pop())
            if current is None:
                continue
            for edge in current.edges() - seen:
                seen.add(edge)
                todo.append(edge)
        return seen


def run_program_with_deps(config: dict[str, str], stack: str = "dev") -> DepGraph:
    """Like `tests.support.mocks.run_program`, recording dependencies and resolved exports."""
    graph = Graph()
    mocks = GraphMocks(graph)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(
        mocks, project="unityplan-infra", stack=stack, preview=False, monitor=monitor
    )
    runtime_config.set_all_config(config)
    captured: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    secret: dict[str, bool] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        original = pulumi.export

        def export(name: str, value: Any) -> None:
            captured[name] = value
            original(name, value)

        pulumi.export = export  # type: ignore[assignment]
        try:
            runpy.run_path(str(MAIN), run_name="__main__")
        finally:
            pulumi.export = original  # type: ignore[assignment]

        def store(values: list[Any]) -> None:
            for name, value, is_secret in values:
                resolved[name] = value
                secret[name] = is_secret

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

    program()
    graph.exports = captured
    return DepGraph(graph, monitor.registrations, resolved, secret)
