"""A venv built from requirements.txt alone: what `pulumi up` gives the program.

The test suite runs in the dev venv (requirements-dev.txt), which has every package the
program might forget to declare. Tests that must see the program as a deploy sees it run
it with this venv's python instead. The venv is built once and cached under a name derived
from requirements.txt and the Python version, so an unchanged requirements.txt costs
nothing on the next run and a changed one gets a fresh venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements.txt"
CACHE = Path(os.environ.get("UNITYPLAN_VENV_CACHE", Path.home() / ".cache" / "unityplan-infra"))
EVALUATE = ROOT / "tests" / "support" / "evaluate.py"


def venv_key() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def runtime_python() -> Path:
    """The python of the cached runtime venv, built on first use (under a lock)."""
    venv = CACHE / f"runtime-venv-{venv_key()}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "runtime-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            # The base interpreter, not the dev venv's: nothing of the dev venv may leak in.
            base = Path(sys.base_prefix) / "bin" / "python3"
            subprocess.run([str(base), "-m", "venv", str(venv)], check=True, timeout=120)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "-r", str(REQUIREMENTS)],
                check=True, timeout=900,
            )  # fmt: skip
            done.write_text(REQUIREMENTS.read_text())
    return python


def evaluate(stack: str, config: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the program under mocks with the runtime venv's python (isolated mode: neither
    PYTHONPATH nor the user's site-packages can lend it a package)."""
    return subprocess.run(
        [str(runtime_python()), "-I", str(EVALUATE)],
        input=json.dumps({"stack": stack, "config": config}),
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded
