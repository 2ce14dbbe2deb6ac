"""`verify`: the reference guide's "Verify Deployment" and "Troubleshooting" as a command.

Reads a stack's outputs (`pulumi stack output --json --show-secrets`), probes every pod and
the mesh with bounded timeouts, and reports per check what it saw, the likely cause and the
fix. Pure client code: it knows nothing of Pulumi and runs from the operator's machine.
"""
