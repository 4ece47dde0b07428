"""Supervised fine-tuning with TRL's `SFTTrainer` on prompt/completion pairs, loss on answer tokens only."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pipeline.data.conversations import assistant_turn_examples
from pipeline.data.records import split_held_out
from pipeline.settings import AssistantTurns, SftSettings
from pipeline.storage.checkpoints import TrainingScratch
from pipeline.training.chat_format import render_prompt
from pipeline.training.curves import SFT_PANELS, plot_training_curves
from pipeline.training.device import select_device
from pipeline.training.generation import generate
from pipeline.training.progress import quiet_trainer, trainer_progress
from pipeline.training.tensorboard_log import ScalarLog, publish_event_files, trainer_callback
from pipeline.training.trainers import checkpoint_arguments, fit_to_context_window, save_trained_model, trainer_arguments

logger = logging.getLogger(__name__)


def to_prompt_completion(tokenizer, records: Sequence[dict[str, Any]], assistant_turns: AssistantTurns = "all"):
    """A `datasets.Dataset` of rendered chat prompts and raw answers (TRL appends EOS to each answer).

    A record with `messages` is a conversation: it becomes one example per assistant turn, its
    context rendered by the tokenizer's chat template, so the loss falls on assistant turns only.
    """
    from datasets import Dataset

    prompts, completions = [], []
    for record in records:
        if record.get("messages"):
            examples = assistant_turn_examples(tokenizer, record["messages"], assistant_turns)
        else:
            examples = [(render_prompt(tokenizer, record["prompt"]), record["completion"])]
        for prompt, completion in examples:
            prompts.append(prompt)
            completions.append(completion)
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def sft_trainer_class(settings: SftSettings):
    """TRL's `SFTTrainer`, or, where the fused LM head is off, the same trainer with the plain loss on full logits."""
    from transformers import Trainer
    from trl import SFTTrainer

    fused = settings.fused_lm_head == "on" or (
        settings.fused_lm_head == "auto" and select_device(settings.device).device.type == "cuda"
    )
    if fused:
        return SFTTrainer

    class SFTTrainerWithLogitsLoss(SFTTrainer):
        """The mean cross-entropy over completion tokens from the model's own logits (`Trainer.compute_loss`):
        the loss TRL's fused head computes, without its chunked kernel and its entropy/accuracy metrics."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return SFTTrainerWithLogitsLoss


def sft_config(settings: SftSettings, output_dir: str, has_eval: bool, save_checkpoints: bool = False):
    from trl import SFTConfig

    arguments = trainer_arguments(settings, output_dir)
    if has_eval:  # the held-out loss through training: the curve that shows SFT ran to convergence
        arguments.update(eval_strategy="steps", eval_steps=settings.held_out_eval_every)
    return SFTConfig(
        **arguments,
        per_device_eval_batch_size=settings.batch_size,
        completion_only_loss=True,
        packing=False,
        weight_decay=settings.weight_decay,
        **checkpoint_arguments(settings.checkpoint_every_steps, enabled=save_checkpoints),
        dataset_num_proc=None,
        do_eval=has_eval,
    )


def train_sft(
    base_dir: Path, records: Sequence[dict[str, Any]], output_dir: Path, settings: SftSettings,
    checkpoints: TrainingScratch | None = None, callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Fine-tune the base checkpoint; save model and tokenizer to `output_dir`; return the metrics.

    With `checkpoints`, the trainer saves there every `checkpoint_every_steps` steps and resumes
    from `checkpoints.resume_from` (a run that was killed); without, it keeps nothing. The curves go
    to TensorBoard beside the checkpoints (a resumed run continues them) and then into `output_dir`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)  # our artifacts are safetensors
    settings = fit_to_context_window(settings, model.config)
    train, held_out = split_held_out(records, settings.held_out_fraction, settings.seed)
    scratch_dir = nullcontext(str(checkpoints.directory)) if checkpoints else tempfile.TemporaryDirectory(prefix="sft-trainer-")
    resume_from = checkpoints.resume_from if checkpoints else None
    with scratch_dir as scratch:
        tensorboard = trainer_callback(Path(scratch), checkpoints.resume_step if checkpoints else 0)
        trainer = sft_trainer_class(settings)(
            model=model,
            args=sft_config(settings, scratch, has_eval=bool(held_out), save_checkpoints=checkpoints is not None),
            train_dataset=to_prompt_completion(tokenizer, train, settings.assistant_turns),
            eval_dataset=to_prompt_completion(tokenizer, held_out, settings.assistant_turns) if held_out else None,
            processing_class=tokenizer,
            callbacks=[tensorboard, trainer_progress("sft_checkpoint: SFT"), *callbacks],
        )
        quiet_trainer(trainer)
        held_out_loss_before = trainer.evaluate()["eval_loss"] if held_out else None
        if resume_from is not None:
            logger.info(f"SFT resumes from {resume_from}")
        started = time.monotonic()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_seconds = time.monotonic() - started
        held_out_loss = trainer.evaluate()["eval_loss"] if held_out else None
        loss_curve = [
            {"step": log["step"], "loss": log["loss"]} for log in trainer.state.log_history if "loss" in log
        ]
        held_out_curve = [
            {"step": log["step"], "held_out_loss": log["eval_loss"]} for log in trainer.state.log_history if "eval_loss" in log
        ]
        model = save_trained_model(trainer, tokenizer, output_dir)
        if model is None:  # another rank under `accelerate launch`: rank 0 evaluates and reports
            return {}

        samples = generate(
            model, tokenizer, [r["prompt"] for r in (held_out or train)[: settings.n_format_samples]],
            max_new_tokens=settings.max_new_tokens,
        )
        rates = {
            "format_adherence": sum(g.well_formatted for g in samples) / len(samples),
            "ends_with_eos_rate": sum(g.ended_with_eos for g in samples) / len(samples),
            "role_marker_echo_rate": sum(g.echoed_role_marker for g in samples) / len(samples),
        }
        with ScalarLog(Path(scratch)) as scalars:  # the end-of-training evaluation, at the last step
            scalars.log(rates, trainer.state.global_step, prefix="eval/")
        publish_event_files(Path(scratch), output_dir)
    return {
        "train_loss": result.training_loss,
        "held_out_loss_before": held_out_loss_before,
        "held_out_loss": held_out_loss,
        "n_train": len(train),
        "n_train_examples": len(trainer.train_dataset),
        "n_held_out": len(held_out),
        "total_steps": trainer.state.max_steps,
        "resumed_from_step": checkpoints.resume_step if checkpoints else 0,
        "train_seconds_this_run": train_seconds,
        **rates,
        "loss_curve": loss_curve,
        "held_out_loss_curve": held_out_curve,
        "samples": [
            {"prompt": g.prompt, "response": g.response, "ended_with_eos": g.ended_with_eos}
            for g in samples[:8]
        ],
        "settings": settings.model_dump(),
    }


def plot_loss_curves(metrics: dict[str, Any], path: Path) -> bool:
    """Training loss and held-out loss against the step: flat held-out loss at the end means SFT converged."""
    rows = [*(metrics.get("loss_curve") or []), *(metrics.get("held_out_loss_curve") or [])]
    return plot_training_curves(rows, path, SFT_PANELS, x_key="step", columns=1, x_label="optimizer step")
