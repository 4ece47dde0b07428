"""Where steps run: Kubernetes pod specs built offline, the k8s run-config profile, the `gpu` pool."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_shared.yaml_utils import merge_yamls
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.execution.api import create_execution_plan
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_k8s_job_name, get_user_defined_k8s_config

from pipeline.definitions import defs
from pipeline.orchestration.execution import (
    GPU_POOL,
    GPU_SETTINGS_ENV,
    GpuNodeRequest,
    gpu_node_request_from_env,
    gpu_op_tags,
    pipeline_executor,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU = "nvidia.com/gpu"


def _step_pod_spec(step_key: str, step_tags) -> "object":
    """The pod spec dagster-k8s's step handler would submit for this step (no cluster needed)."""
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image="rlhf-pipeline:test", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{get_k8s_job_name('0123456789abcdef', step_key)}",
        component="step_worker",
        user_defined_k8s_config=get_user_defined_k8s_config(dict(step_tags or {})),
        labels={"dagster/op": step_key},
    )
    return job.spec.template.spec


def _gpu_count(pod_spec, field: str) -> int:
    resources = getattr(pod_spec.containers[0].resources or object(), field, None) or {}
    return int(resources.get(GPU, 0))


def test_gpu_requests_appear_exactly_on_gpu_pool_assets():
    gpu_assets = {
        key.to_user_string()
        for assets_def in defs.assets
        if isinstance(assets_def, dg.AssetsDefinition) and assets_def.op.pool == GPU_POOL
        for key in assets_def.keys
    }
    assert {"base_model", "base_probe", "sft_checkpoint", "reward_model"} <= gpu_assets

    plan = create_execution_plan(defs.resolve_job_def("rlhf_pipeline"))
    pods = {step.key: _step_pod_spec(step.key, step.tags) for step in plan.steps}
    assert gpu_assets <= set(pods), "every GPU asset is a step of the job"
    assert len(pods) > len(gpu_assets), "the job also has CPU steps (data assets, checks)"

    requesting_gpus = {key for key, pod in pods.items() if _gpu_count(pod, "requests") or _gpu_count(pod, "limits")}
    assert requesting_gpus == gpu_assets

    for key, pod in pods.items():
        if key in gpu_assets:
            assert _gpu_count(pod, "requests") == _gpu_count(pod, "limits") == 1
            assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
            assert any(t.key == GPU and t.operator == "Exists" for t in pod.tolerations)
            terms = pod.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
            products = terms[0].match_expressions[0].values
            assert "NVIDIA-H100-80GB-HBM3" in products and "NVIDIA-A100-SXM4-80GB" in products
        else:
            assert not pod.node_selector and not pod.tolerations and not pod.affinity, key


def test_gpu_node_request_is_configurable_from_the_environment():
    request = gpu_node_request_from_env({GPU_SETTINGS_ENV: json.dumps({
        "gpu_count": 8, "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "gpu_products": [], "tolerations": [], "cpu": None,
    })})
    assert request == GpuNodeRequest(
        gpu_count=8, node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        gpu_products=[], tolerations=[], cpu=None,
    )
    pod = _step_pod_spec("sft_checkpoint", gpu_op_tags(request))
    assert _gpu_count(pod, "requests") == _gpu_count(pod, "limits") == 8
    assert "cpu" not in pod.containers[0].resources.requests
    assert pod.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert not pod.affinity and not pod.tolerations
    assert gpu_node_request_from_env({}) == GpuNodeRequest()

    with pytest.raises(ValueError, match=GPU_SETTINGS_ENV):
        gpu_node_request_from_env({GPU_SETTINGS_ENV: '{"gpu_count": 0}'})
    with pytest.raises(ValueError, match=GPU_SETTINGS_ENV):
        gpu_node_request_from_env({GPU_SETTINGS_ENV: "gpu_count=2"})


def test_k8s_profile_is_valid_run_config_for_the_k8s_executor():
    from pipeline.definitions import all_assets

    k8s_job = dg.define_asset_job("rlhf_pipeline", selection=dg.AssetSelection.all(), executor_def=pipeline_executor("k8s"))
    job = dg.Definitions(assets=all_assets, jobs=[k8s_job], resources=defs.resources).resolve_job_def("rlhf_pipeline")
    profile = yaml.safe_load((REPO_ROOT / "pipeline" / "profiles" / "k8s.yaml").read_text())
    assert dg.validate_run_config(job, profile)
    # `-c gpu.yaml -c k8s.yaml`: Dagster deep-merges the files.
    merged = merge_yamls([str(REPO_ROOT / "pipeline" / "profiles" / name) for name in ("gpu.yaml", "k8s.yaml")])
    assert dg.validate_run_config(job, merged)
    sft_config = merged["ops"]["sft_checkpoint"]["config"]
    assert sft_config["launcher"] == "accelerate" and sft_config["num_processes"] == 4 and "learning_rate" in sft_config
    with pytest.raises(ValueError, match="RLHF_EXECUTOR"):
        pipeline_executor("slurm")


def test_shipped_instance_config_limits_the_gpu_pool():
    instance_yaml = yaml.safe_load((REPO_ROOT / ".dagster" / "dagster.yaml").read_text())
    assert instance_yaml["telemetry"] == {"enabled": False}
    with dg.instance_for_test(overrides=instance_yaml) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


@pytest.mark.slow
def test_gpu_pool_limit_serializes_gpu_steps_in_the_multiprocess_executor(tmp_path):
    instance_yaml = yaml.safe_load((REPO_ROOT / ".dagster" / "dagster.yaml").read_text())
    run_config = {"ops": {name: {"config": {"log_dir": str(tmp_path)}} for name in ("gpu_step_a", "gpu_step_b", "cpu_step")}}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(overrides=instance_yaml, temp_dir=str(tmp_path / "home")) as instance:
        with dg.execute_job(ReconstructableJob.for_file(str(Path(__file__).with_name("gpu_pool_job.py")), "gpu_pool_job"), instance=instance, run_config=run_config) as result:
            assert result.success
        limits = {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
    assert limits.get(GPU_POOL) == 1
    intervals = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    (a_start, a_end), (b_start, b_end) = intervals["gpu_a"], intervals["gpu_b"]
    assert a_end <= b_start or b_end <= a_start, f"GPU steps overlapped: {intervals}"
    assert "cpu" in intervals


def test_each_gpu_step_process_claims_its_own_gpu(tmp_path, monkeypatch):
    import fcntl
    import os

    import torch

    from pipeline.training import device

    monkeypatch.setattr(device, "_claimed_gpu", {})
    monkeypatch.setenv(device.GPU_LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)

    # Another step process holds GPU 0.
    other = os.open(tmp_path / "gpu-0.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        choice = device.select_device("auto")
        assert choice.device == torch.device("cuda:1") and choice.use_bf16
        assert current == [torch.device("cuda:1")], "the trainers' current device follows the claim"
        assert device.select_device("auto").device == torch.device("cuda:1"), "a process keeps its GPU"

        monkeypatch.setattr(device, "_claimed_gpu", {})
        assert device.claim_gpu_index(2, tmp_path) == 0, "every GPU claimed (by this process and the other): share GPU 0"
    finally:
        os.close(other)

    monkeypatch.setattr(device, "_claimed_gpu", {})
    monkeypatch.setenv("LOCAL_RANK", "3")  # under accelerate launch, accelerate places each rank
    assert device.select_device("auto").device == torch.device("cuda")
    assert device.claim_gpu_index(1, tmp_path) is None
