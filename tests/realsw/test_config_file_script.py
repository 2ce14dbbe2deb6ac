"""The shell that delivers config files to a host, run for real with /bin/sh.

It is what every config change goes through (locally in single-host, over SSH in
multi-host), so it must write atomically, keep secrets' directory closed, keep a
bind-mounted single file's inode, and only signal containers that run.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from unityplan_infra.components.host import if_running, signal_reload, write_file_script


def run(
    script: str, stdin: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", script], input=stdin, capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip


def test_writes_content_with_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    target = root / "pods" / "dk" / "nats" / "nats.json"
    result = run(write_file_script(str(root), str(target), None), '{"port": 4222}\n')
    assert result.returncode == 0, result.stderr
    assert target.read_text() == '{"port": 4222}\n'
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # secrets below: closed to others
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755  # containers' users read it
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["nats.json"]  # no temp file left


def test_rewrite_replaces_by_rename_or_in_place(tmp_path: Path) -> None:
    root = tmp_path / "root"
    target = root / "dir" / "file"
    run(write_file_script(str(root), str(target), None), "one\n")
    inode = target.stat().st_ino
    run(write_file_script(str(root), str(target), None), "two\n")
    assert target.read_text() == "two\n" and target.stat().st_ino != inode  # atomic rename
    inode = target.stat().st_ino
    run(write_file_script(str(root), str(target), None, in_place=True), "three\n")
    assert target.read_text() == "three\n" and target.stat().st_ino == inode  # same inode


def test_mode_can_make_a_script_executable(tmp_path: Path) -> None:
    target = tmp_path / "root" / "init" / "10-init.sh"
    run(write_file_script(str(tmp_path / "root"), str(target), None, mode="0755"), "#!/bin/sh\n")
    assert os.access(target, os.X_OK)


def test_reload_runs_after_the_write_and_only_for_running_containers(tmp_path: Path) -> None:
    # A fake `docker` on PATH records calls and reports one container as running.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    fake = bin_dir / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$*" in *"inspect"*running-one) echo true ;; *inspect*) exit 1 ;; esac\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    target = tmp_path / "root" / "f"
    for name in ("running-one", "absent-one"):
        script = write_file_script(str(tmp_path / "root"), str(target), signal_reload(name))
        assert run(script, "x", env).returncode == 0
    calls = log.read_text().splitlines()
    assert "kill --signal HUP running-one" in calls
    assert not any("kill" in call and "absent-one" in call for call in calls)


def test_a_failed_write_fails_the_command(tmp_path: Path) -> None:
    blocker = tmp_path / "root"
    blocker.write_text("a file where the root directory should be")
    result = run(write_file_script(str(blocker), str(blocker / "d" / "f"), None), "x")
    assert result.returncode != 0


def test_if_running_quotes_container_names() -> None:
    assert "'a b'" in if_running("a b", "true")


def test_a_secret_is_readable_by_its_service_user_only(tmp_path: Path) -> None:
    """Multi-host (scripts run as root): 0600 and owned by the container's user."""
    root = tmp_path / "root"
    target = root / "pods" / "dk" / "matrix" / "signing.key"
    script = write_file_script(str(root), str(target), None, mode="0600", owner="991:991")
    result = run(script, "ed25519 a_key secret\n")
    assert result.returncode == 0, result.stderr
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (991, 991, 0o600)
    # Rewritten in place (a single bind-mounted file) it keeps owner and mode.
    script = write_file_script(str(root), str(target), None, True, "0600", owner="991:991")
    assert run(script, "ed25519 a_key rotated\n").returncode == 0
    info = target.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (991, 0o600)
    assert target.read_text() == "ed25519 a_key rotated\n"
