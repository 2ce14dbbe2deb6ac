"""Matrix (Synapse): `/health` on the client port, and federation to every other pod.

Federation is checked through each homeserver's key notary: asking pod A for pod B's
signing key (`POST /_matrix/key/v2/query` with B's key ID, which B's own
`/_matrix/key/v2/server` tells) makes A fetch it from B over federation, so an answer
proves A -> B works (name resolution, the federation port, TLS, the whitelist). Asked for
"all keys" (`GET .../query/<B>`) Synapse answers from its cache only, so a key ID it is.
"""

from __future__ import annotations

from unityplan_infra.verify.http import HttpError, fetch, fetch_json
from unityplan_infra.verify.model import Check, Context, Finding, failed, passed, per_pod


def checks(context: Context) -> list[Check]:
    return per_pod(context, "matrix", "matrix.health", _probe)


def _probe(context: Context, code: str) -> list[Finding]:
    outputs = context.outputs
    pod = outputs.pods[code]
    base = context.url(pod.host, pod.endpoints.matrix).rstrip("/")
    body = fetch(f"{base}/health", timeout=context.timeout).decode(errors="replace").strip()
    findings = [passed("matrix.health", code, f"/health: {body}")]
    federation = context.url(pod.host, pod.endpoints.matrix_federation).rstrip("/")
    unreachable = []
    for other_code, other in outputs.pods.items():
        if other_code == code:
            continue
        try:
            own = context.url(other.host, other.endpoints.matrix_federation).rstrip("/")
            served = fetch_json(f"{own}/_matrix/key/v2/server", timeout=context.timeout,
                                tls_verify=False)  # fmt: skip
            criteria = {key_id: {"minimum_valid_until_ts": 0} for key_id in served["verify_keys"]}
            answer = fetch_json(
                f"{federation}/_matrix/key/v2/query", method="POST", timeout=context.timeout,
                tls_verify=False, body={"server_keys": {other.matrix_server_name: criteria}},
            )  # fmt: skip
        except (HttpError, KeyError, TypeError) as error:
            unreachable.append(f"{other.matrix_server_name} ({error})")
            continue
        names = {keys.get("server_name") for keys in answer.get("server_keys") or []}
        if other.matrix_server_name not in names:
            unreachable.append(f"{other.matrix_server_name} (no keys)")
    if unreachable:
        findings.append(failed(
            "matrix.federation", code, f"cannot fetch keys of {'; '.join(unreachable)}",
            "the peer's server name does not resolve on the mesh, its federation port is"
            " unreachable, or it is missing from federation_domain_whitelist",
            f"docker logs service-matrix-{code} | grep -i federation; check the peer's"
            " matrix.health; then `./scripts/up.sh STACK` (it rewrites the whitelist)",
        ))  # fmt: skip
    else:
        findings.append(passed("matrix.federation", code,
                               f"keys of all {len(outputs.pods) - 1} peer(s) fetched"))  # fmt: skip
    return findings
