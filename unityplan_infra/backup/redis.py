"""Back up a pod's Redis as an RDB snapshot; restore it file-level into a stopped server.

Backup: `redis-cli --rdb FILE` asks the running server for a fresh snapshot (the same
stream a replica gets), so the file is a consistent point in time without touching the
server's own files. The password travels in REDISCLI_AUTH, never in argv.

Restore, measured on redis-server 7.0.15 started as the pod starts it
(`--appendonly yes --appendfsync always`):

- With `dump.rdb` in the data directory and no `appendonlydir`, Redis does NOT load the
  RDB: with appendonly on it only ever loads the AOF. It starts empty, creates an empty AOF
  base, and at its next shutdown saves the empty dataset over `dump.rdb`. Dropping the RDB
  in place therefore loses the restore.
- An AOF whose manifest names the RDB as its base (`file appendonly.aof.1.base.rdb seq 1
  type b`; Redis 7 bases are RDB files) is loaded: every key comes back, Redis adds a new
  incr file on start, later writes and AOF rewrites work, and the data survives restarts.

So the restore writes the snapshot as the AOF base with a one-line manifest (and as
`dump.rdb` too, for a server run without appendonly), after removing the old AOF. It needs
the server stopped (the orchestrator stops the container): a running server would write
its own files over the restore at shutdown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from unityplan_infra.backup.errors import BackupError, RestoreRefused

RDB_MAGIC = b"REDIS"


@dataclass(frozen=True)
class RedisConnection:
    host: str
    port: int = 6379
    password: str = ""
    username: str = ""  # ACL user; "" = the default user (requirepass)
    timeout: float = 600.0

    def __repr__(self) -> str:  # keeps the password out of tracebacks and logs
        return f"RedisConnection({self.host}:{self.port})"


@dataclass(frozen=True)
class RedisLayout:
    """File names in the server's data directory (Redis 7 defaults, as the pod runs it)."""

    data_dir: Path
    dbfilename: str = "dump.rdb"
    appenddirname: str = "appendonlydir"
    appendfilename: str = "appendonly.aof"

    @property
    def rdb(self) -> Path:
        return self.data_dir / self.dbfilename

    @property
    def aof_dir(self) -> Path:
        return self.data_dir / self.appenddirname

    @property
    def legacy_aof(self) -> Path:
        """Redis 6's single AOF file, which Redis 7 would upgrade and load."""
        return self.data_dir / self.appendfilename


def snapshot(connection: RedisConnection, out_file: Path) -> int:
    """A consistent RDB snapshot of the running server in `out_file`; returns its size."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if connection.password:
        env["REDISCLI_AUTH"] = connection.password
    command = ["redis-cli", "-h", connection.host, "-p", str(connection.port), "--no-auth-warning"]
    if connection.username:
        command += ["--user", connection.username]
    command += ["--rdb", str(out_file)]
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
            timeout=connection.timeout, check=False,
        )  # fmt: skip
    except FileNotFoundError as error:
        raise BackupError("redis-cli not found: install the Redis tools") from error
    except subprocess.TimeoutExpired as error:
        raise BackupError(f"redis-cli --rdb from {connection!r} did not finish in "
                          f"{connection.timeout:.0f}s") from error  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or not _is_rdb(out_file):
        raise _classify(connection, output)
    return out_file.stat().st_size


def has_data(layout: RedisLayout) -> bool:
    """Whether the data directory holds a dataset with at least one key (or might).

    A freshly started pod's Redis has an AOF base and a dump.rdb with no keys: that counts
    as empty, so a restore onto a new pod needs no force. Anything unrecognised counts as
    data.
    """
    if layout.rdb.exists() and not rdb_is_empty(layout.rdb):
        return True
    if layout.legacy_aof.exists() and layout.legacy_aof.stat().st_size > 0:
        return True
    if layout.aof_dir.is_dir():
        for path in layout.aof_dir.iterdir():
            if path.name.endswith(".manifest"):
                continue
            if path.name.endswith(".rdb"):
                if not rdb_is_empty(path):
                    return True
            elif path.stat().st_size > 0:  # an incr (or preamble-less base) AOF with commands
                return True
    elif layout.aof_dir.exists():
        return True
    return False


def server_answers(connection: RedisConnection, timeout: float = 2.0) -> bool:
    """Whether something accepts connections at the server's address."""
    try:
        with socket.create_connection((connection.host, connection.port), timeout=timeout):
            return True
    except OSError:
        return False


def check_restorable(layout: RedisLayout, *, force: bool) -> None:
    if has_data(layout) and not force:
        raise RestoreRefused(
            f"the Redis data directory {layout.data_dir} already holds keys: the restore "
            "would replace them. Restore with force to replace them."
        )


def restore_files(
    rdb_file: Path,
    layout: RedisLayout,
    *,
    force: bool = False,
    connection: RedisConnection | None = None,
) -> None:
    """Put the snapshot `rdb_file` into the stopped server's data directory.

    The new files are written and fsynced in a temp directory inside the data directory,
    then moved in by rename: a crash never leaves a half-written AOF in place (at worst no
    AOF directory, with the old one still in `.restore-*/old`). New files get the data
    directory's owner (the image runs redis-server as user redis).
    """
    if not _is_rdb(rdb_file):
        raise BackupError(f"{rdb_file} is not an RDB snapshot (no REDIS header)")
    if connection is not None and server_answers(connection):
        raise BackupError(
            f"Redis at {connection.host}:{connection.port} is running: stop its container "
            "before restoring; at shutdown it would write its own data over the restore."
        )
    check_restorable(layout, force=force)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    owner = layout.data_dir.stat()
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=layout.data_dir))
    try:
        new_aof = staging / layout.appenddirname
        new_aof.mkdir()
        base = f"{layout.appendfilename}.1.base.rdb"
        shutil.copyfile(rdb_file, new_aof / base)
        # The manifest format of Redis 7 (aof.c): one line per file; a base needs no incr.
        (new_aof / f"{layout.appendfilename}.manifest").write_text(f"file {base} seq 1 type b\n")
        shutil.copyfile(rdb_file, staging / layout.dbfilename)
        for path in (new_aof / base, new_aof / f"{layout.appendfilename}.manifest",
                     staging / layout.dbfilename, new_aof):  # fmt: skip
            _fsync(path)
            _chown_like(path, owner)
        # Swap: the old AOF directory leaves first, so no mix of old and new files exists.
        old = staging / "old"
        if layout.aof_dir.exists():
            os.rename(layout.aof_dir, old)
        layout.legacy_aof.unlink(missing_ok=True)
        os.rename(new_aof, layout.aof_dir)
        os.replace(staging / layout.dbfilename, layout.rdb)
        _fsync(layout.data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def rdb_is_empty(path: Path) -> bool:
    """True when an RDB file holds no database and no function library.

    Reads the opcodes after the header: aux fields (0xFA) carry metadata only; the first
    SELECTDB (0xFE), RESIZEDB (0xFB), function (0xF5/0xF6) or any key means data; EOF
    (0xFF) before any of them means an empty dataset. Anything unreadable counts as data.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data.startswith(RDB_MAGIC) or len(data) < 9:
        return False
    offset = 9  # "REDIS" + 4-digit version
    try:
        while offset < len(data):
            opcode = data[offset]
            offset += 1
            if opcode == 0xFF:
                return True
            if opcode != 0xFA:
                return False
            for _ in range(2):  # aux key, aux value
                offset = _skip_string(data, offset)
    except IndexError:
        return False
    return False


def _skip_string(data: bytes, offset: int) -> int:
    """The offset after an RDB string (length-prefixed, integer or LZF encoded)."""
    first = data[offset]
    kind = first >> 6
    if kind == 0:
        return offset + 1 + (first & 0x3F)
    if kind == 1:
        return offset + 2 + (((first & 0x3F) << 8) | data[offset + 1])
    if kind == 2:
        if first == 0x80:
            return offset + 5 + int.from_bytes(data[offset + 1 : offset + 5], "big")
        if first == 0x81:
            return offset + 9 + int.from_bytes(data[offset + 1 : offset + 9], "big")
        raise IndexError("unknown length encoding")
    special = first & 0x3F
    if special in (0, 1, 2):  # 8, 16, 32 bit integers
        return offset + 1 + (1, 2, 4)[special]
    if special == 3:  # LZF: compressed length, uncompressed length, data
        compressed, after = _length(data, offset + 1)
        _, after = _length(data, after)
        return after + compressed
    raise IndexError("unknown string encoding")


def _length(data: bytes, offset: int) -> tuple[int, int]:
    first = data[offset]
    kind = first >> 6
    if kind == 0:
        return first & 0x3F, offset + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | data[offset + 1], offset + 2
    if first == 0x80:
        return int.from_bytes(data[offset + 1 : offset + 5], "big"), offset + 5
    if first == 0x81:
        return int.from_bytes(data[offset + 1 : offset + 9], "big"), offset + 9
    raise IndexError("unknown length encoding")


def _is_rdb(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(len(RDB_MAGIC)) == RDB_MAGIC
    except OSError:
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chown_like(path: Path, owner: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.chown(path, owner.st_uid, owner.st_gid)


def _classify(connection: RedisConnection, output: str) -> BackupError:
    where = f"Redis at {connection.host}:{connection.port}"
    text = output.lower()
    if "noauth" in text or "wrongpass" in text or "invalid password" in text:
        return BackupError(f"{where} refused the password: give the pod's Redis password. "
                           f"({output})")  # fmt: skip
    if "could not connect" in text or "connection refused" in text:
        return BackupError(f"cannot reach {where}: is it up and the address right? ({output})")
    return BackupError(f"redis-cli --rdb from {where} gave no RDB snapshot: {output}")
