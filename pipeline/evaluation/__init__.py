"""Evaluation: base vs SFT vs PPO on held-out prompts (`evaluate`), pairwise judges, the report."""
