"""The program evaluates on what `pulumi up` installs: requirements.txt and nothing else.

The last round's lesson: the suite ran in the dev venv and hid an import (nats-py) that only
requirements-dev.txt installed, so `pulumi up` died at import. Here both stacks' programs
run under mocks in a subprocess whose python comes from a venv built from requirements.txt
alone (tests/support/runtime_venv.py), and the graphs must equal the dev venv's.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.mocks import run_program
from tests.support.runtime_venv import ROOT, evaluate, runtime_python, summary
from tests.support.stackfile import stack_config

STACKS = ("dev", "nordic")


def dev_only_modules() -> dict[str, str]:
    """Top-level modules of packages that requirements-dev.txt adds to requirements.txt."""
    runtime = _names(ROOT / "requirements.txt")
    dev = _names(ROOT / "requirements-dev.txt") - runtime
    modules: dict[str, str] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            if _normal(distribution) in dev and not module.startswith("_"):
                modules[module] = distribution
    return modules


def _names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(_normal(re.split(r"[\[=<>!~ ;]", line)[0]))
    return names


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stack", STACKS)
def test_program_evaluates_in_a_venv_of_requirements_txt_alone(stack: str) -> None:
    result = evaluate(stack, stack_config(stack))
    assert result.returncode == 0, f"the program failed where `pulumi up` runs it:\n{result.stderr}"
    in_runtime = summary(result)
    in_dev = run_program(stack_config(stack), stack=stack)
    assert in_runtime["resources"] == len(in_dev.resources) > 100
    assert in_runtime["types"] == dict(Counter(r.type for r in in_dev.resources))
    assert in_runtime["exports"] == sorted(in_dev.exports)


@pytest.mark.timeout(900)
def test_the_runtime_venv_lacks_every_dev_only_package() -> None:
    """The control: the runtime venv would catch an import of a dev-only package (as it
    would have caught today's `import nats` before nats-py moved to requirements.txt)."""
    modules = dev_only_modules()
    assert {"pytest", "ruamel", "mypy", "synapse"} <= set(modules), modules
    probe = "import importlib.util, sys; print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    result = subprocess.run(
        [str(runtime_python()), "-I", "-c", probe, *sorted(modules)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "[]", f"dev-only packages leak into the runtime venv: {result.stdout}"


def test_the_program_imports_no_dev_only_package() -> None:
    """Static companion: no module of the program imports a package only the tests install."""
    forbidden = dev_only_modules()
    sources = [ROOT / "__main__.py", *sorted((ROOT / "unityplan_infra").rglob("*.py"))]
    offenders = []
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{source.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in forbidden]  # fmt: skip
    assert offenders == []
    assert sys.prefix != sys.base_prefix  # the suite itself runs in a venv (the dev one)
