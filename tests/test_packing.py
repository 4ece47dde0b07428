"""Padding-free packing: placement, and packed forward passes equal to the padded ones token for token."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from pipeline.settings import TinyModelSpec
from pipeline.training.base_model import build_tiny_llama, train_tokenizer
from pipeline.data.generator import pretraining_text, prompt_records
from pipeline.training.packing import first_fit_decreasing, pack
from pipeline.ppo.algorithm import clipped_policy_loss, clipped_value_loss, entropy_from_log_softmax
from pipeline.ppo.rollout import (
    encode_prompts,
    position_ids_for,
    pack_rollout,
    response_log_softmax,
    response_logprobs_packed,
    reward_scores,
    sample_categorical,
    sample_responses,
    token_values,
)
from padded_forward import response_logprobs

SPEC = TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_first_fit_decreasing_fills_bins_without_overlap_or_overflow():
    lengths = [7, 3, 5, 2, 8, 1, 4]
    bins, offsets, n_bins = first_fit_decreasing(lengths, capacity=8)
    assert n_bins == 4  # 30 tokens in bins of 8: four is the least possible
    for b in range(n_bins):
        spans = sorted((offsets[i], offsets[i] + lengths[i]) for i in range(len(lengths)) if bins[i] == b)
        assert spans[0][0] == 0 and spans[-1][1] <= 8
        assert all(end == next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), "contiguous, no overlap"
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([9], capacity=8)


def test_pack_lays_real_tokens_end_to_end_with_restarting_positions():
    pad = 0
    # [left-padded prompt | response padded after EOS], the response from column 3
    input_ids = torch.tensor([
        [pad, 11, 12, 21, 22, pad],
        [pad, pad, 15, 23, pad, pad],
        [pad, pad, 16, 24, pad, pad],
    ])
    packed = pack(input_ids, (input_ids != pad).long(), response_start=3)
    # rows as wide as the longest sequence (4 tokens); the two 2-token sequences share a row
    assert packed.input_ids.tolist() == [[11, 12, 21, 22], [15, 23, 16, 24]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    # the response tokens in the padded layout's row-major order, each predicted from the position before it
    assert packed.response_targets.tolist() == [21, 22, 23, 24]
    assert packed.input_ids[packed.response_rows, packed.response_cols].tolist() == [12, 21, 15, 16]
    assert packed.input_ids[packed.last_rows, packed.last_cols].tolist() == [22, 23, 24]
    assert packed.to_padded(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [[1, 2, 0], [3, 0, 0], [4, 0, 0]]

    three = pack(input_ids[:, 1:], (input_ids[:, 1:] != pad).long(), response_start=2)  # filler after a short row
    assert three.input_ids.shape == (2, 4) and three.position_ids[1].tolist() == [0, 1, 0, 1]


@pytest.fixture(scope="module")
def rollout_and_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing-models")
    tokenizer = train_tokenizer(pretraining_text(50, 0), vocab_size=512)
    policy = build_tiny_llama(tokenizer, SPEC, seed=0).eval()
    policy.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    torch.manual_seed(1)
    scalar = AutoModelForSequenceClassification.from_pretrained(root / "lm", num_labels=1).eval()
    torch.nn.init.normal_(scalar.score.weight, std=1.0)
    eos_bias = torch.zeros(len(tokenizer))
    eos_bias[tokenizer.eos_token_id] = 5.0  # responses of many different lengths, several short
    hook = policy.lm_head.register_forward_hook(lambda module, inputs, logits: logits + eos_bias)
    prompts = [r["prompt"] for r in prompt_records(12, 0, "ppo")]
    prompts = [p if i % 2 else " ".join(p.split()[:2]) for i, p in enumerate(prompts)]  # long and short prompts
    batch = encode_prompts(tokenizer, prompts, torch.device("cpu"))
    rollout = sample_responses(policy, batch, 16, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id,
                               torch.Generator().manual_seed(0))
    hook.remove()
    lengths = rollout.response_lengths
    assert lengths.min() < lengths.max() and batch.attention_mask.sum(1).unique().numel() > 1, "needs ragged rows"
    return rollout, AutoModelForCausalLM.from_pretrained(root / "lm").eval(), scalar


def test_packed_logprobs_values_and_scores_equal_the_padded_forward(rollout_and_models):
    rollout, policy, scalar = rollout_and_models
    packed = pack_rollout(rollout)
    assert packed.input_ids.shape[0] < rollout.input_ids.shape[0], "some rows must hold several sequences"
    assert packed.input_ids.numel() < rollout.input_ids.numel()
    mask = rollout.response_mask.bool()
    start = rollout.query_ids.shape[1]
    with torch.no_grad():
        for temperature in (1.0, 0.7):
            padded = response_logprobs(policy, rollout.input_ids, rollout.attention_mask, start, temperature)
            flat = response_logprobs_packed(policy, packed, temperature)
            assert flat.shape == (int(mask.sum()),)
            assert torch.allclose(packed.to_padded(flat)[mask], padded[mask], atol=1e-5)

        backbone = scalar.model
        hidden = backbone(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                          position_ids=position_ids_for(rollout.attention_mask)).last_hidden_state
        padded_values = scalar.score(hidden[:, start - 1 : -1]).squeeze(-1)
        assert torch.allclose(token_values(scalar, packed), padded_values[mask], atol=1e-5)
        # HF's own sequence-classification pooling reads the last non-pad token: the EOS, or the last token
        expected = scalar(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                          position_ids=position_ids_for(rollout.attention_mask)).logits[:, 0]
        assert torch.allclose(reward_scores(scalar, packed), expected, atol=1e-5)

        rows = torch.tensor([5, 0, 7])
        subset = pack_rollout(rollout, rows)
        assert torch.allclose(response_logprobs_packed(policy, subset), padded_for_rows(policy, rollout, rows), atol=1e-5)


def padded_for_rows(policy, rollout, rows):
    start = rollout.query_ids.shape[1]
    padded = response_logprobs(policy, rollout.input_ids[rows], rollout.attention_mask[rows], start)
    return padded[rollout.response_mask[rows].bool()]


def test_gradients_through_the_packed_forward_equal_the_padded_ones(rollout_and_models):
    rollout, policy, _ = rollout_and_models
    mask = rollout.response_mask.bool()
    start = rollout.query_ids.shape[1]
    packed_grads, padded_grads = [], []
    for use_packing, grads in ((True, packed_grads), (False, padded_grads)):
        policy.zero_grad()
        if use_packing:
            loss = response_logprobs_packed(policy, pack_rollout(rollout)).mean()
        else:
            loss = response_logprobs(policy, rollout.input_ids, rollout.attention_mask, start)[mask].mean()
        loss.backward()
        grads += [p.grad.clone() for p in policy.parameters()]
    for packed_grad, padded_grad in zip(packed_grads, padded_grads):
        assert torch.allclose(packed_grad, padded_grad, atol=1e-5, rtol=1e-4)


def test_entropy_from_log_softmax_matches_the_definition(rollout_and_models):
    rollout, policy, _ = rollout_and_models
    with torch.no_grad():
        log_probs = response_log_softmax(policy, pack_rollout(rollout))
    probs = log_probs.exp()
    assert torch.allclose(entropy_from_log_softmax(log_probs), -(probs * probs.log()).sum(-1), atol=1e-5)
    assert torch.allclose(entropy_from_log_softmax(torch.full((1, 4), 0.25).log()), torch.tensor([4 * 0.25 * 1.3862944]), atol=1e-6)


def test_sample_categorical_draws_from_the_given_distribution():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(200_000, 1)
    draws = sample_categorical(probs, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=4).float() / len(draws)
    assert frequencies[1] == 0, "a zero-probability token is never drawn"
    assert torch.allclose(frequencies, probs[0], atol=0.005)
    unnormalised = sample_categorical(torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.Generator().manual_seed(1))
    assert unnormalised.tolist() == [0, 1]


def test_clipped_losses_on_a_hand_computed_example():
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1]))  # ratios 1.5, 0.5, 1.1 with eps = 0.2
    advantages = torch.tensor([1.0, 1.0, -2.0])
    loss, clip_fraction, _ = clipped_policy_loss(new, old, advantages, 0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(2.2, 2.2) = 2.2
    assert torch.allclose(loss, torch.tensor((-1.2 - 0.5 + 2.2) / 3))
    assert torch.allclose(clip_fraction, torch.tensor(1 / 3))
    values, old_values, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0]), torch.tensor([0.0, 1.0])
    # token 0: max((1-0)^2, (0.5+0.2-0)^2) = 1; token 1: max(1, 1) = 1
    assert torch.allclose(clipped_value_loss(values, old_values, returns, 0.2), torch.tensor(0.5))
