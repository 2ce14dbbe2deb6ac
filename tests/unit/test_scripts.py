"""The README's operator commands (`scripts/*.sh`) with stand-ins for pulumi, pip and python.

The Pulumi CLI cannot be installed here (see FIELD-NOTES), so recording stubs take its
place: the tests prove what the scripts ask of it (backend, passphrase, stack selection,
the pulumi command and its arguments) and how they pass exit codes on, not what Pulumi
then does.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = {"pods": {}, "natsClientPassword": "s3cret"}


def make_stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def prepare(tmp_path: Path, verify_exit: int = 0) -> Path:
    """A copy of the project's scripts, with stubs for pulumi, python and pip."""
    project = tmp_path / "project"
    (tmp_path / "home").mkdir(exist_ok=True)
    shutil.copytree(ROOT / "scripts", project / "scripts")
    shutil.copy(ROOT / "requirements.txt", project / "requirements.txt")
    log = tmp_path / "calls.log"
    record = (
        f'echo "$(basename "$0") $* | backend=$PULUMI_BACKEND_URL'
        f' | passfile=$PULUMI_CONFIG_PASSPHRASE_FILE" >> {log}\n'
    )
    make_stub(project / ".venv" / "bin" / "pip", record)
    # verify: python copies the outputs file it was given, so the test can inspect it.
    make_stub(
        project / ".venv" / "bin" / "python",
        record + f'cp "$5" {tmp_path}/outputs-seen.json; stat -c %a "$5" > {tmp_path}/mode\n'
        f"exit {verify_exit}\n",
    )
    # `config get KEY` answers from the file `config-KEY` (absent: not set, exit 1);
    # `up` records the keys its ssh-agent holds (`ssh-add -L`; none: exit 1).
    pulumi = record + (
        'case "$1" in\n'
        "  version) echo v3.272.0 ;;\n"
        f"  stack) if [ \"$2\" = output ]; then echo '{json.dumps(OUTPUTS)}'; fi ;;\n"
        f'  config) cat "{tmp_path}/config-$3" 2>/dev/null || exit 1 ;;\n'
        f"  up) ssh-add -L > {tmp_path}/agent-keys 2>&1; echo \"$SSH_AUTH_SOCK\" > {tmp_path}/agent ;;\n"
        "esac\n"
    )
    make_stub(tmp_path / "bin" / "pulumi", pulumi)
    return project


def run(
    tmp_path: Path, project: Path, script: str, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run one script; return its result and the stubs' calls of this run."""
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "GITHUB_"))}
    result = subprocess.run(
        ["bash", str(project / "scripts" / script), *args],
        env={**clean, "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": "",
             "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_up_deploys_dev_on_a_local_backend_with_a_passphrase_outside_it(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    result, calls = run(tmp_path, project, "up.sh")
    assert result.returncode == 0, result.stderr
    state = project / ".pulumi-state"
    passphrase = tmp_path / "home" / ".config" / "unityplan-infra" / "passphrase"
    assert calls[0].startswith("pulumi version")
    assert calls[1].startswith("pip install -q --disable-pip-version-check -r requirements.txt")
    assert calls[2].startswith("pulumi stack select --create dev")
    assert calls[3].startswith("pulumi config get sshPrivateKey --stack dev |")
    assert calls[4].startswith("pulumi config get layout --stack dev |")
    assert calls[5].startswith("pulumi up --stack dev |")
    assert f"backend=file://{state}" in calls[5]
    assert f"passfile={passphrase}" in calls[5]
    # One copy of the state directory must not open the secrets.
    assert not passphrase.is_relative_to(state)
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    assert stat.S_IMODE(passphrase.parent.stat().st_mode) == 0o700
    assert len(passphrase.read_text().strip()) >= 40


def test_a_configured_ssh_key_is_in_an_agent_for_the_command_only(tmp_path: Path) -> None:
    """sshPrivateKey reaches `pulumi up` through an ssh-agent of its own, never as an
    argument or variable; the agent ends with the command."""
    project = prepare(tmp_path)
    key = Ed25519PrivateKey.generate()
    (tmp_path / "config-sshPrivateKey").write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    )
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    result, calls = run(tmp_path, project, "up.sh", "nordic", env={"SSH_AUTH_SOCK": ""})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "agent-keys").read_text().split()[:2] == public.split()[:2]
    up = next(call for call in calls if call.startswith("pulumi up"))
    assert "OPENSSH PRIVATE KEY" not in up
    socket = Path((tmp_path / "agent").read_text().strip())
    deadline = time.monotonic() + 5
    while socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # ssh-agent removes its socket as it exits
    assert not socket.exists()


def test_multi_host_without_any_key_stops_before_pulumi(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    (tmp_path / "config-layout").write_text("multi-host\n")
    result, calls = run(tmp_path, project, "up.sh", "nordic", env={"SSH_AUTH_SOCK": ""})
    assert result.returncode == 1
    assert "no key in ssh-agent" in result.stderr
    assert not any(call.startswith("pulumi up") for call in calls)
    # With a key in the caller's agent it goes ahead.
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    socket = agent.stdout.split("SSH_AUTH_SOCK=")[1].split(";")[0]
    pid = agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0]
    try:
        key = tmp_path / "id_ed25519"
        key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))  # fmt: skip
        key.chmod(0o600)
        env = {"SSH_AUTH_SOCK": socket}
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, **env}, check=True)
        result, calls = run(tmp_path, project, "up.sh", "nordic", env=env)
        assert result.returncode == 0, result.stderr
        assert any(call.startswith("pulumi up --stack nordic") for call in calls)
    finally:
        subprocess.run(["kill", pid], check=False)


def test_without_a_configured_key_the_callers_agent_is_used(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    result, _ = run(tmp_path, project, "up.sh", env={"SSH_AUTH_SOCK": "/run/caller-agent"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "agent").read_text().strip() == "/run/caller-agent"


def test_a_passphrase_left_in_the_state_dir_by_older_versions_moves_out(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    old = project / ".pulumi-state" / "passphrase"
    old.parent.mkdir(parents=True)
    old.write_text("the-old-passphrase\n")
    result, _ = run(tmp_path, project, "up.sh")
    assert result.returncode == 0, result.stderr
    moved = tmp_path / "home" / ".config" / "unityplan-infra" / "passphrase"
    assert moved.read_text() == "the-old-passphrase\n"
    assert not old.exists()
    assert "moved .pulumi-state/passphrase" in result.stderr


def test_second_run_keeps_the_passphrase_and_passes_arguments(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    run(tmp_path, project, "up.sh")
    passphrase = tmp_path / "home" / ".config" / "unityplan-infra" / "passphrase"
    first = passphrase.read_text()
    result, calls = run(tmp_path, project, "up.sh", "nordic", "--yes")
    assert result.returncode == 0, result.stderr
    assert passphrase.read_text() == first
    assert any(call.startswith("pulumi up --stack nordic --yes |") for call in calls)


def test_a_chosen_backend_and_passphrase_are_respected(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    env = {"PULUMI_BACKEND_URL": "s3://bucket/state", "PULUMI_CONFIG_PASSPHRASE": "mine"}
    result, calls = run(tmp_path, project, "up.sh", env=env)
    assert result.returncode == 0, result.stderr
    assert all("backend=s3://bucket/state" in call for call in calls if call.startswith("pulumi"))
    assert all(call.endswith("passfile=") for call in calls)
    assert not (project / ".pulumi-state").exists()
    assert not (tmp_path / "home" / ".config" / "unityplan-infra" / "passphrase").exists()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("preview.sh", "pulumi preview --stack dev --diff"),
        # Protected servers stay; everything else goes.
        ("destroy.sh", "pulumi destroy --stack dev --exclude-protected --yes"),
    ],
)
def test_preview_and_destroy(tmp_path: Path, script: str, expected: str) -> None:
    project = prepare(tmp_path)
    extra = ["dev", "--yes"] if script == "destroy.sh" else []
    result, calls = run(tmp_path, project, script, *extra)
    assert result.returncode == 0, result.stderr
    assert calls[-1].startswith(expected + " |"), calls
    # destroy never creates a stack it is about to remove
    select = next(call for call in calls if call.startswith("pulumi stack select"))
    assert ("--create" in select) == (script == "preview.sh")


@pytest.mark.parametrize("verdict", [0, 1, 2])
def test_verify_reads_the_outputs_with_secrets_and_passes_the_exit_code_on(
    tmp_path: Path, verdict: int
) -> None:
    project = prepare(tmp_path, verify_exit=verdict)
    result, calls = run(tmp_path, project, "verify.sh", "dev", "--json")
    assert result.returncode == verdict, result.stderr
    assert any(c.startswith("pulumi stack output --stack dev --json --show-secrets") for c in calls)
    verify = next(call for call in calls if call.startswith("python "))
    assert verify.startswith("python -m unityplan_infra verify --outputs ")
    assert " --json |" in verify
    assert json.loads((tmp_path / "outputs-seen.json").read_text()) == OUTPUTS
    assert (tmp_path / "mode").read_text().strip() == "600"  # it holds secrets
    outputs_file = verify.split("--outputs ")[1].split()[0]
    assert not Path(outputs_file).exists()  # removed on exit
    assert result.stdout == ""  # setup's chatter goes to stderr: --json output stays clean


@pytest.mark.parametrize("verdict", [0, 1, 3])
def test_restore_reads_the_outputs_with_secrets_and_passes_the_exit_code_on(
    tmp_path: Path, verdict: int
) -> None:
    project = prepare(tmp_path, verify_exit=verdict)
    result, calls = run(tmp_path, project, "restore.sh", "nordic", "--pod", "no", "--force")
    assert result.returncode == verdict, result.stderr
    assert any(c.startswith("pulumi stack output --stack nordic --json --show-secrets")
               for c in calls)  # fmt: skip
    restore = next(call for call in calls if call.startswith("python "))
    assert restore.startswith("python -m unityplan_infra restore --outputs ")
    assert " --pod no --force |" in restore
    assert (tmp_path / "mode").read_text().strip() == "600"  # it holds secrets
    assert not Path(restore.split("--outputs ")[1].split()[0]).exists()  # removed on exit


def test_restore_without_a_stack_is_usage(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    result, calls = run(tmp_path, project, "restore.sh")
    assert result.returncode != 0 and "usage:" in result.stderr and calls == []


def test_setup_hands_backend_and_passphrase_to_later_github_steps(tmp_path: Path) -> None:
    project = prepare(tmp_path)
    github_env, github_path = tmp_path / "github_env", tmp_path / "github_path"
    env = {"GITHUB_ENV": str(github_env), "GITHUB_PATH": str(github_path)}
    result, _ = run(tmp_path, project, "setup.sh", "dev", env=env)
    assert result.returncode == 0, result.stderr
    lines = github_env.read_text().splitlines()
    assert f"PULUMI_BACKEND_URL=file://{project / '.pulumi-state'}" in lines
    assert any(line.startswith("PULUMI_CONFIG_PASSPHRASE_FILE=") for line in lines)
    assert github_path.read_text().strip() == str(tmp_path / "bin")


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing (Debian package shellcheck; scripts/test.sh)"
    scripts = sorted(str(p.name) for p in (ROOT / "scripts").glob("*.sh"))
    assert "setup.sh" in scripts and len(scripts) >= 6
    result = subprocess.run(
        [shellcheck, "-x", "--severity=style", *scripts], cwd=ROOT / "scripts",
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
