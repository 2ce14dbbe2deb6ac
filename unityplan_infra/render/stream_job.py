"""The JetStream stream job as one self-contained file: a Python zip application.

`pulumi up` runs `nats/apply_streams.py` beside the cluster in a stock `python` image. The
job must not download anything there (a production Docker host may have no PyPI access,
and an unpinned download at deploy time is a supply-chain hole), so it carries its one
dependency: the pure-Python nats-py package, taken file by file from the distribution that
`requirements.txt` pins and installs into the program's own venv. Python runs a zip file
with a `__main__.py` directly (`python streams-job.pyz`), importing from inside it.

The archive is byte-for-byte reproducible (sorted entries, fixed timestamps and modes), so
its hash only changes when the script or the pinned nats-py changes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import io
import zipfile
from dataclasses import dataclass

NATS_DISTRIBUTION = "nats-py"
JOB_FILE = "streams-job.pyz"
# The archive's entry point; `apply_streams` and `nats` import from the archive itself.
LAUNCHER = "import sys\n\nfrom apply_streams import main\n\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


class JobBuildError(RuntimeError):
    """The program's environment lacks what the job must carry."""


@dataclass(frozen=True)
class StreamJob:
    """The built archive and what went into it."""

    archive: bytes
    nats_py_version: str
    files: tuple[str, ...]


def _nats_py_sources() -> tuple[str, dict[str, bytes]]:
    try:
        distribution = importlib.metadata.distribution(NATS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise JobBuildError(
            f"{NATS_DISTRIBUTION} is not installed in the program's environment; the stream"
            " job ships it to the Docker host. Fix: pip install -r requirements.txt"
        ) from error
    sources: dict[str, bytes] = {}
    for path in distribution.files or ():
        name = path.as_posix()
        if name.startswith("nats/") and name.endswith(".py"):
            sources[name] = path.read_binary()
    if "nats/__init__.py" not in sources:
        raise JobBuildError(f"{NATS_DISTRIBUTION} is installed without its nats/ package")
    return distribution.version, sources


def build_stream_job() -> StreamJob:
    """The zip application: launcher, apply_streams.py and the pinned nats-py sources."""
    version, sources = _nats_py_sources()
    script = importlib.resources.files("unityplan_infra.nats").joinpath("apply_streams.py")
    entries = {
        "__main__.py": LAUNCHER.encode(),
        "apply_streams.py": script.read_bytes(),
        **sources,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, entries[name], compresslevel=9)
    return StreamJob(buffer.getvalue(), version, tuple(sorted(entries)))
