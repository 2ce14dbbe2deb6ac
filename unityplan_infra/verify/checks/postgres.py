"""PostgreSQL: the pod's owner role logs in, and its databases exist."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg

from unityplan_infra.verify.model import Check, Context, Finding, failed, passed, per_pod


def checks(context: Context) -> list[Check]:
    return per_pod(context, "postgres", "postgres.login", _probe)


def _probe(context: Context, code: str) -> list[Finding]:
    pod = context.outputs.pods[code]
    host, port = context.address(pod.host, pod.endpoints.postgres)
    database = urlsplit(pod.endpoints.postgres).path.lstrip("/") or "postgres"
    try:
        connection = psycopg.connect(
            host=host, port=port, dbname=database, user=pod.postgres_user,
            password=pod.postgres_password, connect_timeout=max(1, round(context.timeout)),
            options=f"-c statement_timeout={int(context.timeout * 1000)}",
        )  # fmt: skip
    except psycopg.OperationalError as error:
        text = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        if "password authentication failed" in text:
            return [failed(
                "postgres.login", code, text,
                "the role's password differs from the stack's postgresPassword (a volume"
                " initialised by another stack or by hand keeps its old password)",
                f"docker exec -it service-postgres-{code} psql -U {pod.postgres_user} -c"
                " \"ALTER ROLE ... PASSWORD '<pulumi stack output --show-secrets>'\"",
            )]  # fmt: skip
        if "does not exist" in text:
            return [failed(
                "postgres.login", code, text,
                "the pod's database was never created (guide: Database Connection Failed)",
                "rerun `./scripts/up.sh STACK`: its init job creates missing databases",
            )]  # fmt: skip
        raise
    with connection:
        rows = connection.execute("SELECT datname FROM pg_database").fetchall()
    present = {row[0] for row in rows}
    login = passed("postgres.login", code, f"logged in as {pod.postgres_user} to {database}")
    missing = [name for name in pod.databases if name not in present]
    if missing:
        return [login, failed(
            "postgres.databases", code, f"missing: {', '.join(missing)}",
            "the init script did not run on this volume (guide: Database Connection Failed)",
            "rerun `./scripts/up.sh STACK` (it reruns the idempotent init script), or"
            f" docker exec -i service-postgres-{code} psql -U {pod.postgres_user} -d postgres"
            " -f /docker-entrypoint-initdb.d/10-databases.sql",
        )]  # fmt: skip
    return [login, passed("postgres.databases", code, ", ".join(pod.databases))]
