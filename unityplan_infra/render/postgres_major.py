"""A PostgreSQL major upgrade never crash-loops a pod: the guard that runs before the
PostgreSQL container is created or replaced.

A data directory written by one major version does not start under another
(`PG_VERSION` names its major; the server refuses any other). Without a check, bumping
`images.postgres` across majors would replace every pod's container with one that fails
at start, in the same `up`. The guard reads `PG_VERSION` from the pod's volume with the
image about to run and stops the deploy, before anything is replaced, with the way forward.
An empty volume (a new pod) passes.
"""

from __future__ import annotations

import re
import shlex

_MAJOR = re.compile(r"^(\d+)(?:[.-]|$)")

# Reads PG_VERSION's content on stdin; $1 = the image's major, $2 = the pod, $3 = the image.
CHECK_SCRIPT = r"""set -eu
found="$(tr -d ' \n\r')"
if [ -z "$found" ] || [ "$found" = "$1" ]; then
  exit 0
fi
echo "pod $2: the PostgreSQL data was written by major $found, the image $3 is major $1:" >&2
echo "the server would refuse the data directory. Nothing was replaced. Fix: keep" >&2
echo "images.postgres on major $found, or move the data across majors: back it up" >&2
echo "(./scripts/restore.sh needs backups.enabled), deploy the new major on an empty" >&2
echo "volume and restore into it (README, Backups and restore)." >&2
exit 1
"""


def postgres_major(image: str) -> str:
    """The major version of a `postgres:<tag>` image reference ("16" of 16.6-bookworm)."""
    tag = image.split("@", 1)[0].rsplit(":", 1)[1]
    found = _MAJOR.match(tag)
    if found is None:
        raise ValueError(f"{image}: the tag does not start with a PostgreSQL major version")
    return found.group(1)


def guard_command(image: str, volume: str, pod: str) -> str:
    """Shell on the pod's host: `PG_VERSION` of `volume`, read by `image`, then the check."""
    read = (
        f"docker run --rm --entrypoint sh -v {shlex.quote(volume)}:/data {shlex.quote(image)}"
        " -c 'cat /data/PG_VERSION 2>/dev/null || true'"
    )
    check = " ".join(shlex.quote(a) for a in (postgres_major(image), pod, image))
    return f"{read} | sh -c {shlex.quote(CHECK_SCRIPT)} guard {check}"
