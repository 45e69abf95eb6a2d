"""Names that flows, deployments/prefect.yaml and the docs must agree on.

`run_deployment` addresses a deployment as "<flow name>/<deployment name>", so the flow
decorators, the yaml file and the fan-out all import these instead of repeating strings.
tests/unit/test_deploy_files.py checks that prefect.yaml uses exactly these names.
"""

from __future__ import annotations

PIPELINE_FLOW = "pipeline"
TRAIN_FOLD_FLOW = "train-fold"
PREDICT_FLOW = "predict"

PIPELINE_DEPLOYMENT_NAME = "rsna-pipeline"
TRAIN_FOLD_DEPLOYMENT_NAME = "train-fold"
PREDICT_DEPLOYMENT_NAME = "predict"

PIPELINE_DEPLOYMENT = f"{PIPELINE_FLOW}/{PIPELINE_DEPLOYMENT_NAME}"
TRAIN_FOLD_DEPLOYMENT = f"{TRAIN_FOLD_FLOW}/{TRAIN_FOLD_DEPLOYMENT_NAME}"
PREDICT_DEPLOYMENT = f"{PREDICT_FLOW}/{PREDICT_DEPLOYMENT_NAME}"

GPU_WORK_POOL = "gpu-docker"
GPU_TRAIN_TAG = "gpu-train"
"""Tag on the training task; `prefect concurrency-limit create gpu-train N` caps GPU jobs."""
