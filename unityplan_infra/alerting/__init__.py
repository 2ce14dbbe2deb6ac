"""Alerts into the platform's own Matrix: a relay from Alertmanager's webhook to a room.

Alertmanager has no Matrix receiver. `matrix_relay` takes its webhook (payload version 4)
and posts one `m.room.message` per notification to one room, as a bot user; `bootstrap`
does the one-time setup on the monitoring pod's homeserver (bot user through Synapse's
shared-secret registration, access token, the room `#alerts:<server_name>`, invitations).

Everything in this package is standard library only: render/matrix_relay_job.py packs it
into one zip application that runs in the stock python image (`python matrix-relay.pyz
serve|bootstrap|healthcheck`, see `cli`). Imports inside the package are relative, so the
same files work as `unityplan_infra.alerting` and as the archive's top-level `alerting`.
"""
