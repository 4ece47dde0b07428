"""InstructGPT-style PPO for RLHF, on torch + accelerate, readable top to bottom.

Models: the actor pi_theta starts from the SFT checkpoint; the reference pi_ref is the frozen SFT
model (or, with LoRA, the same network with its adapter disabled); the reward model r_phi is
frozen; the value model V_psi starts from the reward model and reads a value at every token.

One PPO step (`train_ppo`, steps 1-5):
  1. rollout    y ~ pi_theta(.|x)^(1/T), truncated at the first EOS (later tokens are padding)
  2. score      r_phi(x, y) at the EOS token; minus a penalty when there is no EOS
  3. reward     R_t = r_phi(x,y) * 1[t=T] - beta * KL_t,  KL_t = log pi_theta(y_t) - log pi_ref(y_t) (k1)
  4. advantage  GAE(gamma, lambda) on R_t and V_psi, whitened
  5. update     several epochs over minibatches of the clipped policy loss + c_v * clipped value loss
                (+ optional PPO-ptx SFT loss), with gradient clipping; dropout is off throughout.

Every forward pass after sampling reads only real tokens: the rollout's sequences are packed end to
end without padding (`pipeline.training.packing`), so the losses are plain means over the flat vector of a
minibatch's response tokens, while rewards, values and GAE keep the (batch, response column) layout.

Under `accelerate launch` (N ranks, DDP) one step is the same computation as in one process:
  - every rank takes its contiguous share of the step's global prompt batch (B/N prompts), samples
    and scores it (steps 1-2): the costly part, split N ways;
  - the per-row results (token ids, log-probs, scores, values: small next to the models) are
    gathered, so steps 3-4 (KL, rewards, GAE, whitened advantages) run on the whole batch on every
    rank: global statistics, and every rank takes the same KL-bound and beta decisions;
  - each global minibatch of step 5 is split N ways; the packed forward passes go through the
    DDP-wrapped modules, whose backward averages the gradients across ranks, and each rank's loss is
    weighted by its share of the minibatch's tokens, so the average is the one-process loss's gradient;
  - rank 0 alone writes checkpoints, metrics and the artifact.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.data.statistics import mean_or_nan
from pipeline.ppo.rollout import (
    Rollout,
    encode_prompts,
    pack_rollout,
    response_log_softmax,
    response_logprobs_packed,
    reward_scores,
    sample_responses,
    token_values,
)
from pipeline.settings import PpoSettings
from pipeline.storage.contract import PPO_CURVES_FILE, PPO_METRICS_FILE, PPO_SUMMARY_FILE
from pipeline.training.chat_format import render_prompt
from pipeline.training.context_window import context_length, count_over_budget, prompt_budget
from pipeline.training.device import select_device, torch_cpu_threads
from pipeline.training.packing import PackedSequences

logger = logging.getLogger(__name__)

CHECKPOINT_STATE_FILE = "ppo_state.pt"


# --- the PPO equations ------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; padding stays 0."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) at the sampled tokens."""
    log_ratio = logprobs - ref_logprobs  # log pi_theta(y_t) - log pi_ref(y_t)
    if estimator == "k1":
        return log_ratio  # k1 = log(pi/pi_ref): unbiased, can be negative per token
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # k3 = (pi_ref/pi - 1) - log(pi_ref/pi) >= 0
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, beta: float, last_index: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """R_t = r_phi(x,y) * 1[t = T] - beta * KL_t on response tokens, 0 on padding."""
    rewards = -beta * kl * response_mask  # -beta * KL_t at every real token
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index] += scores  # + r_phi(x, y) at the EOS (T = last real token)
    return rewards


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE: A_t = sum_l (gamma*lam)^l delta_{t+l}, delta_t = R_t + gamma*V_{t+1} - V_t; returns = A + V."""
    values = values * response_mask  # V after the last token is 0 (the episode ends at EOS)
    rewards = rewards * response_mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # delta_t = R_t + gamma V_{t+1} - V_t
        running = delta + gamma * lam * running  # A_t = delta_t + gamma lambda A_{t+1}
        advantages[:, t] = running
        next_value = values[:, t]
    advantages = advantages * response_mask
    return advantages, (advantages + values) * response_mask  # G_t = A_t + V_t (the value target)


# The losses take flat tensors: one entry per real response token of the minibatch, so E[.] is a plain mean.


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_clip = E_t[max(-A_t * rho_t, -A_t * clip(rho_t, 1-eps, 1+eps))], rho_t = pi_theta(y_t) / pi_old(y_t).

    Returns (loss, clip fraction, approx KL)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)  # rho_t
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_fraction = (clipped > unclipped).float().mean()
        approx_kl = (0.5 * log_ratio**2).mean()  # ~ KL(pi_old || pi_theta) for small steps
    return loss, clip_fraction, approx_kl


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_range: float) -> torch.Tensor:
    """L_V = 1/2 E_t[max((V_t - G_t)^2, (V_old_t + clip(V_t - V_old_t, -eps, eps) - G_t)^2)]."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G]: 1 is a perfect value function, 0 no better than a constant."""
    target_var = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    residual = target - predicted
    residual_var = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1 - residual_var / target_var) if target_var > 0 else float("nan")


def entropy_from_log_softmax(log_probs: torch.Tensor) -> torch.Tensor:
    """H = -sum_v pi(v) log pi(v), per position, from log-probabilities over the vocabulary."""
    return -(log_probs.exp() * log_probs).sum(-1)


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon) (Ziegler et al. 2019)."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, current_kl: float, n_episodes: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon


class FixedKLController:
    def __init__(self, beta: float):
        self.value = beta

    def update(self, current_kl: float, n_episodes: int) -> None:
        pass


# --- across ranks (accelerate launch; each is the identity in one process) ---------------------


def rank_share(n_items: int, accelerator) -> slice:
    """This rank's contiguous share of `n_items` (rank r of N: items [r*n/N, (r+1)*n/N))."""
    per_rank = n_items // accelerator.num_processes
    return slice(accelerator.process_index * per_rank, (accelerator.process_index + 1) * per_rank)


def gather_rows(accelerator, tensor: torch.Tensor, pad_value: float | int = 0, pad_first: bool = False) -> torch.Tensor:
    """Every rank's rows of a (rows, columns...) tensor, in rank order: widths padded to the widest rank's."""
    if accelerator.num_processes == 1:
        return tensor
    if tensor.dim() > 1:
        tensor = accelerator.pad_across_processes(tensor, dim=1, pad_index=pad_value, pad_first=pad_first)
    return accelerator.gather(tensor.contiguous())


def gather_rollout(accelerator, rollout: Rollout, pad_token_id: int) -> Rollout:
    """The whole step's rollout on every rank: prompts left-padded and responses right-padded to common widths."""
    return Rollout(
        query_ids=gather_rows(accelerator, rollout.query_ids, pad_token_id, pad_first=True),
        query_mask=gather_rows(accelerator, rollout.query_mask, 0, pad_first=True),
        response_ids=gather_rows(accelerator, rollout.response_ids, pad_token_id),
        response_mask=gather_rows(accelerator, rollout.response_mask, 0),
        logprobs=gather_rows(accelerator, rollout.logprobs, 0.0),
    )


def token_share(n_local_tokens: int, accelerator) -> float:
    """N * n_r / sum_r n_r: the weight that makes the ranks' averaged token-mean losses the token mean of the
    whole minibatch (DDP averages gradients: 1/N sum_r (N n_r / n) L_r = sum_r n_r L_r / n). 1 in one process."""
    if accelerator.num_processes == 1:
        return 1.0
    n_tokens = accelerator.reduce(torch.tensor(float(n_local_tokens), device=accelerator.device), reduction="sum")
    return accelerator.num_processes * n_local_tokens / float(n_tokens)


def mean_over_ranks(values: list[float], accelerator) -> float:
    """The mean of a logged statistic (this rank's per-minibatch values) over all ranks."""
    local = mean_or_nan(values)
    if accelerator.num_processes == 1:
        return local
    return float(accelerator.reduce(torch.tensor(local, device=accelerator.device), reduction="mean"))


class PackedForward(torch.nn.Module):
    """Runs `compute(model, *args)` as its forward, so that the wrapper accelerate puts around it (DDP) sees the
    packed forward passes of the update: that is what makes the backward pass average the gradients across ranks."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, compute: Callable[..., Any], *args: Any) -> Any:
        return compute(self.model, *args)


# --- models -----------------------------------------------------------------------------------


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout would make the rollout's log-probs differ from the update's; InstructGPT trains without it."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.eval()


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    disable_dropout(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_models(sft_dir: Path, reward_model_dir: Path, settings: PpoSettings, device: torch.device, dtype: torch.dtype):
    """(tokenizer, policy, reference or None with LoRA, reward model, value model)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    rm_tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the reward model at {reward_model_dir} uses a different tokenizer than the SFT policy at "
                         f"{sft_dir}; PPO scores token ids directly and needs the same vocabulary")
    policy = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True)
    disable_dropout(policy)
    reference = None
    if settings.use_lora:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(
            r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
            target_modules="all-linear", task_type="CAUSAL_LM",
        ))
    else:
        reference = freeze(copy.deepcopy(policy)).to(device, dtype)
    reward_model = freeze(AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=1, use_safetensors=True)).to(device, dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=1, use_safetensors=True)
    disable_dropout(value_model)
    return tokenizer, policy.to(device), reference, reward_model, value_model.to(device)


class ReferencePolicy:
    """log pi_ref: the frozen SFT copy, or the LoRA policy with its adapter disabled."""

    def __init__(self, policy, reference):
        self.policy, self.reference = policy, reference

    @torch.inference_mode()
    def logprobs(self, packed: PackedSequences, temperature: float) -> torch.Tensor:
        """log pi_ref(y_t | x, y_<t) of every real response token, (N,)."""
        with self.module() as reference:
            return response_logprobs_packed(reference, packed, temperature)

    @contextlib.contextmanager
    def module(self):
        """The module that is pi_ref, to sample SFT answers from or score them (the LoRA adapter stays off meanwhile)."""
        if self.reference is not None:
            yield self.reference
            return
        with self.policy.disable_adapter():
            yield self.policy


class FrozenModels:
    """The frozen reference and reward models: on the device throughout, or with `offload` (on a GPU) kept on
    the CPU and moved to the device only while a rollout is scored, which leaves the policy and value model
    and their optimizer state the GPU memory in between."""

    def __init__(self, models: list[torch.nn.Module], device: torch.device, offload: bool):
        self.models, self.device, self.offload = models, device, offload and device.type != "cpu"
        if self.offload:
            for model in self.models:
                model.to("cpu")

    @contextlib.contextmanager
    def on_device(self):
        if not self.offload:
            yield
            return
        for model in self.models:
            model.to(self.device)
        try:
            yield
        finally:
            for model in self.models:
                model.to("cpu")

    def keep_on_device(self) -> None:
        """For the held-out evaluation after training, which reads them many times."""
        if self.offload:
            for model in self.models:
                model.to(self.device)
            self.offload = False


class PolicySnapshot:
    """A copy of the policy's weights (on the CPU) after a given number of PPO steps, to go back to."""

    def __init__(self, state: dict[str, torch.Tensor], step: int):
        self.state, self.step = state, step

    @classmethod
    def of(cls, policy: torch.nn.Module, step: int) -> "PolicySnapshot":
        return cls({k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}, step)

    def restore(self, policy: torch.nn.Module) -> None:
        policy.load_state_dict(self.state)


# --- data -------------------------------------------------------------------------------------


def split_eval_prompts(prompts: Sequence[str], n_eval: int) -> tuple[list[str], list[str]]:
    """Train on the head of ppo_prompts, evaluate on the last `n_eval` (never trained on)."""
    prompts = list(prompts)
    n_eval = min(n_eval, len(prompts) // 2)
    cut = len(prompts) - n_eval
    train, held_out = prompts[:cut], prompts[cut:]
    if not train:
        raise ValueError(f"ppo_prompts has {len(prompts)} prompts: nothing left to train on")
    return train, held_out


def prompts_for_step(prompts: Sequence[str], step: int, batch_size: int, seed: int) -> list[str]:
    """The step's batch from a stream of seeded shuffles (a function of the step, so resume replays it)."""
    orders: dict[int, list[int]] = {}  # one seeded shuffle of the prompt indices per pass over the data
    batch = []
    for episode in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(episode, len(prompts))
        if epoch not in orders:
            orders[epoch] = list(range(len(prompts)))
            random.Random(f"ppo-prompts:{seed}:{epoch}").shuffle(orders[epoch])
        batch.append(prompts[orders[epoch][index]])
    return batch


def encode_ptx_records(tokenizer, records: Sequence[dict[str, Any]], device) -> list[tuple[torch.Tensor, int]]:
    """(token ids of prompt + completion + EOS, prompt length) for the PPO-ptx SFT loss."""
    encoded = []
    for row, record in enumerate(records):
        if "prompt" not in record or "completion" not in record:
            raise ValueError(f"ptx record {row} needs 'prompt' and 'completion' fields, has {sorted(record)}")
        prompt = tokenizer(render_prompt(tokenizer, record["prompt"]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(record["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        encoded.append((torch.tensor(prompt + answer, device=device), len(prompt)))
    return encoded


def ptx_loss(policy, examples: list[tuple[torch.Tensor, int]], pad_token_id: int) -> torch.Tensor:
    """Mean next-token NLL on completion tokens of a right-padded batch of SFT examples."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, device=examples[0][0].device)
    labels = torch.full_like(input_ids, -100)
    for row, (ids, prompt_length) in enumerate(examples):
        input_ids[row, : len(ids)] = ids
        labels[row, prompt_length : len(ids)] = ids[prompt_length:]
    lengths = torch.tensor([len(ids) for ids, _ in examples], device=input_ids.device)
    attention_mask = (torch.arange(width, device=input_ids.device)[None] < lengths[:, None]).long()
    return policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def policy_outputs(policy, minibatch: PackedSequences, temperature: float, ptx_batch, pad_token_id: int):
    """The update's policy forward: (log pi_theta(. | s_t) of the minibatch's response tokens, the PPO-ptx SFT loss or None).

    One function so that both go through a single call of the policy's `PackedForward` (one DDP forward per backward).
    """
    log_probs = response_log_softmax(policy, minibatch, temperature)
    return log_probs, (ptx_loss(policy, ptx_batch, pad_token_id) if ptx_batch else None)


# --- checkpoints ------------------------------------------------------------------------------


def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    """The newest complete `checkpoint-<step>/` (the layout `pipeline.storage.checkpoints` resumes from)."""
    from pipeline.storage.checkpoints import complete_checkpoints

    if checkpoint_dir is None or not checkpoint_dir.exists():
        return None
    found = complete_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def save_checkpoint(checkpoint_dir: Path, state: dict[str, Any]) -> Path:
    """`checkpoint-<step>/ppo_state.pt`, then `trainer_state.json` last: its presence marks the checkpoint complete."""
    from pipeline.storage.checkpoints import CHECKPOINT_PREFIX, TRAINER_STATE_FILE

    path = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state['step']}"
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / CHECKPOINT_STATE_FILE)
    marker = path / (TRAINER_STATE_FILE + ".partial")
    marker.write_text(json.dumps({"global_step": state["step"], "trainer": "pipeline.ppo"}))
    os.replace(marker, path / TRAINER_STATE_FILE)
    for older in checkpoint_dir.iterdir():
        if older != path and older.name.startswith(CHECKPOINT_PREFIX):
            shutil.rmtree(older, ignore_errors=True)
    return path


# --- training ---------------------------------------------------------------------------------


def progress_line(record: dict[str, Any]) -> str:
    """One step's line for the Dagster event log (in process, or from rank 0 through Pipes)."""
    return (f"PPO step {record['step']}: rm_score {record['rm_score']:.3f}, kl {record['kl']:.3f}, "
            f"response length {record['response_length']:.1f}")


def train_ppo(
    sft_dir: Path,
    reward_model_dir: Path,
    prompts: Sequence[str],
    output_dir: Path,
    settings: PpoSettings,
    ptx_records: Sequence[dict[str, Any]] | None = None,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the PPO policy; write the HF policy dir, `value_model/`, metrics, summary and curves to `output_dir`.

    Returns the summary (also written to `ppo_summary.json`). With `checkpoint_dir`, a checkpoint is
    saved every `checkpoint_every` steps and training resumes from the latest one found there. On
    the CPU it runs with `settings.cpu_threads` torch threads and restores the caller's setting after.
    """
    choice = select_device(settings.device)
    threads = settings.cpu_threads if choice.device.type == "cpu" and settings.cpu_threads else 0
    with torch_cpu_threads(threads):
        return _train_ppo(sft_dir, reward_model_dir, prompts, output_dir, settings, ptx_records, checkpoint_dir, on_step, choice)


def _train_ppo(sft_dir, reward_model_dir, prompts, output_dir, settings, ptx_records, checkpoint_dir, on_step, choice):
    from accelerate import Accelerator

    from pipeline.training.curves import plot_training_curves
    from pipeline.ppo.summary import evaluate_against_reference, save_models

    if settings.minibatch_size > settings.batch_size or settings.batch_size % settings.minibatch_size:
        raise ValueError(f"batch_size={settings.batch_size} must be a multiple of minibatch_size={settings.minibatch_size}")
    n_steps = settings.total_episodes // settings.batch_size
    if n_steps == 0:
        raise ValueError(f"total_episodes={settings.total_episodes} is smaller than batch_size={settings.batch_size}")
    if settings.ptx_coef > 0 and not ptx_records:
        raise ValueError("ptx_coef > 0 needs ptx_records (prompt, completion) to mix in the SFT loss")
    accelerator = Accelerator(cpu=choice.device.type == "cpu", mixed_precision="bf16" if choice.use_bf16 else "no")
    device = accelerator.device
    n_ranks = accelerator.num_processes
    if accelerator.distributed_type.value in ("DEEPSPEED", "FSDP"):
        # Sampling reads the plain policy, whose weights ZeRO-3 and FSDP shard; gathering them is not built yet.
        raise ValueError(f"PPO runs data-parallel (DDP) across processes, not under {accelerator.distributed_type.value}")
    if settings.batch_size % n_ranks or settings.minibatch_size % n_ranks:
        raise ValueError(f"batch_size={settings.batch_size} and minibatch_size={settings.minibatch_size} must be "
                         f"multiples of the {n_ranks} processes, which split every batch evenly")
    torch.manual_seed(settings.seed)
    tokenizer, policy, reference, reward_model, value_model = load_models(
        sft_dir, reward_model_dir, settings, device, choice.dtype
    )
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    train_prompts, eval_prompts = split_eval_prompts(prompts, settings.n_eval_prompts)
    # Prompt + response must fit the policy's context window: longer prompts are cut from the left, and counted.
    max_prompt_tokens = prompt_budget(context_length(policy.config), settings.max_new_tokens)
    n_prompts_truncated = count_over_budget(tokenizer, prompts, max_prompt_tokens)
    if n_prompts_truncated:
        logger.warning(f"{n_prompts_truncated} of {len(prompts)} PPO prompts exceed {max_prompt_tokens} tokens "
                       f"(context window minus max_new_tokens={settings.max_new_tokens}); they are cut from the left")
    ptx_examples = encode_ptx_records(tokenizer, ptx_records or [], device) if settings.ptx_coef > 0 else []
    policy_parameters = [p for p in policy.parameters() if p.requires_grad]
    value_parameters = list(value_model.parameters())
    optimizer = torch.optim.AdamW([
        {"params": policy_parameters, "lr": settings.learning_rate},
        {"params": value_parameters, "lr": settings.value_learning_rate or settings.learning_rate},
    ], eps=settings.adam_epsilon, weight_decay=0.0)
    # `policy` and `value_model` stay the plain models (sampling, scoring, saving); the update's forward
    # passes go through their wrapped `PackedForward`s, which average the gradients across ranks.
    policy_forward, value_forward, optimizer = accelerator.prepare(PackedForward(policy), PackedForward(value_model), optimizer)
    reference_policy = ReferencePolicy(policy, reference)
    frozen = FrozenModels([m for m in (reference, reward_model) if m is not None], device, settings.offload_frozen_models)
    kl_controller = (
        AdaptiveKLController(settings.kl_coef, settings.target_kl, settings.kl_horizon)
        if settings.adaptive_kl else FixedKLController(settings.kl_coef)
    )
    # Reusing the sampling log-probs as pi_old is exact in fp32 without dropout; under bf16 autocast
    # the cached incremental forward can round differently, so recompute them there.
    recompute_old_logprobs = choice.use_bf16

    start_step, history = 0, []
    resume_from = latest_checkpoint(checkpoint_dir)
    if resume_from is not None:
        # On the CPU first: under gloo the ranks' device is "cpu:0", a location torch.load cannot map to; the
        # load_state_dict calls copy every tensor to its parameter's device. weights_only: no pickle code from disk.
        state = torch.load(resume_from / CHECKPOINT_STATE_FILE, map_location="cpu", weights_only=True)
        policy.load_state_dict(state["policy"])
        value_model.load_state_dict(state["value_model"])
        optimizer.load_state_dict(state["optimizer"])
        kl_controller.value = state["beta"]
        start_step, history = state["step"], state["history"]
        logger.info(f"PPO resumes from {resume_from} at step {start_step}/{n_steps}")

    inside_bound: PolicySnapshot | None = None  # the newest policy whose rollout KL was inside kl_bound
    stopped_at_kl_bound: dict[str, Any] | None = None
    started = time.perf_counter()
    for step in range(start_step, n_steps):
        step_started = time.perf_counter()
        generator = torch.Generator(device=device).manual_seed(settings.seed * 1_000_003 + step)
        beta = kl_controller.value

        # 1. rollout: y ~ pi_theta(.|x)^(1/T), truncated at the first EOS; this rank samples its share of the
        #    step's prompts, with the draws u of those rows (so N ranks sample what one process would)
        share = rank_share(settings.batch_size, accelerator)
        step_prompts = prompts_for_step(train_prompts, step, settings.batch_size, settings.seed)
        uniforms = torch.rand(settings.batch_size, settings.max_new_tokens, generator=generator, device=device)[share]
        batch = encode_prompts(tokenizer, step_prompts[share], device, max_prompt_tokens)
        policy.eval()
        with accelerator.autocast():
            rollout = sample_responses(policy, batch, settings.max_new_tokens, settings.temperature, eos_id, pad_id,
                                       uniforms=uniforms)
        generation_seconds = time.perf_counter() - step_started  # sampling syncs on every token (EOS check), so this is its real time
        # Every forward pass below reads only real tokens: the sequences packed without padding.
        packed = pack_rollout(rollout)

        with torch.inference_mode(), accelerator.autocast(), frozen.on_device():
            old_logprobs = (packed.to_padded(response_logprobs_packed(policy, packed, settings.temperature))
                            if recompute_old_logprobs else rollout.logprobs)
            ref_logprobs = packed.to_padded(reference_policy.logprobs(packed, settings.temperature))
            # 2. score: r_phi(x, y) read at the EOS token
            scores = reward_scores(reward_model, packed)
            old_values = packed.to_padded(token_values(value_model, packed))

        # The rest of the step sees the whole batch on every rank (the rows of all ranks, in prompt order).
        rollout = gather_rollout(accelerator, rollout, pad_id)
        old_logprobs, ref_logprobs, old_values = (
            gather_rows(accelerator, t.clone()) for t in (old_logprobs, ref_logprobs, old_values)
        )
        scores = gather_rows(accelerator, scores.clone())
        mask = rollout.response_mask.float()
        ended = rollout.ended_with_eos(eos_id)
        penalised_scores = scores - settings.missing_eos_penalty * (~ended).float()  # responses without EOS are penalised
        rollout_seconds = time.perf_counter() - step_started

        # 3. per-token reward: R_t = r_phi(x,y) * 1[t=T] - beta * KL_t
        kl = per_token_kl(old_logprobs, ref_logprobs, settings.kl_estimator) * mask
        sequence_kl = kl.sum(1).mean().item()
        # KL-bound stop: this rollout measured the policy the previous update made. Past the bound,
        # training stops and keeps the last policy measured inside it.
        if sequence_kl > settings.kl_bound and inside_bound is not None:
            stopped_at_kl_bound = {"step": step + 1, "kl": sequence_kl, "kept_policy_of_step": inside_bound.step}
            inside_bound.restore(policy)
            logger.warning(f"PPO stops at step {step + 1}/{n_steps}: rollout KL {sequence_kl:.2f} > kl_bound "
                           f"{settings.kl_bound}; keeping the policy of step {inside_bound.step}")
            break
        inside_bound = PolicySnapshot.of(policy, step)
        rewards = per_token_rewards(penalised_scores, kl, beta, rollout.last_index, mask)
        if settings.normalize_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)

        # 4. GAE on R_t and V_psi(s_t), then whitened advantages
        advantages, returns = generalized_advantages(rewards, old_values, mask, settings.gamma, settings.lam)
        if settings.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        old_logprobs, advantages, returns = old_logprobs.clone(), advantages.clone(), returns.clone()
        old_values = old_values.clone()

        # 5. PPO update: several epochs over shuffled minibatches of the rollout (this rank: its share of each)
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "entropy", "ptx_loss")}
        shuffler = torch.Generator().manual_seed(settings.seed * 7919 + step)
        for _ in range(settings.ppo_epochs):
            order = torch.randperm(settings.batch_size, generator=shuffler).to(device)
            for mb_start in range(0, settings.batch_size, settings.minibatch_size):
                rows = order[mb_start : mb_start + settings.minibatch_size][rank_share(settings.minibatch_size, accelerator)]
                minibatch = pack_rollout(rollout, rows)
                real = minibatch.response_mask  # [rows][real] lists the minibatch's response tokens in packed order
                ptx_batch = ([ptx_examples[i] for i in torch.randint(len(ptx_examples), (settings.ptx_batch_size,), generator=shuffler)]
                             if ptx_examples else None)
                with accelerator.autocast():
                    # log pi_theta(. | s_t) (and the PPO-ptx SFT loss), through the wrapper that syncs gradients
                    log_probs, sft_loss = policy_forward(policy_outputs, minibatch, settings.temperature, ptx_batch, pad_id)
                    logprobs = log_probs.gather(1, minibatch.response_targets[:, None]).squeeze(1)
                    pg_loss, clip_fraction, approx_kl = clipped_policy_loss(
                        logprobs, old_logprobs[rows][real], advantages[rows][real], settings.clip_range
                    )
                    values = value_forward(token_values, minibatch)
                    vf_loss = clipped_value_loss(
                        values, old_values[rows][real], returns[rows][real], settings.clip_range_value
                    )
                    loss = pg_loss + settings.value_coef * vf_loss  # L = L_clip + c_v * L_V
                    # Weighted by this rank's share of the minibatch's tokens: the ranks' average is the whole minibatch's mean.
                    loss = loss * token_share(len(logprobs), accelerator)
                    if sft_loss is not None:
                        loss = loss + settings.ptx_coef * sft_loss  # PPO-ptx: + gamma_ptx * L_SFT
                        stats["ptx_loss"].append(sft_loss.item())
                accelerator.backward(loss)
                # Clipped per network: one joint norm would let the value loss's large early gradients shrink the policy's step.
                accelerator.clip_grad_norm_(policy_parameters, settings.max_grad_norm)
                accelerator.clip_grad_norm_(value_parameters, settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    stats["entropy"].append(float(entropy_from_log_softmax(log_probs).mean()))
                stats["policy_loss"].append(pg_loss.item())
                stats["value_loss"].append(vf_loss.item())
                stats["clip_fraction"].append(clip_fraction.item())
                stats["approx_kl"].append(approx_kl.item())

        kl_controller.update(sequence_kl, settings.batch_size)
        record = {
            "step": step + 1,
            "episodes": (step + 1) * settings.batch_size,
            "rm_score": scores.mean().item(),
            "kl": sequence_kl,
            "total_reward": rewards.sum(1).mean().item(),
            "entropy": mean_over_ranks(stats["entropy"], accelerator),
            "response_length": rollout.response_lengths.float().mean().item(),
            "no_eos_fraction": (~ended).float().mean().item(),
            "clip_fraction": mean_over_ranks(stats["clip_fraction"], accelerator),
            "approx_kl": mean_over_ranks(stats["approx_kl"], accelerator),
            "value_loss": mean_over_ranks(stats["value_loss"], accelerator),
            "policy_loss": mean_over_ranks(stats["policy_loss"], accelerator),
            "ptx_loss": mean_over_ranks(stats["ptx_loss"], accelerator) if stats["ptx_loss"] else None,
            "explained_variance": explained_variance(old_values, returns, mask),
            "beta": beta,
            "step_seconds": time.perf_counter() - step_started,
            "rollout_seconds": rollout_seconds,
            "generation_seconds": generation_seconds,
            "generated_tokens": int(rollout.response_lengths.sum()),
        }
        history.append(record)
        logger.info(
            f"PPO step {step + 1}/{n_steps}: rm_score {record['rm_score']:.3f} kl {record['kl']:.3f} "
            f"len {record['response_length']:.1f} clip {record['clip_fraction']:.3f} ({record['step_seconds']:.1f}s)"
        )
        if (checkpoint_dir is not None and settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0
                and step + 1 < n_steps and accelerator.is_main_process):
            save_checkpoint(checkpoint_dir, {
                "step": step + 1,
                "policy": policy.state_dict(),
                "value_model": value_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "beta": kl_controller.value,
                "history": history,
            })
        if on_step is not None and accelerator.is_main_process:
            on_step(record)
    train_seconds = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # rank 0 evaluates and writes the artifact
        return {}

    frozen.keep_on_device()
    held_out = eval_prompts or train_prompts[: settings.n_eval_prompts or 8]
    evaluation = evaluate_against_reference(policy, reference_policy, reward_model, tokenizer, held_out, settings, device,
                                            max_prompt_tokens)
    if evaluation["kl_to_sft"] > settings.kl_bound and inside_bound is not None and stopped_at_kl_bound is None:
        # The last update crossed the bound: no rollout measured it, the held-out evaluation did.
        stopped_at_kl_bound = {"step": n_steps + 1, "kl": evaluation["kl_to_sft"], "kept_policy_of_step": inside_bound.step}
        logger.warning(f"PPO's final policy has KL {evaluation['kl_to_sft']:.2f} > kl_bound {settings.kl_bound} on "
                       f"held-out prompts; keeping the policy of step {inside_bound.step}")
        inside_bound.restore(policy)
        evaluation = evaluate_against_reference(policy, reference_policy, reward_model, tokenizer, held_out, settings,
                                                device, max_prompt_tokens)
    output_dir = Path(output_dir)
    save_models(policy, value_model, tokenizer, output_dir, settings.use_lora)
    with open(output_dir / PPO_METRICS_FILE, "w") as handle:
        for record in history:
            handle.write(json.dumps(record) + "\n")
    plot_training_curves(history, output_dir / PPO_CURVES_FILE)
    summary = {
        **evaluation,
        "kl_bound": settings.kl_bound,
        "n_steps": len(history),
        "n_steps_planned": n_steps,
        "num_processes": n_ranks,
        "episodes": len(history) * settings.batch_size,
        "resumed_from_step": start_step,
        "train_seconds": train_seconds,
        "episodes_per_second": (len(history) - start_step) * settings.batch_size / train_seconds if train_seconds > 0 else None,
        "n_train_prompts": len(train_prompts),
        "n_eval_prompts": len(eval_prompts),
        "max_prompt_tokens": max_prompt_tokens,
        "n_prompts_truncated": n_prompts_truncated,
        "final_beta": kl_controller.value,
        "stopped_at_kl_bound": stopped_at_kl_bound,
        "settings": settings.model_dump(),
    }
    (output_dir / PPO_SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
