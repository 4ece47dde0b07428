"""Every stage's settings, as plain pydantic models (no torch, no transformers, nothing else of the pipeline).

The config pattern, the same for every asset and check:

- what library code reads is a settings model here (`PpoSettings`, `SourceSettings`, ...);
- the asset's typed config extends it (`class PpoConfig(dg.Config, PpoSettings)`), plus fields that
  only the asset itself reads (e.g. a data asset's generator `seed`);
- the asset narrows its config back to the settings with `settings_from(config, PpoSettings)` before
  it calls library code, which never sees a `dg.Config`.

Settings live only here (no module re-exports them). The code location imports them when it loads,
so keeping them light makes every `dagster` and `rlhf` command, the web UI's code server and each
multiprocess step start without importing torch, which only the stages that train or generate load.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Settings = TypeVar("Settings", bound=BaseModel)


def settings_from(config: BaseModel, settings_type: type[Settings]) -> Settings:
    """The `settings_type` part of an asset's config (which extends it), as a plain settings model."""
    return settings_type.model_validate(config.model_dump(include=set(settings_type.model_fields)))


# --- data sources (sft_data, preference_data, ppo_prompts, eval_prompts) ----------------

DataFormat = Literal["records", "hh_rlhf", "ultrafeedback", "tldr", "messages"]


class SourceSettings(BaseModel):
    """Where a data asset's records come from (`pipeline.data.sources`); the data assets' configs extend this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str | None = Field(
        None,
        description="a .jsonl/.parquet/.csv file (.jsonl.gz, .json.gz, .csv.gz: gzip-compressed), a `datasets` save_to_disk directory, or `hub:<owner>/<name>`; "
        "empty: the built-in generator",
    )
    format: DataFormat = Field("records", description="records | hh_rlhf | ultrafeedback | tldr | messages")
    split: str | None = Field(
        None, description="dataset split (hub or saved DatasetDict); default `train`. Hub slices like `train[:2000]` work"
    )
    subset: str | None = Field(None, description="hub dataset configuration name")
    data_dir: str | None = Field(None, description="hub dataset sub-directory, e.g. `harmless-base` for HH-RLHF")
    dataset_revision: str | None = Field(None, description="pin the hub dataset to a branch, tag or commit")
    fields: dict[str, str] = Field(
        default_factory=dict, description="the format's field name -> the source's column name"
    )
    max_records: int | None = Field(None, gt=0, description="keep only the first N rows of the source")
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="`error` stops at the first bad row; `skip` leaves bad rows out and reports them"
    )


# --- base_model -------------------------------------------------------------------------


class TinyModelSpec(BaseModel):
    """Shape of the default locally built Llama-style model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(2048, gt=300)
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(
        2, gt=0, description="2 by default: the fewest that can copy from the prompt (a previous-token layer and a "
        "look-up layer), and twice the steps of 4 layers in the same time; on the default's tasks it reads the prompt "
        "after 600 steps where 4 layers do not after 300 (benchmarks/base_task_accuracy.py --layers)"
    )
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(384, gt=0)
    max_position_embeddings: int = Field(512, gt=0)


class PretrainSettings(BaseModel):
    """Brief plain-text pretraining of the default model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pretrain_steps: int = Field(600, ge=0)
    pretrain_batch_size: int = Field(16, gt=0)
    pretrain_sequence_length: int = Field(128, gt=0)
    pretrain_learning_rate: float = Field(3e-3, gt=0)
    pretrain_documents: int = Field(2000, gt=0)
    pretrain_tasks_per_document: int = Field(
        16, ge=0, description="worked tasks (training phrasings) per pretraining document, beside 3 explanations; "
        "more make in-prompt copying form sooner (benchmarks/base_task_accuracy.py measures it)",
    )
    seed: int = 0


# --- sft --------------------------------------------------------------------------------

# SFT and the reward model train through TRL's trainers, which turn gradient checkpointing on by default.
GRADIENT_CHECKPOINTING_HELP = (
    "recompute activations in the backward pass to save memory (TRL turns it on by default); off is faster for a "
    "model whose activations fit, as the default's do"
)
AssistantTurns = Literal["all", "last"]
Distributed = Literal["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]


class SftSettings(BaseModel):
    """SFT hyperparameters; the `sft_checkpoint` asset's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(2e-3, gt=0, description="peak learning rate (cosine schedule)")
    epochs: float = Field(
        7.0, gt=0, description="passes over the demonstrations; on the default data (seed 0) the held-out loss levels off "
        "under the cosine schedule: 0.146 at step 640 of 791, 0.137 at 720 and at the end, ~9 s an epoch on 2 CPU cores"
    )
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
    fused_lm_head: Literal["auto", "on", "off"] = Field(
        "auto", description="compute the loss through TRL's fused, chunked LM head ('auto': on a GPU only). It saves "
        "the memory of full logits over a large vocabulary; on a CPU its chunked kernel made the default's SFT steps "
        "1.7x slower, for the same loss"
    )
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING_HELP)
    checkpoint_every_steps: int = Field(
        20, gt=0, description="save a resumable checkpoint every N optimizer steps (when the asset gives a scratch dir); "
        "20 of the default's 791 steps, so a run killed halfway keeps 380 of them"
    )
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")


class LaunchSettings(BaseModel):
    """How a training asset runs its trainer (`pipeline.orchestration.launchers`).

    `sft_checkpoint`, `reward_model` and `ppo_policy` all extend it: one launcher serves the three.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    launcher: Literal["in_process", "accelerate"] = Field(
        "in_process", description="'in_process': train in the step process; 'accelerate': under `accelerate launch` via Dagster Pipes"
    )
    num_processes: int = Field(1, gt=0, description="training processes under `accelerate launch`, one per GPU")
    distributed: Distributed = Field(
        "ddp", description="data parallel (ddp), DeepSpeed ZeRO stage 2 or 3, or FSDP (v2, full state dict on save)"
    )
    accelerate_config_file: str | None = Field(
        None, description="your own `accelerate config` YAML instead of the generated one (`distributed` is then ignored)"
    )
    main_process_port: int | None = Field(None, gt=0, lt=65536, description="rendezvous port when several jobs share a node")


# --- reward_model -----------------------------------------------------------------------


class RewardSettings(BaseModel):
    """Reward-model hyperparameters; the `reward_model` asset's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(5e-4, gt=0)
    epochs: float = Field(
        8.0, gt=0, description="passes over the pairs; with 2 the default's reward model told a good explanation of "
        "the concept asked from one of another concept at chance (held-out 0.33-0.57 over 5 seeds), with 8 0.67-0.85"
    )
    batch_size: int = Field(16, gt=0)
    max_length: int = Field(256, gt=0, description="pairs longer than this are dropped by TRL (counted here)")
    held_out_fraction: float = Field(0.15, gt=0, lt=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    center_rewards_coefficient: float = Field(0.01, ge=0, description="keeps rewards centred on zero")
    calibration_bins: int = Field(5, gt=0)
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING_HELP)
    checkpoint_every_steps: int = Field(
        50, gt=0, description="save a resumable checkpoint every N optimizer steps (when the asset gives a scratch dir); "
        "50 of the default's 856 steps, so a run killed halfway keeps 400 of them"
    )
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")


# --- ppo --------------------------------------------------------------------------------


class PpoSettings(BaseModel):
    """PPO hyperparameters; the `ppo_policy` asset's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total_episodes: int = Field(1024, gt=0, description="prompts answered during training (steps = total_episodes // batch_size)")
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
    ptx_coef: float = Field(
        0.0, ge=0, description="PPO-ptx: weight of the SFT loss on train_ppo's ptx records (0 = off); the ppo_policy "
        "asset has none to give, so it refuses anything but 0 (README: Does RLHF work on the default job?)"
    )
    ptx_batch_size: int = Field(8, gt=0)
    use_lora: bool = Field(False, description="train a LoRA adapter; the reference is the base with the adapter off")
    lora_rank: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    checkpoint_every: int = Field(
        2, ge=0, description="save a resumable checkpoint every N steps (0 = never); 2 of the default's 16 steps, so a "
        "run killed halfway keeps 8 of them"
    )
    offload_frozen_models: bool = Field(
        False, description="keep the reference and reward models on the CPU between uses (moved to the device for "
        "each rollout's scoring): frees GPU memory for the policy and value model at the cost of two copies per step"
    )
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

    max_new_tokens: int = Field(96, gt=0, description="answer length limit for every model")
    temperature: float = Field(
        1.0, ge=0, description="decoding of the primary comparison: 1 samples the policy PPO trains (the default), "
        "0 compares greedy answers only"
    )
    samples_per_prompt: int = Field(4, gt=0, description="sampled answers per prompt (temperature > 0)")
    greedy_comparison: bool = Field(True, description="with sampling, also compare greedy answers (eval.json `greedy`)")
    batch_size: int = Field(64, gt=0)
    kl_samples_per_prompt: int = Field(
        2, gt=0, description="PPO samples per prompt for the KL estimate when temperature is not 1 (at 1 the "
        "comparison's own samples serve)"
    )
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
