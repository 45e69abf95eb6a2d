"""Job variables that put each GPU job run by the pipeline on its own GPU of a Docker worker.

A Docker worker's host has N GPUs; fold k's container gets GPU `k mod N` (a docker-py
DeviceRequest with `device_ids`), never all of them, so the folds of one run spread over the
GPUs instead of all landing on GPU 0. N is configuration (`gpus_per_worker`): the
orchestrating container has no GPU to count. N = 0 asks for no GPU (CPU workers).

A job variable given at run time replaces the deployment's whole value, so the GPU request
is merged into the deployment's own `container_create_kwargs` (`shm_size` and the rest stay).
Kubernetes pools schedule one `nvidia.com/gpu` per pod themselves and get nothing here.
"""

from __future__ import annotations

from typing import Any

DOCKER_POOL_TYPE = "docker"


def gpu_job_variables(
    deployment_job_variables: dict[str, Any], pool_type: str, index: int, gpus_per_worker: int
) -> dict[str, Any]:
    """The run-time job variables for job `index` (a fold) of a deployment on `pool_type`."""
    if gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
    if pool_type != DOCKER_POOL_TYPE:
        return {}
    kwargs = dict(deployment_job_variables.get("container_create_kwargs") or {})
    kwargs.pop("device_requests", None)
    if gpus_per_worker:
        kwargs["device_requests"] = [
            {
                "driver": "nvidia",
                "device_ids": [str(index % gpus_per_worker)],
                "capabilities": [["gpu"]],
            }
        ]
    return {"container_create_kwargs": kwargs}


def deployment_gpu_jobs(
    deployment: str, indices: list[int], gpus_per_worker: int
) -> list[dict[str, Any]]:
    """Job variables for jobs `indices` (folds) of `deployment` ("flow/name"), from the API."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        pool = found.work_pool_name
        pool_type = client.read_work_pool(pool).type if pool else ""
    job_variables = found.job_variables or {}
    return [gpu_job_variables(job_variables, pool_type, i, gpus_per_worker) for i in indices]
