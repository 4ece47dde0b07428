"""The base checkpoint: a named HF causal LM, or by default a tiny Llama-style model built here.

The default path trains a byte-level BPE tokenizer on generator text (distinct pad, bos and eos
tokens and a chat template), builds a small Llama and pretrains it briefly on plain prose, so that
it continues text but does not yet follow instructions: that is what SFT is for.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pipeline.settings import PretrainSettings, TinyModelSpec
from pipeline.training.chat_format import ASSISTANT, BOS, CHAT_TEMPLATE, EOS, PAD, UNK, USER

logger = logging.getLogger(__name__)


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer with distinct special tokens and the project's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(tokenizer, spec: TinyModelSpec, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def pretrain(
    model,
    tokenizer,
    documents: Sequence[str],
    settings: PretrainSettings,
    device: torch.device,
    on_progress: Callable[[int, float], None] | None = None,
    scratch: Path | None = None,
) -> list[float]:
    """Plain next-token training on packed chunks of prose; returns the loss curve.

    With `scratch`, the loss and learning rate of every step go to TensorBoard in `<scratch>/tensorboard/`.
    """
    from pipeline.training.progress import stage_progress
    from pipeline.training.tensorboard_log import ScalarLog

    stream: list[int] = []
    for document in documents:
        stream.extend([tokenizer.bos_token_id, *tokenizer.encode(document, add_special_tokens=False), tokenizer.eos_token_id])
    chunk = settings.pretrain_sequence_length
    n_chunks = len(stream) // chunk
    if n_chunks < settings.pretrain_batch_size:
        raise ValueError(f"pretraining text gives {n_chunks} chunks of {chunk} tokens; need at least {settings.pretrain_batch_size}")
    data = torch.tensor(stream[: n_chunks * chunk]).view(n_chunks, chunk)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_learning_rate, weight_decay=0.01)
    warmup = max(1, settings.pretrain_steps // 10)

    def lr_lambda(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    # On a GPU with bf16, mixed precision as in the trainers (fp32 weights and optimizer state).
    bf16_autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                   enabled=device.type == "cuda" and torch.cuda.is_bf16_supported())
    scalars = ScalarLog(scratch) if scratch is not None else None
    bar = stage_progress(settings.pretrain_steps, "base_model: pretraining")
    for step in range(settings.pretrain_steps):
        batch = data[torch.randint(0, n_chunks, (settings.pretrain_batch_size,), generator=generator)].to(device)
        with bf16_autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if scalars is not None:
            scalars.log({"loss": losses[-1], "learning_rate": learning_rate}, step + 1, prefix="train/")
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if on_progress is not None:
            on_progress(step, losses[-1])
    bar.close()
    if scalars is not None:
        scalars.close()
    model.eval()
    return losses


def build_default_base_model(
    spec: TinyModelSpec, settings: PretrainSettings, device: torch.device,
    on_progress: Callable[[int, float], None] | None = None,
    scratch: Path | None = None,
):
    """Tokenizer + tiny Llama pretrained on generator prose. Returns (model, tokenizer, losses).

    With `scratch`, the pretraining curves go to TensorBoard in `<scratch>/tensorboard/`."""
    from pipeline.data.generator import pretraining_text

    random.seed(settings.seed)
    documents = pretraining_text(settings.pretrain_documents, settings.seed, settings.pretrain_tasks_per_document)
    tokenizer = train_tokenizer(documents, spec.vocab_size)
    model = build_tiny_llama(tokenizer, spec, settings.seed)
    losses = pretrain(model, tokenizer, documents, settings, device, on_progress, scratch)
    return model.cpu(), tokenizer, losses


def load_pretrained(
    name_or_path: str, revision: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False,
):
    """A named HF causal LM (local directory or hub id), made ready for this pipeline.

    Returns `(model, tokenizer, added)`, `added` saying in words what the checkpoint lacked and got
    (for the model card and the materialization metadata; empty when nothing was missing).
    Tokenizer and weights load from the same `revision`. A tokenizer without an eos token gets one,
    one without a chat template gets the project's template (and its role tokens), and one whose pad
    token is missing or equal to eos gets a distinct pad token; the embedding matrix grows to fit
    added tokens but never shrinks (many checkpoints pad their vocabulary beyond the tokenizer).
    Remote code runs only when `trust_remote_code` says so; pickle weights load only with `allow_pickle`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle,
    )
    added: list[str] = []
    rows_before = model.get_input_embeddings().weight.shape[0]
    if tokenizer.eos_token is None:
        # Without eos an answer has no end: SFT cannot teach stopping and the reward is read nowhere.
        tokenizer.add_special_tokens({"eos_token": EOS})
        model.config.eos_token_id = tokenizer.eos_token_id
        if model.generation_config is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        added.append(f"eos token `{EOS}` (id {tokenizer.eos_token_id}): the tokenizer had none")
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.add_special_tokens({"extra_special_tokens": [USER, ASSISTANT]}, replace_extra_special_tokens=False)
        added.append(f"chat template: the project's (`{USER}` / `{ASSISTANT}` turns, answers end with eos); "
                     "the tokenizer had none")
    pad_before = tokenizer.pad_token
    ensure_distinct_pad_token(tokenizer, model)
    if tokenizer.pad_token != pad_before:
        reason = "the tokenizer had none" if pad_before is None else f"its pad token `{pad_before}` was the eos token"
        added.append(f"pad token `{tokenizer.pad_token}` (id {tokenizer.pad_token_id}): {reason}")
    rows_after = model.get_input_embeddings().weight.shape[0]
    if rows_after != rows_before:
        added.append(f"embedding matrix grown from {rows_before} to {rows_after} rows for the added tokens")
    tokenizer.padding_side = "left"
    return model, tokenizer, added


def resolved_revision(model) -> str | None:
    """The hub commit the weights were loaded from (None for a local directory)."""
    return getattr(model.config, "_commit_hash", None)


def grow_embeddings_to_fit(tokenizer, model) -> None:
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))


def ensure_distinct_pad_token(tokenizer, model) -> None:
    """PPO and reward reading need a pad token that is not eos; add one if missing."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    grow_embeddings_to_fit(tokenizer, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
