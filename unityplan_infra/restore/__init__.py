"""`python -m unityplan_infra restore`: put a pod's backed-up data back, from the operator's
machine (see README, "Backups and restore")."""
