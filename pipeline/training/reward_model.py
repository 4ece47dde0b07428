"""Reward model: TRL's `RewardTrainer` (Bradley-Terry) on a scalar head initialised from the SFT checkpoint.

One implementation reads the reward: `last_token_scores`, the scalar head on the hidden state of each
sequence's last token (the EOS of prompt + response + EOS), in a packed forward pass. PPO scores its
rollouts with it (`pipeline.ppo.rollout.reward_scores`, on token ids); `score` is the same for
(prompt, response) texts, which the reward model's held-out evaluation and the evaluation report use.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from pipeline.data.records import split_held_out
from pipeline.data.statistics import pearson_correlation
from pipeline.settings import RewardSettings
from pipeline.storage.checkpoints import TrainingScratch
from pipeline.training.chat_format import render_prompt
from pipeline.training.packing import PackedSequences, pack, packed_hidden_states
from pipeline.training.progress import quiet_trainer, trainer_progress
from pipeline.training.tensorboard_log import ScalarLog, publish_event_files, trainer_callback
from pipeline.training.trainers import checkpoint_arguments, fit_to_context_window, save_trained_model, trainer_arguments

logger = logging.getLogger(__name__)


def to_preference_dataset(tokenizer, pairs: Sequence[dict[str, Any]]):
    """Explicit-prompt preference format; TRL appends EOS to chosen and rejected."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [render_prompt(tokenizer, p["prompt"]) for p in pairs],
        "chosen": [p["chosen"] for p in pairs],
        "rejected": [p["rejected"] for p in pairs],
    })


def count_too_long(tokenizer, pairs: Sequence[dict[str, Any]], max_length: int) -> int:
    """Pairs TRL's RewardTrainer would silently drop: prompt + either answer + EOS over max_length."""
    dropped = 0
    for p in pairs:
        prompt = render_prompt(tokenizer, p["prompt"])
        lengths = [
            len(tokenizer(prompt + answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
            for answer in (p["chosen"], p["rejected"])
        ]
        dropped += max(lengths) > max_length
    return dropped


def score_head(model) -> torch.nn.Module:
    """The linear head of a sequence-classification model (`score` in Llama, Qwen, Mistral, GPT-NeoX...)."""
    head = getattr(model, "score", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no `score` head; a reward model here is a scalar-head "
                         "AutoModelForSequenceClassification (num_labels=1)")
    return head


@torch.inference_mode()
def last_token_scores(reward_model, packed: PackedSequences) -> torch.Tensor:
    """r_phi(x, y): the scalar head at each packed sequence's last token (its EOS, when it has one), (B,), float32."""
    hidden = packed_hidden_states(getattr(reward_model, reward_model.base_model_prefix), packed)
    return score_head(reward_model)(hidden[packed.last_rows, packed.last_cols]).squeeze(-1).float()


def score(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32, max_length: int = 512) -> list[float]:
    """Scalar reward for each (raw prompt, response) pair: `last_token_scores` on prompt + response + EOS.

    Each text is cut to `max_length` tokens, as the trainer cuts its training pairs.
    """
    device = next(model.parameters()).device
    model.eval()
    tokenizer.padding_side = "left"
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            render_prompt(tokenizer, prompt) + response + tokenizer.eos_token
            for prompt, response in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
        ]
        encoded = tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True, max_length=max_length,
        ).to(device)
        # Left-padded rows with nothing after column `width`: pack them as whole sequences.
        packed = pack(encoded["input_ids"], encoded["attention_mask"], encoded["input_ids"].shape[1])
        scores.extend(last_token_scores(model, packed).tolist())
    return scores


def calibration_table(margins: Sequence[float], n_bins: int, seed: int) -> list[dict[str, float]]:
    """Reliability of P(A preferred) = sigmoid(r_A - r_B), with each pair's A/B order drawn at random.

    Every pair is labelled "chosen wins", so presenting both orders at random makes the predicted
    probabilities span 0..1 and the table meaningful: in a calibrated model, each bin's observed
    frequency matches its mean predicted probability.
    """
    rng = random.Random(f"calibration:{seed}")
    points = []
    for margin in margins:
        chosen_first = rng.random() < 0.5
        signed = margin if chosen_first else -margin
        points.append((1 / (1 + math.exp(-signed)), 1.0 if chosen_first else 0.0))
    table = []
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        in_bin = [(p, y) for p, y in points if low <= p < high or (b == n_bins - 1 and p == 1.0)]
        if in_bin:
            table.append({
                "bin": f"{low:.1f}-{high:.1f}",
                "count": len(in_bin),
                "mean_predicted": sum(p for p, _ in in_bin) / len(in_bin),
                "observed": sum(y for _, y in in_bin) / len(in_bin),
            })
    return table


def evaluate_reward_model(model, tokenizer, pairs: Sequence[dict[str, Any]], settings: RewardSettings) -> dict[str, Any]:
    prompts = [p["prompt"] for p in pairs]
    chosen = score(model, tokenizer, prompts, [p["chosen"] for p in pairs], max_length=settings.max_length)
    rejected = score(model, tokenizer, prompts, [p["rejected"] for p in pairs], max_length=settings.max_length)
    margins = [c - r for c, r in zip(chosen, rejected)]
    lengths = [len(p["chosen"]) for p in pairs] + [len(p["rejected"]) for p in pairs]
    per_mode: dict[str, list[bool]] = {}
    for pair, margin in zip(pairs, margins):
        per_mode.setdefault(pair.get("failure_mode") or "unknown", []).append(margin > 0)
    return {
        "held_out_accuracy": sum(m > 0 for m in margins) / len(margins),
        "mean_margin": sum(margins) / len(margins),
        "reward_length_correlation": pearson_correlation(chosen + rejected, lengths),
        "accuracy_by_failure_mode": {mode: sum(v) / len(v) for mode, v in sorted(per_mode.items())},
        "calibration": calibration_table(margins, settings.calibration_bins, settings.seed),
        "examples": [
            {"prompt": p["prompt"], "chosen_score": c, "rejected_score": r, "failure_mode": p.get("failure_mode")}
            for p, c, r in list(zip(pairs, chosen, rejected))[:8]
        ],
    }


def reward_model_from_sft(sft_dir: Path, seed: int):
    """The SFT model with a new scalar score head, initialised from `seed`.

    The head is the only new weight; unseeded, it took whatever random state the process was in, so the
    same SFT checkpoint, pairs and settings trained another reward model when the stage ran after other
    stages than before (seed 0 of the default, a whole job against `preference_data*` re-run alone:
    held-out accuracy 0.787 and 0.803, PPO's gain +0.137 and +0.156).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1, use_safetensors=True)


def train_reward_model(
    sft_dir: Path, pairs: Sequence[dict[str, Any]], output_dir: Path, settings: RewardSettings,
    checkpoints: TrainingScratch | None = None, callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train the scalar-head RM from the SFT checkpoint; save it to `output_dir`; return its evaluation.

    Checkpoints work as in SFT (`pipeline.training.sft.train_sft`): with `checkpoints`, the trainer
    saves there every `checkpoint_every_steps` steps and resumes from `checkpoints.resume_from`.
    Under `accelerate launch` every rank trains and only the main one evaluates (others return {}).
    """
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = reward_model_from_sft(sft_dir, settings.seed)
    model.config.pad_token_id = tokenizer.pad_token_id
    settings = fit_to_context_window(settings, model.config)
    train, held_out = split_held_out(pairs, settings.held_out_fraction, settings.seed)
    n_dropped = count_too_long(tokenizer, train, settings.max_length)
    if n_dropped == len(train):
        raise ValueError(f"all {len(train)} training pairs exceed max_length={settings.max_length} tokens")
    scratch_dir = nullcontext(str(checkpoints.directory)) if checkpoints else tempfile.TemporaryDirectory(prefix="rm-trainer-")
    with scratch_dir as scratch:
        args = RewardConfig(
            **trainer_arguments(settings, scratch),
            center_rewards_coefficient=settings.center_rewards_coefficient or None,
            **checkpoint_arguments(settings.checkpoint_every_steps, enabled=checkpoints is not None),
        )
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=to_preference_dataset(tokenizer, train), processing_class=tokenizer,
            # TensorBoard beside the checkpoints, as in SFT: a resumed run continues the curves.
            callbacks=[trainer_callback(Path(scratch), checkpoints.resume_step if checkpoints else 0),
                       trainer_progress("reward_model: Bradley-Terry training"), *callbacks],
        )
        quiet_trainer(trainer)
        resume_from = checkpoints.resume_from if checkpoints else None
        if resume_from is not None:
            logger.info(f"the reward model resumes from {resume_from}")
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        loss_curve = [
            {"step": log["step"], "loss": log["loss"], "accuracy": log.get("accuracy")}
            for log in trainer.state.log_history if "loss" in log
        ]
        model = save_trained_model(trainer, tokenizer, output_dir)
        if model is None:  # another rank under `accelerate launch`: rank 0 evaluates and reports
            return {}
        metrics = evaluate_reward_model(model, tokenizer, held_out or train, settings)
        with ScalarLog(Path(scratch)) as scalars:  # the held-out evaluation, at the last step
            scalars.log(metrics, trainer.state.global_step, prefix="eval/")
        publish_event_files(Path(scratch), output_dir)
    metrics.update({
        "train_loss": result.training_loss,
        "n_train": len(train),
        "n_held_out": len(held_out),
        "n_dropped_too_long": n_dropped,
        "total_steps": trainer.state.max_steps,
        "resumed_from_step": checkpoints.resume_step if checkpoints else 0,
        "loss_curve": loss_curve,
        "settings": settings.model_dump(),
    })
    return metrics
