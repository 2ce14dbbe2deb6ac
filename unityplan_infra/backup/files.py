"""Copy plain files and directories (Matrix media store, signing key) into and out of staging.

Each entry has a name (its place in the staging directory) and a path on the host. Copies
keep mode, times and, when running as root, owner: Synapse runs as its own uid and must
own its media and its key after a restore; restic records the staged owner and mode.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unityplan_infra.backup.errors import BackupError, RestoreRefused

MANIFEST = "files.json"


@dataclass(frozen=True)
class FileEntry:
    name: str  # inside the staging directory, e.g. "media_store", "signing.key"
    path: str  # on the host (in the backup container)
    optional: bool = False  # absent at backup time: recorded, not an error

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith(".") or self.name == MANIFEST:
            raise ValueError(f"file entry name {self.name!r} must be a plain file name")


def is_nonempty(path: Path) -> bool:
    """A file (even an empty one) or a directory with any entry counts as data."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def stage(entries: Sequence[FileEntry], out_dir: Path) -> dict[str, int]:
    """Copy every entry into `out_dir/<name>`; returns bytes copied per present entry."""
    out_dir.mkdir(parents=True, exist_ok=True)
    present: dict[str, int] = {}
    for entry in entries:
        source = Path(entry.path)
        if not source.exists():
            if entry.optional:
                continue
            raise BackupError(f"{source} ({entry.name}) does not exist: nothing to back up. "
                              "Check the path in the backup config.")  # fmt: skip
        present[entry.name] = _copy(source, out_dir / entry.name)
    (out_dir / MANIFEST).write_text(json.dumps(sorted(present), indent=2) + "\n")
    return present


def check_restorable(entries: Sequence[FileEntry], in_dir: Path, *, force: bool) -> None:
    """RestoreRefused if a target that the backup holds is non-empty and not force."""
    occupied = [e.path for e in _restorable(entries, in_dir) if is_nonempty(Path(e.path))]
    if occupied and not force:
        raise RestoreRefused(f"{', '.join(occupied)} already hold data: the restore would "
                             "replace it. Restore with force to replace it.")  # fmt: skip


def restore(entries: Sequence[FileEntry], in_dir: Path, *, force: bool = False) -> list[str]:
    """Put every entry the backup holds back at its path; returns the names restored.

    Each target is built beside itself (`<path>.restoring`) and renamed into place, so an
    interrupted restore never leaves a half-copied media store under the real name.
    """
    check_restorable(entries, in_dir, force=force)
    for entry in _restorable(entries, in_dir):
        if os.path.ismount(entry.path):
            # The target is replaced by rename, which a mount point cannot take part in.
            raise BackupError(f"{entry.path} is a mount point: mount its parent directory "
                              "into the backup container instead")  # fmt: skip
    restored: list[str] = []
    for entry in _restorable(entries, in_dir):
        target = Path(entry.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        building = target.with_name(target.name + ".restoring")
        _remove(building)
        _copy(in_dir / entry.name, building)
        _remove(target)
        os.rename(building, target)
        restored.append(entry.name)
    return restored


def _restorable(entries: Sequence[FileEntry], in_dir: Path) -> list[FileEntry]:
    try:
        names = set(json.loads((in_dir / MANIFEST).read_text()))
    except (OSError, ValueError) as error:
        raise BackupError(f"no readable file manifest in {in_dir}: {error}") from error
    return [entry for entry in entries if entry.name in names]


def _copy(source: Path, target: Path) -> int:
    """Copy a file or a tree with mode, times and (as root) owner; returns bytes copied."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, copy_function=shutil.copy2)
        total = 0
        for root, dirs, files in os.walk(source):
            relative = Path(root).relative_to(source)
            for name in [*dirs, *files]:
                original = Path(root) / name
                _chown_like(target / relative / name, original)
                if name in files and not original.is_symlink():
                    total += original.stat().st_size
        _chown_like(target, source)
        shutil.copystat(source, target)  # copytree set the root's times before filling it
        return total
    shutil.copy2(source, target, follow_symlinks=False)
    _chown_like(target, source)
    return 0 if source.is_symlink() else source.stat().st_size


def _chown_like(target: Path, source: Path) -> None:
    if os.geteuid() == 0:
        info = source.lstat()
        os.chown(target, info.st_uid, info.st_gid, follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
