"""Every stage's settings, as plain pydantic models (no torch, no transformers).

The assets' typed configs extend these (`class PpoConfig(dg.Config, PpoSettings)`), so the code
location imports them when it loads; keeping them free of heavy imports makes every `dagster` and
`rlhf` command, the web UI's code server and each multiprocess step start without importing torch,
which only the stages that train or generate load. Each stage module re-exports its settings
(`from pipeline.ppo.algorithm import PpoSettings` works).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.data.conversations import AssistantTurns


# --- base_model -------------------------------------------------------------------------


class TinyModelSpec(BaseModel):
    """Shape of the default locally built Llama-style model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(2048, gt=300)
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(384, gt=0)
    max_position_embeddings: int = Field(512, gt=0)


class PretrainSettings(BaseModel):
    """Brief plain-text pretraining of the default model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pretrain_steps: int = Field(200, ge=0)
    pretrain_batch_size: int = Field(16, gt=0)
    pretrain_sequence_length: int = Field(128, gt=0)
    pretrain_learning_rate: float = Field(3e-3, gt=0)
    pretrain_documents: int = Field(2000, gt=0)
    seed: int = 0


# --- sft --------------------------------------------------------------------------------


class SftSettings(BaseModel):
    """SFT hyperparameters; the `sft_checkpoint` asset's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate (cosine schedule)")
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(16, gt=0)
    max_length: int = Field(256, gt=0, description="prompt + answer tokens; longer examples are truncated")
    held_out_fraction: float = Field(0.1, ge=0, lt=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    held_out_eval_every: float = Field(
        0.1, gt=0, description="held-out loss every N steps (a float below 1: that fraction of the run), for the curve"
    )
    n_format_samples: int = Field(32, gt=0, description="held-out prompts answered to measure format adherence")
    max_new_tokens: int = Field(96, gt=0)
    assistant_turns: AssistantTurns = Field(
        "all", description="conversational records (`messages`): train on every assistant turn, or the last only"
    )
    checkpoint_every_steps: int = Field(
        50, gt=0, description="save a resumable checkpoint every N optimizer steps (when the asset gives a scratch dir)"
    )
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")


# --- reward_model -----------------------------------------------------------------------


class RewardSettings(BaseModel):
    """Reward-model hyperparameters; the `reward_model` asset's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(5e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(16, gt=0)
    max_length: int = Field(256, gt=0, description="pairs longer than this are dropped by TRL (counted here)")
    held_out_fraction: float = Field(0.15, gt=0, lt=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    center_rewards_coefficient: float = Field(0.01, ge=0, description="keeps rewards centred on zero")
    calibration_bins: int = Field(5, gt=0)
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")


# --- ppo --------------------------------------------------------------------------------


class PpoSettings(BaseModel):
    """PPO hyperparameters; the `ppo_policy` asset's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total_episodes: int = Field(512, gt=0, description="prompts answered during training (steps = total_episodes // batch_size)")
    batch_size: int = Field(64, gt=0, description="prompts per rollout (one PPO step)")
    minibatch_size: int = Field(32, gt=0, description="rollout rows per gradient step")
    ppo_epochs: int = Field(2, gt=0, description="passes over each rollout")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate of the policy")
    value_learning_rate: float | None = Field(
        1e-3, gt=0, description="AdamW learning rate of the value model (None: learning_rate); the value head "
        "starts as the RM and must learn per-token returns quickly for useful advantages"
    )
    adam_epsilon: float = Field(
        1e-5, gt=0, description="AdamW epsilon, as in most PPO code (HF Trainer's default is 1e-8); there is no "
        "weight decay, which would pull the policy towards zero rather than towards SFT"
    )
    max_new_tokens: int = Field(96, gt=0, description="maximum response length (the default's explanations run to ~90 tokens)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; log-probs use the same scaling")
    kl_coef: float = Field(0.05, ge=0, description="beta: initial (or fixed) KL penalty coefficient")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="per-token KL estimator in the reward")
    adaptive_kl: bool = Field(True, description="adapt beta towards target_kl (Ziegler et al. 2019)")
    target_kl: float = Field(4.0, gt=0, description="per-sequence KL the adaptive controller aims for: below kl_bound")
    kl_horizon: int = Field(
        512, gt=0, description="adaptive controller horizon, in episodes (Ziegler et al. used 10000 for runs of "
        "100k+ episodes; a run of a few hundred episodes needs a shorter one for beta to move at all)"
    )
    kl_bound: float = Field(
        8.0, gt=0, description="mean per-sequence KL to SFT the policy must stay under: training stops when a rollout "
        "crosses it and keeps the last policy inside it; the ppo_guard gate checks it on held-out prompts"
    )
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    clip_range: float = Field(0.2, gt=0, description="policy ratio clip epsilon")
    clip_range_value: float = Field(0.2, gt=0, description="value clip around the rollout's values")
    value_coef: float = Field(0.1, ge=0, description="c_v: weight of the value loss")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip, applied to policy and value model separately")
    whiten_advantages: bool = True
    normalize_rewards: bool = Field(False, description="whiten per-token rewards (scale only) before GAE")
    missing_eos_penalty: float = Field(1.0, ge=0, description="subtracted from the RM score of responses with no EOS")
    ptx_coef: float = Field(0.0, ge=0, description="PPO-ptx: weight of the SFT loss on ptx records (0 = off)")
    ptx_batch_size: int = Field(8, gt=0)
    use_lora: bool = Field(False, description="train a LoRA adapter; the reference is the base with the adapter off")
    lora_rank: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    checkpoint_every: int = Field(5, ge=0, description="save a resumable checkpoint every N steps (0 = never)")
    n_eval_prompts: int = Field(16, ge=0, description="held-out prompts (the tail of ppo_prompts) for the SFT-vs-PPO evaluation")
    n_eval_samples: int = Field(8, gt=0, description="sampled answers per held-out prompt")
    cpu_threads: int | None = Field(
        1, gt=0, description="torch threads on CPU during PPO (None keeps torch's setting); small models run "
        "fastest single-threaded, and multi-threaded waits collapse on a shared, busy CPU"
    )
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")


# --- evaluation -------------------------------------------------------------------------


class EvaluationSettings(BaseModel):
    """Evaluation-report settings; the `evaluation_report` asset's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(64, gt=0, description="answer length limit for every model")
    temperature: float = Field(0.0, ge=0, description="0 = greedy answers (deterministic)")
    batch_size: int = Field(48, gt=0)
    kl_samples_per_prompt: int = Field(2, gt=0, description="PPO samples per prompt for the KL estimate")
    n_bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for every 95% interval")
    n_spot_checks: int = Field(5, gt=0)
    rm_tie_margin: float = Field(0.0, ge=0, description="RM score differences up to this count as ties")
    judge_model: str | None = Field(
        None, description="local HF causal LM directory to use as the pairwise judge (off by default: heuristic judge)"
    )
    judge_max_new_tokens: int = Field(64, gt=0)
    custom_judge: str | None = Field(
        None, description="'module.path:attribute' of your own pairwise judge; overrides judge_model"
    )
    cpu_threads: int = Field(
        1, ge=0,
        description="torch CPU threads while evaluating (0: leave torch's setting). Token-by-token generation "
        "with a small model runs tiny matrix ops where extra threads mostly add synchronisation, worst on a shared CPU",
    )
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")
