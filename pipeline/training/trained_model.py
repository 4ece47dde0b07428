"""Saving what a TRL trainer trained, in one process or gathered from the shards of `accelerate launch`.

SFT and the reward model both end with `save_trained_model(trainer, tokenizer, output_dir)`.
"""

from __future__ import annotations

from pathlib import Path

TRAINING_ARGS_FILE = "training_args.bin"  # a pickle the HF Trainer saves with the model; not part of our artifacts


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
