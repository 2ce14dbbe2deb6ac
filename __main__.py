"""unityplan-infra: the UnityPlan platform as a Pulumi program. Wiring only; see README."""

import pulumi

from unityplan_infra.config.errors import ConfigError
from unityplan_infra.deployment import load_deployment
from unityplan_infra.pulumi_config import all_config
from unityplan_infra.stack import deploy

try:
    deployment = load_deployment(all_config())
except ConfigError as error:
    # Raised before any resource is registered: an invalid config deploys nothing.
    raise pulumi.RunError(str(error)) from None

for warning in deployment.config.warnings():
    pulumi.log.warn(warning)
outputs = deploy(deployment, stack=pulumi.get_stack())
for name, value in outputs.items():
    pulumi.export(name, value)
