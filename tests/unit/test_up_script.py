"""README's first command, `scripts/up.sh`, with stand-ins for pulumi and pip.

The Pulumi CLI cannot be installed here (see FIELD-NOTES), so a recording stub takes its
place: the test proves what the script asks of it (local backend, generated passphrase,
stack selection, `up`), not what Pulumi then does.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def prepare(tmp_path: Path) -> Path:
    """A copy of the project's deploy entry point, with stubs for pulumi, python and pip."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "up.sh", project / "scripts" / "up.sh")
    shutil.copy(ROOT / "requirements.txt", project / "requirements.txt")
    log = tmp_path / "calls.log"
    record = (
        f'echo "$(basename "$0") $* | backend=$PULUMI_BACKEND_URL'
        f' | passfile=$PULUMI_CONFIG_PASSPHRASE_FILE" >> {log}\n'
    )
    make_stub(project / ".venv" / "bin" / "python", record)
    make_stub(project / ".venv" / "bin" / "pip", record)
    make_stub(tmp_path / "bin" / "pulumi", record)
    return project


def up(tmp_path: Path, project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run up.sh once; return the stubs' calls of this run."""
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    result = subprocess.run(
        ["bash", str(project / "scripts" / "up.sh"), *args],
        env={**clean, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return log.read_text()


def test_dev_stack_on_a_local_backend_with_a_generated_passphrase(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    lines = up(tmp_path, project).splitlines()
    state = project / ".pulumi-state"
    passphrase = state / "passphrase"
    assert lines[0].startswith("pip install -q --disable-pip-version-check -r requirements.txt")
    assert lines[1].startswith("pulumi stack select --create dev")
    assert lines[2].startswith("pulumi up --stack dev")
    assert f"backend=file://{state}" in lines[2]
    assert f"passfile={passphrase}" in lines[2]
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    assert len(passphrase.read_text().strip()) >= 40


def test_second_run_keeps_the_passphrase_and_passes_arguments(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    up(tmp_path, project)
    first = (project / ".pulumi-state" / "passphrase").read_text()
    calls = up(tmp_path, project, "nordic", "--yes")
    assert (project / ".pulumi-state" / "passphrase").read_text() == first
    assert "pulumi up --stack nordic --yes" in calls


def test_a_chosen_backend_and_passphrase_are_respected(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    env = {"PULUMI_BACKEND_URL": "s3://bucket/state", "PULUMI_CONFIG_PASSPHRASE": "mine"}
    calls = up(tmp_path, project, env=env)
    assert "backend=s3://bucket/state" in calls
    assert all(line.endswith("passfile=") for line in calls.splitlines())
    assert not (project / ".pulumi-state").exists()
