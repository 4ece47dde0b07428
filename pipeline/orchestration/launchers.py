"""Multi-GPU training: a stage's trainer under `accelerate launch` (DDP, DeepSpeed ZeRO or FSDP), through Dagster Pipes.

The asset stays what it is (reads its inputs, stages its artifact directory, returns metadata);
only the training call moves into processes that `accelerate launch` starts, one per GPU:

    asset ──PipesSubprocessClient──► python -m accelerate.commands.launch --config_file <generated>
                                         --num_processes N -m pipeline.orchestration.launch_worker <spec.json>
          ◄── logs, progress, metrics ── rank 0 (dagster_pipes)

`spec.json` names the stage, its inputs, the staging directory to write the model into and the
settings. Every rank trains; rank 0 alone writes the model (gathered from ZeRO-3 / FSDP shards),
checkpoints and event logs, evaluates, streams progress to the Dagster event log and reports the
metrics dict back as a Pipes custom message, which the asset turns into its `*_eval.json` /
summary and metadata exactly as it does for in-process training.

One implementation for the three training assets (`sft_checkpoint`, `reward_model`, `ppo_policy`):
each calls `train_with_launcher` with its in-process training call, and its config extends
`LaunchSettings`: `launcher: accelerate`, `num_processes: N`,
`distributed: ddp | deepspeed_zero2 | deepspeed_zero3 | fsdp` (or `accelerate_config_file`).
On a machine without GPUs, N processes run on the CPU with the gloo backend (how the tests run DDP).
PPO runs DDP only (`STAGE_STRATEGIES`): its sampling needs whole policy weights on every rank.
DeepSpeed is not a dependency of the CPU install: add `deepspeed` to the GPU image; DDP and FSDP need only torch.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.data.records import write_jsonl
from pipeline.settings import LaunchSettings

WORKER_MODULE = "pipeline.orchestration.launch_worker"
METRICS_MESSAGE = "metrics"  # `kind` of the Pipes custom message that carries a stage's metrics
PIPES_CLIENT_KEY = "pipes_subprocess_client"


def accelerate_config(settings: LaunchSettings, use_cpu: bool, mixed_precision: str) -> dict[str, Any]:
    """An `accelerate launch --config_file` document for one machine."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": settings.num_processes,
        "gpu_ids": "all",
        "mixed_precision": mixed_precision,
        "use_cpu": use_cpu,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "downcast_bf16": "no",
        "distributed_type": "NO",
    }
    if use_cpu:  # gloo: DDP is the only CPU strategy (ZeRO and FSDP shard GPU memory)
        config["distributed_type"] = "MULTI_CPU" if settings.num_processes > 1 else "NO"
        return config
    if settings.distributed == "ddp":
        config["distributed_type"] = "MULTI_GPU" if settings.num_processes > 1 else "NO"
    elif settings.distributed.startswith("deepspeed_zero"):
        stage = int(settings.distributed[-1])
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": stage,
            # Must match the trainer's arguments (no accumulation, max_grad_norm 1.0).
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": stage == 3,
            # ZeRO-3 keeps only shards on each GPU; gather them into one 16-bit state dict to save.
            "zero3_save_16bit_model": stage == 3,
        }
    elif settings.distributed == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            # Without a layer class, accelerate wraps the model's `_no_split_modules` (decoder layers).
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_reshard_after_forward": True,
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": False,
        }
    return config


def launch_command(spec_path: Path, settings: LaunchSettings, config_path: Path, use_cpu: bool) -> list[str]:
    """`accelerate launch` (from this interpreter's environment) of the worker module on the spec."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path),
               "--num_processes", str(settings.num_processes)]
    if use_cpu and settings.num_processes > 1:
        # `--cpu` starts one process whatever num_processes says; accelerate's torchrun launcher (named
        # multi_gpu) starts N, which run on the CPU with gloo given ACCELERATE_USE_CPU (`launch_environment`).
        command.append("--multi_gpu")
    elif use_cpu:
        command.append("--cpu")
    if settings.main_process_port:
        command += ["--main_process_port", str(settings.main_process_port)]
    return command + ["-m", WORKER_MODULE, str(spec_path)]


def launch_environment(use_cpu: bool) -> dict[str, str]:
    """Environment of the launched processes (on top of the step's)."""
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


# Stages whose training supports only some strategies: PPO samples from the plain policy on every rank,
# which needs whole weights there (ZeRO-3 / FSDP generation would have to gather them; not built yet).
STAGE_STRATEGIES: dict[str, tuple[str, ...]] = {"ppo_policy": ("ddp",)}


def check_launch(settings: LaunchSettings, use_cpu: bool, stage: str | None = None) -> None:
    """Refuse launches that cannot work, before any process starts."""
    supported = STAGE_STRATEGIES.get(stage or "")
    if supported and settings.distributed not in supported and not settings.accelerate_config_file:
        raise ValueError(f"{stage} runs with distributed: {' | '.join(supported)}, not {settings.distributed}")
    if use_cpu and settings.num_processes > 1 and settings.distributed != "ddp" and not settings.accelerate_config_file:
        raise ValueError(
            f"distributed={settings.distributed} shards GPU memory, but training runs on the CPU; "
            "use distributed: ddp (gloo) there, or attach GPUs"
        )
    if not use_cpu:
        import torch

        visible = torch.cuda.device_count()
        if settings.num_processes > visible:
            raise ValueError(f"num_processes={settings.num_processes} but only {visible} GPU(s) are visible to this step")
    if settings.accelerate_config_file and not Path(settings.accelerate_config_file).is_file():
        raise ValueError(f"accelerate_config_file {settings.accelerate_config_file!r} does not exist")


def launcher_label(launch: LaunchSettings) -> str:
    """The `launcher` metadata value: how a training asset ran ("in_process", "accelerate x2 (ddp)")."""
    if launch.launcher == "in_process":
        return "in_process"
    how = "own config" if launch.accelerate_config_file else launch.distributed
    return f"accelerate x{launch.num_processes} ({how})"


def train_with_launcher(
    context,
    pipes_client,
    stage: str,
    launch: LaunchSettings,
    train_in_process: Callable[[], dict[str, Any]],
    inputs: dict[str, Any],
    records: list[dict[str, Any]],
    output_dir: Path,
    settings: BaseModel,
) -> dict[str, Any]:
    """A training asset's one call: `train_in_process()` in this step, or the same training under
    `accelerate launch` (the worker calls the same library function from `inputs`, `records` and `settings`)."""
    if launch.launcher == "in_process":
        return train_in_process()
    return run_under_accelerate(context, pipes_client, stage, inputs, records, output_dir, settings, launch)


def run_under_accelerate(
    context,
    pipes_client,
    stage: str,
    inputs: dict[str, Any],
    records: list[dict[str, Any]],
    output_dir: Path,
    settings: BaseModel,
    launch: LaunchSettings,
) -> dict[str, Any]:
    """Train `stage` under `accelerate launch` and return the metrics its rank 0 reported through Pipes.

    `context` is the asset's execution context and `pipes_client` a `dg.PipesSubprocessClient`;
    `settings` are the stage's training settings (its `device` decides GPU or CPU).
    """
    import dagster as dg

    import torch

    # Not select_device: this process must not claim a GPU of its own, the launched ranks use them all.
    use_cpu = getattr(settings, "device", "auto") == "cpu" or not torch.cuda.is_available()
    check_launch(launch, use_cpu, stage)
    if use_cpu:
        settings = settings.model_copy(update={"device": "cpu"})
    mixed_precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    with tempfile.TemporaryDirectory(prefix=f"{stage}-accelerate-") as scratch:
        scratch_dir = Path(scratch)
        if launch.accelerate_config_file:
            config_path = Path(launch.accelerate_config_file)
        else:
            config_path = scratch_dir / "accelerate_config.yaml"
            config_path.write_text(yaml.safe_dump(accelerate_config(launch, use_cpu, mixed_precision), sort_keys=True))
        records_path = scratch_dir / "records.jsonl"
        write_jsonl(records, records_path)
        spec_path = scratch_dir / "spec.json"
        spec_path.write_text(json.dumps({
            "stage": stage,
            "inputs": {name: _jsonable(value) for name, value in inputs.items()},
            "records": str(records_path),
            "output_dir": str(output_dir),
            "settings": settings.model_dump(mode="json"),
        }, indent=2))
        command = launch_command(spec_path, launch, config_path, use_cpu)
        context.log.info(f"{stage}: {launch.num_processes} process(es), {launch.distributed}: {shlex.join(command)}")
        invocation = pipes_client.run(
            command=command, context=context, env=launch_environment(use_cpu),
        )
    reports = [
        message["metrics"] for message in invocation.get_custom_messages()
        if isinstance(message, dict) and message.get("kind") == METRICS_MESSAGE
    ]
    if not reports:
        raise dg.Failure(f"{stage}: the accelerate worker exited without reporting metrics (see the step's logs)")
    return reports[-1]


def _jsonable(value: Any) -> Any:
    """Paths as strings and dataclasses (e.g. a `TrainingScratch`) as dicts, for the worker's spec."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {field.name: _jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    return value
