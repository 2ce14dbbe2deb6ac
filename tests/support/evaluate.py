"""Evaluate the Pulumi program under mocks in whatever Python runs this file.

Run by tests/support/runtime_venv.py with the python of a venv built from requirements.txt
alone, the way `pulumi up` runs the program. Reads {"stack", "config"} as JSON on stdin;
prints a JSON summary of the graph. A failing program exits non-zero with its traceback on
stderr: an import that requirements.txt does not satisfy shows up here, not at deploy time.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.mocks import run_program


def main() -> int:
    request = json.load(sys.stdin)
    graph = run_program(request["config"], stack=request["stack"])
    summary = {
        "resources": len(graph.resources),
        "types": dict(Counter(resource.type for resource in graph.resources)),
        "exports": sorted(graph.exports),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
