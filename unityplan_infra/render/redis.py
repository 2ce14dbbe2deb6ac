"""How a pod's Redis starts and how its health is checked (no config file needed).

The password comes from the container's environment, so it is neither in a stored file nor
in the container's command line.
"""

from __future__ import annotations

# Run by `sh -c` in the container; /data (the volume) is the working directory. Through the
# image's entrypoint, which drops from root to the redis user for `redis-server`.
# appendfsync always: an acknowledged write is on disk. With the default everysec a host
# crash loses up to ~2 s of acknowledged writes, and even a process crash can, when a slow
# disk makes Redis postpone its AOF write but still reply (docs/stop-measurements.md).
START = (
    "exec docker-entrypoint.sh redis-server --appendonly yes --appendfsync always"
    ' --requirepass "$REDIS_PASSWORD"'
)
# REDISCLI_AUTH, not `-a`: an argument is visible to every user of the host in `ps`.
HEALTHCHECK = 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping | grep -q PONG'
COMMAND = ["sh", "-c", START]
