"""The Matrix alert relay as one self-contained file: a Python zip application.

Like the stream job (render/stream_job.py), the relay runs in a stock pinned `python` image
and downloads nothing: it is the standard library only, so the archive is just the
program's own `unityplan_infra/alerting` package, packed as the top-level package
`alerting` (its imports are relative) behind a two-line launcher:

    python /app/matrix-relay.pyz serve          # the relay (MATRIX_RELAY_* variables)
    python /app/matrix-relay.pyz bootstrap < spec.json
    python /app/matrix-relay.pyz healthcheck    # container healthcheck

The archive is byte-for-byte reproducible (sorted entries, fixed timestamps and modes), so
its hash changes only when the relay's code does: a content hash for `triggers`.
"""

from __future__ import annotations

from unityplan_infra.render.zipapp import ZipApp, build_zipapp, package_sources

RELAY_FILE = "matrix-relay.pyz"
PACKAGE = "unityplan_infra.alerting"
ARCHIVE_PACKAGE = "alerting"  # the package's name inside the archive
LAUNCHER = "import sys\n\nfrom alerting.cli import main\n\nsys.exit(main())\n"

RelayApp = ZipApp


def build_matrix_relay() -> RelayApp:
    """The zip application: launcher and every module of `unityplan_infra.alerting`."""
    return build_zipapp(LAUNCHER, files=package_sources(PACKAGE, ARCHIVE_PACKAGE))
