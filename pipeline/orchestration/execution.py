"""Where steps run: the `gpu` pool, Kubernetes pod settings for GPU assets, and the executor.

Three layers, each owned by an existing engine rather than by this project:

- On one machine, the Dagster instance limits the `gpu` pool (`.dagster/dagster.yaml`,
  `concurrency.pools.default_limit`, default 1; `dagster instance concurrency set gpu N` for a
  machine with N GPUs), so training and generation steps queue for the GPU while data assets and
  checks run in parallel in the multiprocess executor.
- On Kubernetes (`RLHF_EXECUTOR=k8s`), `dagster-k8s`'s `k8s_job_executor` runs every step in its
  own pod. GPU assets carry a `dagster-k8s/config` op tag (`gpu_op_tags`) that requests
  `nvidia.com/gpu` and places the pod on A100/H100-class nodes; every other step requests no GPU.
- Multi-GPU training inside one step is `accelerate launch` (see `pipeline.orchestration.launchers`).

The GPU pod settings are read when the code location loads (op tags are part of the asset
definition), from the JSON object in `$RLHF_K8S_GPU` (fields of `GpuNodeRequest`), e.g.
`RLHF_K8S_GPU='{"gpu_count": 4, "node_selector": {"pool": "h100"}, "gpu_products": []}'`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

GPU_POOL = "gpu"
K8S_CONFIG_TAG = "dagster-k8s/config"  # the op tag dagster-k8s reads per step
GPU_SETTINGS_ENV = "RLHF_K8S_GPU"
EXECUTOR_ENV = "RLHF_EXECUTOR"
EXECUTORS = ("multiprocess", "k8s")

# Values of the `nvidia.com/gpu.product` node label that NVIDIA's GPU feature discovery sets on
# A100, H100 and H200 nodes; the default placement for GPU steps.
DATACENTER_GPU_PRODUCTS = (
    "NVIDIA-A100-SXM4-40GB",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-A100-PCIE-40GB",
    "NVIDIA-A100-80GB-PCIe",
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-H100-PCIe",
    "NVIDIA-H100-NVL",
    "NVIDIA-H200",
)


class GpuNodeRequest(BaseModel):
    """What a GPU step's pod asks Kubernetes for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_count: int = Field(1, gt=0, description="GPUs per step pod (accelerate launch uses them all)")
    gpu_resource: str = Field("nvidia.com/gpu", description="the extended resource the device plugin exposes")
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="exact-match node labels",
    )
    gpu_products: list[str] = Field(
        default_factory=lambda: list(DATACENTER_GPU_PRODUCTS),
        description="allowed `nvidia.com/gpu.product` label values (node affinity); empty: any GPU",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="tolerations for tainted GPU nodes",
    )
    cpu: str | None = Field("4", description="CPU request of a GPU step (None: no request)")
    memory: str | None = Field("32Gi", description="memory request of a GPU step (None: no request)")


def gpu_node_request_from_env(environ: dict[str, str] | None = None) -> GpuNodeRequest:
    """The GPU pod settings in `$RLHF_K8S_GPU` (JSON), or the defaults when it is unset."""
    raw = (os.environ if environ is None else environ).get(GPU_SETTINGS_ENV, "").strip()
    if not raw:
        return GpuNodeRequest()
    try:
        return GpuNodeRequest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as error:
        raise ValueError(f"${GPU_SETTINGS_ENV} is not a valid GPU node request (JSON object of GpuNodeRequest fields): {error}") from error


def gpu_k8s_config(request: GpuNodeRequest) -> dict[str, Any]:
    """The `dagster-k8s/config` value (UserDefinedDagsterK8sConfig shape) for a GPU step."""
    count = str(request.gpu_count)
    requests = {request.gpu_resource: count}
    if request.cpu:
        requests["cpu"] = request.cpu
    if request.memory:
        requests["memory"] = request.memory
    pod_spec: dict[str, Any] = {"tolerations": [dict(t) for t in request.tolerations]}
    if request.node_selector:
        pod_spec["node_selector"] = dict(request.node_selector)
    if request.gpu_products:
        pod_spec["affinity"] = {"node_affinity": {"required_during_scheduling_ignored_during_execution": {
            "node_selector_terms": [{"match_expressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": list(request.gpu_products)},
            ]}],
        }}}
    return {
        # Extended resources such as GPUs must have equal requests and limits.
        "container_config": {"resources": {"requests": requests, "limits": {request.gpu_resource: count}}},
        "pod_spec_config": pod_spec,
    }


def gpu_op_tags(request: GpuNodeRequest | None = None) -> dict[str, str]:
    """Op tags for a GPU asset: its step pod requests GPUs on a GPU node (ignored off Kubernetes)."""
    return {K8S_CONFIG_TAG: json.dumps(gpu_k8s_config(request or gpu_node_request_from_env()), sort_keys=True)}


def pipeline_executor(name: str | None = None) -> dg.ExecutorDefinition:
    """The job's executor: `multiprocess` (Dagster's default, one machine) or `k8s` (one pod per step).

    `name` defaults to `$RLHF_EXECUTOR`, so the same code location runs locally and, in the Helm
    chart's user deployment with `RLHF_EXECUTOR=k8s`, on the cluster.
    """
    name = (name or os.environ.get(EXECUTOR_ENV) or "multiprocess").strip()
    if name == "multiprocess":
        # Accepts the usual `execution: {config: {multiprocess: ...} | {in_process: ...}}` run config.
        return dg.multi_or_in_process_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"${EXECUTOR_ENV}={name!r} is not an executor; use one of {', '.join(EXECUTORS)}")
