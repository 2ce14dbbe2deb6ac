"""The backup job as one self-contained file: a Python zip application.

It runs in the backup container (render/backup_image.py) with the image's Debian python3:
`unityplan_infra/backup/` and its pure-Python dependencies, taken from the program's own
venv as `requirements.txt` pins them (render/zipapp.py says why nothing is downloaded).
"""

from __future__ import annotations

from unityplan_infra.render.zipapp import ZipApp, build_zipapp, package_sources

JOB_FILE = "backup-job.pyz"
LAUNCHER = "import sys\n\nfrom unityplan_infra.backup.agent import main\n\nsys.exit(main())\n"
# (distribution, top-level package) of every dependency of unityplan_infra/backup.
DEPENDENCIES = (("nats-py", "nats"), ("prometheus_client", "prometheus_client"),
                ("cronsim", "cronsim"))  # fmt: skip


def build_backup_job() -> ZipApp:
    return build_zipapp(
        LAUNCHER,
        files=package_sources("unityplan_infra.backup"),
        distributions=DEPENDENCIES,
    )
