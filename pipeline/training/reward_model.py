"""Reward model: TRL's `RewardTrainer` (Bradley-Terry) on a scalar head initialised from the SFT checkpoint.

`score` reads the reward at the last non-pad token of prompt + response + EOS; PPO and the
evaluation report use the same function, so every stage scores answers the same way.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.data.records import split_held_out
from pipeline.settings import RewardSettings
from pipeline.training.chat_format import render_prompt
from pipeline.training.device import select_device
from pipeline.training.logprobs import position_ids_for
from pipeline.training.trained_model import save_trained_model

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


@torch.no_grad()
def score(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32, max_length: int = 512) -> list[float]:
    """Scalar reward for each (raw prompt, response) pair."""
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
        # Positions start at the first real token, as in training, whatever the left padding.
        position_ids = position_ids_for(encoded["attention_mask"])
        scores.extend(model(**encoded, position_ids=position_ids).logits[:, 0].float().tolist())
    return scores


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    return cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else 0.0


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
        "reward_length_correlation": _pearson(chosen + rejected, [float(n) for n in lengths]),
        "accuracy_by_failure_mode": {mode: sum(v) / len(v) for mode, v in sorted(per_mode.items())},
        "calibration": calibration_table(margins, settings.calibration_bins, settings.seed),
        "examples": [
            {"prompt": p["prompt"], "chosen_score": c, "rejected_score": r, "failure_mode": p.get("failure_mode")}
            for p, c, r in list(zip(pairs, chosen, rejected))[:8]
        ],
    }


def train_reward_model(sft_dir: Path, pairs: Sequence[dict[str, Any]], output_dir: Path, settings: RewardSettings) -> dict[str, Any]:
    """Train the scalar-head RM from the SFT checkpoint; save it to `output_dir`; return its evaluation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1, use_safetensors=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    train, held_out = split_held_out(pairs, settings.held_out_fraction, settings.seed)
    n_dropped = count_too_long(tokenizer, train, settings.max_length)
    if n_dropped == len(train):
        raise ValueError(f"all {len(train)} training pairs exceed max_length={settings.max_length} tokens")
    choice = select_device(settings.device)
    with tempfile.TemporaryDirectory(prefix="rm-trainer-") as scratch:
        args = RewardConfig(
            output_dir=scratch,
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            max_length=settings.max_length,
            warmup_steps=settings.warmup_ratio,
            lr_scheduler_type="cosine",
            center_rewards_coefficient=settings.center_rewards_coefficient or None,
            logging_steps=5,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            seed=settings.seed,
            use_cpu=choice.device.type == "cpu",
            bf16=choice.use_bf16,
            dataloader_num_workers=0,
        )
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=to_preference_dataset(tokenizer, train), processing_class=tokenizer,
        )
        result = trainer.train()
        loss_curve = [
            {"step": log["step"], "loss": log["loss"], "accuracy": log.get("accuracy")}
            for log in trainer.state.log_history if "loss" in log
        ]
    model = save_trained_model(trainer, tokenizer, output_dir)
    metrics = evaluate_reward_model(model, tokenizer, held_out or train, settings)
    metrics.update({
        "train_loss": result.training_loss,
        "n_train": len(train),
        "n_held_out": len(held_out),
        "n_dropped_too_long": n_dropped,
        "loss_curve": loss_curve,
        "settings": settings.model_dump(),
    })
    return metrics
