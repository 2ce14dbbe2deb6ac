"""Reproducible Python zip applications: the program's own code shipped to a Docker host.

Jobs that run beside the services (the JetStream stream job, the backup agent, the Matrix
alert relay) run the program's own Python in a container and download nothing there (a
production host may have no PyPI access, and an unpinned download at deploy time is a
supply-chain hole). They carry their pure-Python dependencies, taken file by file from
the distributions that `requirements.txt` pins into the program's own venv. Python runs a
zip file with a `__main__.py` directly, importing from inside it.

Archives are byte-for-byte reproducible (sorted entries, fixed timestamps and modes), so
their hash changes only when what they carry changes: a content hash for `triggers`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


class JobBuildError(RuntimeError):
    """The program's environment lacks what a job must carry."""


@dataclass(frozen=True)
class ZipApp:
    """A built archive and what went into it."""

    archive: bytes
    files: tuple[str, ...]
    versions: Mapping[str, str]
    """Version of each vendored distribution."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.archive).hexdigest()


def distribution_sources(name: str, top_level: str) -> tuple[str, dict[str, bytes]]:
    """The installed distribution `name`'s Python files under package `top_level`."""
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as error:
        raise JobBuildError(
            f"{name} is not installed in the program's environment; a job ships it to the"
            " Docker host. Fix: pip install -r requirements.txt"
        ) from error
    sources: dict[str, bytes] = {}
    for path in distribution.files or ():
        file = path.as_posix()
        if (file.startswith(f"{top_level}/") or file == f"{top_level}.py") and file.endswith(".py"):
            sources[file] = path.read_binary()
    if not sources:
        raise JobBuildError(f"{name} is installed without its {top_level} package")
    return distribution.version, sources


def package_sources(package: str, archive_name: str | None = None) -> dict[str, bytes]:
    """The .py files of one of the program's packages, under `archive_name` (default: its
    own dotted path, with empty parent `__init__.py` files so absolute imports work)."""
    root = importlib.resources.files(package)
    prefix = archive_name or package.replace(".", "/")
    sources = {
        f"{prefix}/{entry.name}": entry.read_bytes()
        for entry in root.iterdir()
        if entry.is_file() and entry.name.endswith(".py")
    }
    if archive_name is None:
        parts = package.split(".")
        for depth in range(1, len(parts)):
            sources.setdefault("/".join(parts[:depth]) + "/__init__.py", b"")
    return sources


def build_zipapp(
    launcher: str,
    *,
    files: Mapping[str, bytes],
    distributions: Sequence[tuple[str, str]] = (),
) -> ZipApp:
    """A zip application: `launcher` as `__main__.py`, `files`, and each vendored
    `(distribution, top-level package)`."""
    entries: dict[str, bytes] = {"__main__.py": launcher.encode(), **files}
    versions: dict[str, str] = {}
    for name, top_level in distributions:
        versions[name], sources = distribution_sources(name, top_level)
        entries.update(sources)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(entries):
            info = zipfile.ZipInfo(file, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, entries[file], compresslevel=9)
    return ZipApp(buffer.getvalue(), tuple(sorted(entries)), versions)
