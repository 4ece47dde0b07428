"""A tiny SFT policy and reward model on disk for PPO tests (a random one-layer Llama and a scalar head)."""

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from pipeline.data.generator import pretraining_text, prompt_records
from pipeline.settings import TinyModelSpec
from pipeline.training.base_model import build_tiny_llama, train_tokenizer

SPEC = TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def tiny_sft_and_reward_model(root: Path, n_prompts: int = 24) -> tuple[Path, Path, list[str]]:
    """(SFT dir, RM dir, PPO prompts): the RM shares the policy's tokenizer and has a large random score head."""
    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=512)
    sft = build_tiny_llama(tokenizer, SPEC, seed=0)
    sft.save_pretrained(root / "sft")
    tokenizer.save_pretrained(root / "sft")
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(root / "sft", num_labels=1)
    torch.nn.init.normal_(rm.score.weight, std=1.0)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    return root / "sft", root / "rm", [r["prompt"] for r in prompt_records(n_prompts, 0, "ppo")]
