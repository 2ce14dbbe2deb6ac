"""The JetStream stream job as one self-contained file: a Python zip application.

`pulumi up` runs `nats/apply_streams.py` beside the cluster in a stock `python` image,
carrying its one dependency, the pure-Python nats-py package (render/zipapp.py says why
jobs download nothing on the host).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

from unityplan_infra.render.zipapp import build_zipapp

NATS_DISTRIBUTION = "nats-py"
JOB_FILE = "streams-job.pyz"
# The archive's entry point; `apply_streams` and `nats` import from the archive itself.
LAUNCHER = "import sys\n\nfrom apply_streams import main\n\nsys.exit(main())\n"


@dataclass(frozen=True)
class StreamJob:
    """The built archive and what went into it."""

    archive: bytes
    nats_py_version: str
    files: tuple[str, ...]


def build_stream_job() -> StreamJob:
    """The zip application: launcher, apply_streams.py and the pinned nats-py sources."""
    script = importlib.resources.files("unityplan_infra.nats").joinpath("apply_streams.py")
    app = build_zipapp(
        LAUNCHER,
        files={"apply_streams.py": script.read_bytes()},
        distributions=[(NATS_DISTRIBUTION, "nats")],
    )
    return StreamJob(app.archive, app.versions[NATS_DISTRIBUTION], app.files)
