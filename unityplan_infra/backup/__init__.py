"""Backups of a pod's data and their restore (issue 10).

Everything in this package runs inside the backup container on the pod's host, shipped as a
zip application like the stream job: it imports only the standard library and pure-Python
packages that the archive carries (nats-py, prometheus_client), and drives the real tools
(restic, pg_dump/pg_restore/psql, redis-cli) as subprocesses.
"""
