"""The GPU host's commands that the container test runs, word for word as docs/servers.md
gives them (tests/unit/test_deploy_files.py checks the document holds each one). Each runs
from the repository root with the project's virtualenv."""

from __future__ import annotations

from tasks.deployment_names import GPU_WORK_POOL

SERVER_SETUP = (
    f"python -m flows.server_setup --pool {GPU_WORK_POOL} --type docker"
    " --network host --image-pull-policy Never"
)
DEPLOY = "prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml"
WORKER = f"prefect worker start --pool {GPU_WORK_POOL} --type docker"
