"""The nats-server releases this machine has: the venv's (first on PATH, tests/conftest.py)
and every one tests/support/nats_versions.sh installed beside it (<prefix>/<version>/).

Why: the retire and rollout-gate tests run on every release at hand, oldest and newest at
least, whichever the venv pins at the time (the image's minor) and whichever the install
script adds, so that a version bump of either changes what they cover, not whether they run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

PREFIX = Path(os.environ.get("UNITYPLAN_NATS_VERSIONS", "/opt/unityplan-nats"))
INSTALL = "tests/support/nats_versions.sh"


def _version(binary: Path) -> str | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().removeprefix("nats-server: v") or None


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split("."))


@cache
def releases() -> dict[str, Path]:
    """{version: binary}, oldest first."""
    candidates = [Path(found)] if (found := shutil.which("nats-server")) else []
    if PREFIX.is_dir():
        candidates += sorted(PREFIX.glob("*/nats-server"))
    found_versions: dict[str, Path] = {}
    for binary in candidates:
        version = _version(binary)
        if version and version not in found_versions:
            found_versions[version] = binary
    return dict(sorted(found_versions.items(), key=lambda item: _key(item[0])))


def oldest_and_newest() -> tuple[tuple[str, Path], tuple[str, Path]]:
    """The oldest and the newest release at hand; AssertionError (with the fix) if fewer
    than two minors are."""
    found = list(releases().items())
    if len({_key(version)[:2] for version, _ in found}) < 2:
        raise AssertionError(f"two nats-server minors needed, found {[v for v, _ in found]};"
                             f" run {INSTALL} (scripts/test.sh does)")  # fmt: skip
    return found[0], found[-1]
