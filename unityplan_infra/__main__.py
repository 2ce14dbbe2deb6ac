"""`python -m unityplan_infra COMMAND`: see unityplan_infra/cli.py."""

import sys

from unityplan_infra.cli import main

sys.exit(main())
