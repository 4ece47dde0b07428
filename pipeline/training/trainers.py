"""What SFT and the reward model share around TRL's trainers: their common arguments, and saving what they trained.

Both build their trainer's config from `trainer_arguments(settings, output_dir)` and
`checkpoint_arguments(...)` plus their own options, and both end with
`save_trained_model(trainer, tokenizer, output_dir)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

from pipeline.settings import RewardSettings, SftSettings
from pipeline.training.context_window import context_length, fit_max_length
from pipeline.training.device import select_device

logger = logging.getLogger(__name__)
Settings = TypeVar("Settings", SftSettings, RewardSettings)

TRAINING_ARGS_FILE = "training_args.bin"  # a pickle the HF Trainer saves with the model; not part of our artifacts


def fit_to_context_window(settings: Settings, model_config) -> Settings:
    """`settings` with `max_length` no longer than the model's context window (a real checkpoint's can be short)."""
    fitted = fit_max_length(settings.max_length, context_length(model_config))
    if fitted == settings.max_length:
        return settings
    logger.warning(f"max_length={settings.max_length} is longer than the model's context window; training on {fitted} tokens")
    return settings.model_copy(update={"max_length": fitted})


def trainer_arguments(settings: SftSettings | RewardSettings, output_dir: str) -> dict[str, Any]:
    """The arguments both trainers take from their settings: a cosine schedule with warmup, the loss and
    learning rate logged at every step (the TensorBoard curves, `sft_eval.json`'s loss curve), no
    evaluation or reporting inside the trainer, the device's precision, and gradient checkpointing only when asked for. The
    Trainer's own progress bars are off: each stage draws one (`pipeline.training.progress`), and its
    curves go to TensorBoard through the callback of `pipeline.training.tensorboard_log`."""
    choice = select_device(settings.device)
    return {
        "output_dir": output_dir,
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "warmup_steps": settings.warmup_ratio,
        "lr_scheduler_type": "cosine",
        "logging_steps": 1,
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": settings.seed,
        "use_cpu": choice.device.type == "cpu",
        "bf16": choice.use_bf16,
        "dataloader_num_workers": 0,
        "gradient_checkpointing": settings.gradient_checkpointing,
    }


def checkpoint_arguments(every_steps: int, enabled: bool) -> dict[str, Any]:
    """The trainer's checkpointing: every `every_steps` steps into its output dir (the asset's scratch), or none."""
    if not enabled:
        return {"save_strategy": "no"}
    # Two, not one: if the process dies while writing the newest, the one before is complete.
    return {"save_strategy": "steps", "save_steps": every_steps, "save_total_limit": 2}


def save_trained_model(trainer, tokenizer, output_dir: Path):
    """Write the trained model and tokenizer; return the model on the main process, None on other ranks.

    In one process this is the trainer's model itself. Under `accelerate launch`, DeepSpeed ZeRO-3
    and FSDP hold only shards on each rank: the trainer gathers them into a full state dict and
    the main process writes it, then reloads it whole for evaluation.
    """
    distributed = trainer.accelerator.num_processes > 1 or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    if not distributed:
        model = trainer.model.eval()
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        return model
    trainer.save_model(str(output_dir))  # every rank takes part in the gather; the main one writes
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None
    Path(output_dir, TRAINING_ARGS_FILE).unlink(missing_ok=True)
    tokenizer.save_pretrained(output_dir)
    model_class = type(trainer.accelerator.unwrap_model(trainer.model))
    return model_class.from_pretrained(output_dir, use_safetensors=True).to(trainer.args.device).eval()
