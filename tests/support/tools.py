"""Run a checker from a Debian package (promtool, cloud-init) and keep all it printed."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


def run_checker(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion (30 s at most); stdout and stderr merged, exit code kept."""
    return subprocess.run(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30,
        check=False,
    )  # fmt: skip
