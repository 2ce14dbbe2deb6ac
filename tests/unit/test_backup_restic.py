"""The restic wrapper without restic: error classification on restic's own stderr (0.14 as
Debian ships it, whose every fatal error exits 1, and the exit codes 10-12 of 0.17+),
settings validation, JSON parsing, and the SigV4 signing of the bucket probe against
botocore's signer."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock

import botocore.auth
import botocore.credentials
import pytest
from botocore.awsrequest import AWSRequest

from unityplan_infra.backup.errors import BackupError
from unityplan_infra.backup.restic import (
    AccessDenied,
    BucketMissing,
    Credentials,
    EndpointUnreachable,
    RepositoryLocked,
    RepositoryMissing,
    Restic,
    Retention,
    S3Repository,
    WrongPassword,
    _summary,
    classify,
    parse_time,
    sigv4_headers,
)

REPO = S3Repository("http://127.0.0.1:9000", "unityplan-backups", "pods/dk")

# stderr of restic 0.14.0 against moto, captured by hand (see the module docstring).
CASES = [
    (1, "Fatal: wrong password or no key found\n", WrongPassword),
    (12, "Fatal: wrong password or no key found\n", WrongPassword),
    (1, "Fatal: unable to open config file: Stat: The specified bucket does not exist\n"
        "Is there a repository at the following location?\ns3:http://127.0.0.1:9000/x/y\n",
     BucketMissing),
    (1, "Fatal: unable to open config file: Stat: The specified key does not exist.\n"
        "Is there a repository at the following location?\n", RepositoryMissing),
    (10, "Fatal: repository does not exist: unable to open config file: Stat: The specified "
         "key does not exist.\n", RepositoryMissing),
    (1, 'Fatal: unable to open config file: Stat: Get "http://127.0.0.1:1/bkt/?location=": '
        "dial tcp 127.0.0.1:1: connect: connection refused\n", EndpointUnreachable),
    (1, "unable to create lock in backend: repository is already locked exclusively by PID "
        "8793 on vm by root (UID 0, GID 0)\nlock was created at 2026-11-28 17:34:21\n",
     RepositoryLocked),
    (11, "Fatal: unable to create lock\n", RepositoryLocked),
    (1, "Fatal: unable to open config file: Stat: Access Denied.\n", AccessDenied),
]  # fmt: skip


@pytest.mark.parametrize(("code", "stderr", "expected"), CASES)
def test_restic_failures_are_classified(code: int, stderr: str, expected: type) -> None:
    error = classify("cat", code, stderr, REPO)
    assert type(error) is expected
    assert isinstance(error, BackupError)


def test_messages_name_what_failed_and_the_fix() -> None:
    wrong = str(classify("cat", 1, "Fatal: wrong password or no key found", REPO))
    assert REPO.url in wrong and "do not initialise it again" in wrong
    bucket = str(classify("cat", 1, "Stat: The specified bucket does not exist", REPO))
    assert "'unityplan-backups'" in bucket and "create it" in bucket
    locked = str(classify("backup", 11, "locked", REPO))
    assert "restic unlock" in locked
    other = str(classify("prune", 1, "Fatal: something new\n", REPO))
    assert "exit 1" in other and "something new" in other


def test_repository_url_and_validation() -> None:
    assert REPO.url == "s3:http://127.0.0.1:9000/unityplan-backups/pods/dk"
    assert REPO.address == ("127.0.0.1", 9000)
    assert S3Repository("https://s3.example.org", "b-1", "/p/").address == ("s3.example.org", 443)
    for endpoint, bucket, path in [
        ("127.0.0.1:9000", "bucket", "p"),  # no scheme
        ("http://h/extra", "bucket", "p"),  # a path belongs in bucket/path
        ("http://h", "Bad_Bucket", "p"),
        ("http://h", "bucket", ""),
        ("http://h", "bucket", "a/../b"),
    ]:
        with pytest.raises(ValueError):
            S3Repository(endpoint, bucket, path)


def test_credentials_need_exactly_one_password_source_and_hide_it() -> None:
    with pytest.raises(ValueError):
        Credentials("a", "b")
    with pytest.raises(ValueError):
        Credentials("a", "b", password="x", password_file="/f")
    assert "s3cret" not in repr(Credentials("a", "s3cret", password="s3cret"))


def test_environment_carries_secrets_and_drops_inherited_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "inherited")
    monkeypatch.setenv("AWS_PROFILE", "someone-else")
    restic = Restic(REPO, Credentials("AK", "SK", password_file="/run/secrets/restic"))
    env = restic.environment()
    assert env["RESTIC_PASSWORD_FILE"] == "/run/secrets/restic"
    assert "RESTIC_PASSWORD" not in env and "AWS_PROFILE" not in env
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("AK", "SK")
    argv = Restic(REPO, Credentials("AK", "SK", password="pw")).argv("snapshots")
    assert "pw" not in argv and "SK" not in argv and "--no-cache" in argv


def test_retention_arguments_and_refusal_to_keep_nothing() -> None:
    assert Retention(7, 4, 6).args() == ["--keep-daily", "7", "--keep-weekly", "4",
                                         "--keep-monthly", "6"]  # fmt: skip
    assert Retention(daily=3, weekly=0, monthly=0).args() == ["--keep-daily", "3"]
    with pytest.raises(ValueError):
        Retention(0, 0, 0)
    with pytest.raises(ValueError):
        Retention(-1, 1, 1)


def test_restic_times_with_nanoseconds_and_offsets() -> None:
    assert parse_time("2026-11-28T17:32:14.715453861Z") == datetime(
        2026, 11, 28, 17, 32, 14, 715453, tzinfo=UTC
    )
    assert parse_time("2026-01-01T03:00:00+01:00") == datetime(2026, 1, 1, 2, tzinfo=UTC)
    with pytest.raises(BackupError):
        parse_time("yesterday")


def test_backup_summary_is_the_last_summary_line() -> None:
    stdout = (
        '{"message_type":"status","percent_done":0,"total_files":1}\n'
        '{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,'
        '"data_blobs":1,"data_added":1000708,"total_bytes_processed":1000000,'
        '"total_duration":0.25,"snapshot_id":"f403636f"}\n'
    )
    summary = _summary(stdout)
    assert summary is not None
    assert (summary.snapshot_id, summary.data_added, summary.total_bytes_processed,
            summary.data_blobs) == ("f403636f", 1000708, 1000000, 1)  # fmt: skip
    assert _summary('{"message_type":"status"}\n') is None


@pytest.mark.parametrize(
    ("url", "region"),
    [("http://127.0.0.1:9000/unityplan-backups", "us-east-1"),
     ("https://fsn1.your-objectstorage.com/unityplan-backups", "fsn1")],
)  # fmt: skip
def test_bucket_probe_signature_equals_botocores(url: str, region: str) -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    request = AWSRequest(method="HEAD", url=url, data=b"")
    credentials = botocore.credentials.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG")
    with mock.patch.object(botocore.auth, "get_current_datetime",
                           return_value=now.replace(tzinfo=None)):  # fmt: skip
        botocore.auth.S3SigV4Auth(credentials, "s3", region).add_auth(request)
    ours = sigv4_headers("HEAD", url, region=region, access_key_id="AKIDEXAMPLE",
                         secret_access_key="wJalrXUtnFEMI/K7MDENG", now=now)  # fmt: skip
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]
