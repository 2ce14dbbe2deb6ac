"""The JetStream stream job as one self-contained file: a Python zip application.

`pulumi up` runs the job (`nats/job.py`, dispatching to `nats/apply_streams.py`,
`nats/retire.py` and `nats/gate.py`) beside the cluster in a stock `python` image, carrying its one dependency,
the pure-Python nats-py package (render/zipapp.py says why jobs download nothing on the
host). The three modules keep their package path inside the archive
(`unityplan_infra/nats/...`, with empty `__init__.py` files above them), so their imports
of each other are the same in the program and in the archive; nothing else of the program
is in it.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

from unityplan_infra.render.zipapp import build_zipapp

NATS_DISTRIBUTION = "nats-py"
JOB_FILE = "streams-job.pyz"
PACKAGE = "unityplan_infra.nats"
MODULES = ("job.py", "apply_streams.py", "retire.py", "gate.py")
# The archive's entry point; the job's modules and `nats` import from the archive itself.
LAUNCHER = "import sys\n\nfrom unityplan_infra.nats.job import main\n\nsys.exit(main())\n"


@dataclass(frozen=True)
class StreamJob:
    """The built archive and what went into it."""

    archive: bytes
    nats_py_version: str
    files: tuple[str, ...]


def build_stream_job() -> StreamJob:
    """The zip application: launcher, the job's modules and the pinned nats-py sources."""
    package = importlib.resources.files(PACKAGE)
    prefix = PACKAGE.replace(".", "/")
    files = {f"{prefix}/{name}": package.joinpath(name).read_bytes() for name in MODULES}
    files |= {"unityplan_infra/__init__.py": b"", f"{prefix}/__init__.py": b""}
    app = build_zipapp(LAUNCHER, files=files, distributions=[(NATS_DISTRIBUTION, "nats")])
    return StreamJob(app.archive, app.versions[NATS_DISTRIBUTION], app.files)
