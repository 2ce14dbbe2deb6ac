"""Errors of backup and restore: each message names what failed and how to fix it."""

from __future__ import annotations


class BackupError(RuntimeError):
    """A backup or restore step failed."""


class RestoreRefused(BackupError):
    """A restore would overwrite non-empty data and `force` was not given."""
