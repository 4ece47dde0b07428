"""Multi-GPU training path: generated accelerate configs, SFT and the reward model under `accelerate launch` through Dagster Pipes."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from transformers import AutoModelForCausalLM

from assets import base, data, sft
from pipeline.settings import LaunchSettings
from pipeline.orchestration.launch_worker import STAGES
from pipeline.orchestration.launchers import (
    accelerate_config,
    check_launch,
    launch_command,
    launch_environment,
    launcher_label,
)
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource


@pytest.mark.parametrize("distributed, distributed_type", [
    ("ddp", "MULTI_GPU"), ("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED"), ("fsdp", "FSDP"),
])
def test_generated_accelerate_configs_load_in_accelerate(tmp_path, distributed, distributed_type):
    settings = LaunchSettings(launcher="accelerate", num_processes=8, distributed=distributed)
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(settings, use_cpu=False, mixed_precision="bf16")))
    loaded = load_config_from_file(str(path))
    assert loaded.distributed_type.value == distributed_type
    assert loaded.num_processes == 8 and str(loaded.mixed_precision) == "bf16"
    if distributed == "deepspeed_zero3":
        assert loaded.deepspeed_config["zero_stage"] == 3 and loaded.deepspeed_config["zero3_save_16bit_model"]
    if distributed == "fsdp":
        assert loaded.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"

    command = launch_command(Path("spec.json"), settings, path, use_cpu=False)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--cpu" not in command
    assert command[-3:] == ["-m", "pipeline.orchestration.launch_worker", "spec.json"]


def test_impossible_launches_are_refused_before_starting():
    cpu_single = accelerate_config(LaunchSettings(num_processes=1, distributed="fsdp"), use_cpu=True, mixed_precision="no")
    assert cpu_single["distributed_type"] == "NO" and cpu_single["use_cpu"] is True
    check_launch(LaunchSettings(launcher="accelerate", num_processes=2), use_cpu=True)  # DDP over gloo
    for sharded in ("deepspeed_zero2", "deepspeed_zero3", "fsdp"):
        with pytest.raises(ValueError, match=f"distributed={sharded}"):
            check_launch(LaunchSettings(launcher="accelerate", num_processes=2, distributed=sharded), use_cpu=True)
    with pytest.raises(ValueError, match="accelerate_config_file"):
        check_launch(LaunchSettings(launcher="accelerate", accelerate_config_file="/nonexistent/accelerate.yaml"), use_cpu=True)
    # PPO samples from whole weights on every rank: data parallel only.
    check_launch(LaunchSettings(launcher="accelerate", num_processes=2), use_cpu=True, stage="ppo_policy")
    with pytest.raises(ValueError, match="ppo_policy runs with distributed: ddp, not fsdp"):
        check_launch(LaunchSettings(launcher="accelerate", num_processes=8, distributed="fsdp"), use_cpu=False, stage="ppo_policy")


def test_several_cpu_processes_launch_through_torchrun_with_gloo(tmp_path):
    settings = LaunchSettings(launcher="accelerate", num_processes=2)
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(settings, use_cpu=True, mixed_precision="no")))
    assert load_config_from_file(str(path)).distributed_type.value == "MULTI_CPU"
    # `--cpu` would start one process whatever num_processes says; torchrun (accelerate's `--multi_gpu`) starts two.
    command = launch_command(Path("spec.json"), settings, path, use_cpu=True)
    assert "--multi_gpu" in command and "--cpu" not in command
    assert launch_environment(use_cpu=True)["ACCELERATE_USE_CPU"] == "true"
    single = launch_command(Path("spec.json"), LaunchSettings(launcher="accelerate"), path, use_cpu=True)
    assert "--cpu" in single and "--multi_gpu" not in single


def test_the_three_training_assets_take_the_same_launch_settings_and_label_them_alike():
    from assets.ppo import PpoConfig
    from assets.reward import RewardModelConfig
    from assets.sft import SftConfig

    for config in (SftConfig, RewardModelConfig, PpoConfig):
        assert set(LaunchSettings.model_fields) <= set(config.model_fields), config.__name__
    assert launcher_label(LaunchSettings()) == "in_process"
    assert launcher_label(LaunchSettings(launcher="accelerate", num_processes=2)) == "accelerate x2 (ddp)"
    assert launcher_label(LaunchSettings(launcher="accelerate", num_processes=8, distributed="fsdp")) == "accelerate x8 (fsdp)"
    assert sorted(STAGES) == ["ppo_policy", "reward_model", "sft_checkpoint"]


@pytest.mark.slow
def test_sft_runs_under_accelerate_launch_through_pipes(tiny_run_config, artifacts_root, dagster_instance):
    run_config = {"ops": {
        # An untrained base model is enough to exercise the launch path.
        "base_model": {"config": {**tiny_run_config["ops"]["base_model"]["config"], "pretrain_steps": 0, "pretrain_documents": 50}},
        "sft_data": {"config": {"n_records": 32}},
        "sft_checkpoint": {"config": {
            "epochs": 1, "batch_size": 8, "n_format_samples": 2, "max_new_tokens": 8, "device": "cpu",
            "launcher": "accelerate", "num_processes": 1, "distributed": "ddp",
        }},
    }}
    result = dg.materialize(
        [base.base_model, data.sft_data, sft.sft_checkpoint],
        instance=dagster_instance,
        run_config=run_config,
        resources={"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": ArtifactIOManager()},
    )
    assert result.success
    materialization = dagster_instance.get_latest_materialization_event(dg.AssetKey("sft_checkpoint")).asset_materialization
    metadata = materialization.metadata
    assert metadata["launcher"].value == "accelerate x1 (ddp)"
    path = Path(metadata["artifact_path"].value)
    sft_eval = json.loads((path / "sft_eval.json").read_text())
    assert sft_eval["n_train"] > 0 and sft_eval["held_out_loss"] is not None
    assert metadata["train_loss"].value == pytest.approx(sft_eval["train_loss"])
    AutoModelForCausalLM.from_pretrained(path)
    assert not (path / "training_args.bin").exists()

    # The worker's rank 0 logged to this run's event log through Pipes (start and training progress).
    messages = [
        record.user_message for record in dagster_instance.all_logs(result.run_id)
        if record.dagster_event is None and record.user_message
    ]
    assert any("rank 0 of 1 started" in m for m in messages), messages
    assert any(m.startswith("step ") and "loss" in m for m in messages), messages


@pytest.mark.slow
def test_reward_model_runs_on_two_processes_through_pipes(tiny_run_config, artifacts_root, dagster_instance):
    from transformers import AutoModelForSequenceClassification

    from assets import reward

    run_config = {"ops": {
        "base_model": {"config": {**tiny_run_config["ops"]["base_model"]["config"], "pretrain_steps": 0, "pretrain_documents": 50}},
        "sft_data": {"config": {"n_records": 16}},
        "preference_data": {"config": {"n_records": 40}},
        "sft_checkpoint": {"config": {"epochs": 1, "batch_size": 8, "n_format_samples": 2, "max_new_tokens": 8, "device": "cpu"}},
        "reward_model": {"config": {
            "epochs": 1, "batch_size": 4, "device": "cpu", "launcher": "accelerate", "num_processes": 2, "distributed": "ddp",
        }},
    }}
    result = dg.materialize(
        [base.base_model, data.sft_data, data.preference_data, sft.sft_checkpoint, reward.reward_model],
        instance=dagster_instance,
        run_config=run_config,
        resources={"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": ArtifactIOManager()},
    )
    assert result.success
    metadata = dagster_instance.get_latest_materialization_event(dg.AssetKey("reward_model")).asset_materialization.metadata
    assert metadata["launcher"].value == "accelerate x2 (ddp)"
    path = Path(metadata["artifact_path"].value)
    rm_eval = json.loads((path / "rm_eval.json").read_text())
    assert metadata["held_out_accuracy"].value == pytest.approx(rm_eval["held_out_accuracy"])
    assert rm_eval["n_train"] > 0 and rm_eval["total_steps"] == metadata["total_steps"].value
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    assert not (path / "training_args.bin").exists()
    messages = [
        record.user_message for record in dagster_instance.all_logs(result.run_id)
        if record.dagster_event is None and record.user_message
    ]
    assert any("reward_model: rank 0 of 2 started" in m for m in messages), messages


def test_the_two_process_overlay_merges_with_the_tiny_profile_into_a_valid_run_config():
    from dagster_shared.yaml_utils import merge_yamls

    from pipeline.definitions import defs

    profiles = Path(__file__).resolve().parents[1] / "pipeline" / "profiles"
    merged = merge_yamls([str(profiles / "tiny.yaml"), str(profiles / "accelerate_x2.yaml")])
    assert dg.validate_run_config(defs.resolve_job_def("rlhf_pipeline"), merged)
    for stage in ("sft_checkpoint", "reward_model", "ppo_policy"):
        config = merged["ops"][stage]["config"]
        assert (config["launcher"], config["num_processes"], config["distributed"]) == ("accelerate", 2, "ddp")
        assert len(config) > 3, f"{stage} keeps the tiny profile's settings"
