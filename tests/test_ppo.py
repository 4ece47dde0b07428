"""PPO: the equations on hand-computed examples, rollouts, and short training runs on a tiny SFT + RM."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import pipeline.ppo.algorithm as ppo
from pipeline.settings import PpoSettings
from pipeline.storage.contract import TENSORBOARD_DIR
from pipeline.training.tensorboard_log import read_scalars
from pipeline.ppo.algorithm import generalized_advantages, per_token_kl, per_token_rewards, train_ppo
from pipeline.ppo.rollout import (
    encode_prompts,
    reward_scores,
    response_mask_from_ids,
    sample_responses,
)
from padded_forward import response_logprobs
from ppo_models import tiny_sft_and_reward_model

# A one-token bandit: the RM scores the sampled token, which PPO can learn within a few steps.
FAST = dict(batch_size=32, minibatch_size=16, ppo_epochs=2, max_new_tokens=1, learning_rate=1e-2, temperature=1.0,
            missing_eos_penalty=0.0, n_eval_prompts=4, n_eval_samples=8, checkpoint_every=0, device="cpu")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A random tiny Llama as the SFT policy, and an RM sharing its tokenizer with a large random score head."""
    return tiny_sft_and_reward_model(tmp_path_factory.mktemp("ppo-models"))


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.5, 1.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last column is padding: ignored
    gamma, lam = 0.9, 0.8
    # delta_2 = 1.0 + 0.9*0 - 0.6 = 0.4;  A_2 = 0.4
    # delta_1 = 0.5 + 0.9*0.6 - 0.4 = 0.64;  A_1 = 0.64 + 0.72*0.4 = 0.928
    # delta_0 = 0.0 + 0.9*0.4 - 0.2 = 0.16;  A_0 = 0.16 + 0.72*0.928 = 0.82816
    advantages, returns = generalized_advantages(rewards, values, mask, gamma, lam)
    assert torch.allclose(advantages, torch.tensor([[0.82816, 0.928, 0.4, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[1.02816, 1.328, 1.0, 0.0]]), atol=1e-6)


def test_per_token_reward_has_the_score_at_eos_only_and_kl_on_every_response_token():
    eos = 2
    response_ids = torch.tensor([[5, 6, eos, 7, 8], [5, 6, 7, 8, 9]])
    mask = response_mask_from_ids(response_ids, eos).float()
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -3.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -0.1, -0.1], [-2.0, -2.0, -2.0, -2.0, -2.0]])
    kl = per_token_kl(logprobs, ref_logprobs, "k1") * mask
    last_index = (mask.sum(1) - 1).long()
    rewards = per_token_rewards(torch.tensor([3.0, -1.0]), kl, 0.1, last_index, mask)
    expected = torch.tensor([
        [-0.1 * 0.5, -0.1 * -1.0, 3.0 - 0.1 * 0.0, 0.0, 0.0],  # score at the EOS (index 2); nothing on padding
        [-0.1, -0.1, -0.1, -0.1, -1.0 - 0.1],  # no EOS: score at the last token
    ])
    assert torch.allclose(rewards, expected, atol=1e-6)
    k3 = per_token_kl(logprobs, ref_logprobs, "k3")
    assert (k3 >= 0).all() and torch.allclose(k3[0, 2], torch.tensor(0.0))


def test_rollouts_are_truncated_at_eos_and_their_logprobs_equal_a_full_forward(tiny_models):
    sft_dir, rm_dir, prompts = tiny_models
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    eos_bias = torch.zeros(len(tokenizer))
    eos_bias[tokenizer.eos_token_id] = 4.0  # make EOS likely so that some rows stop early
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + eos_bias)
    batch = encode_prompts(tokenizer, prompts[:8], torch.device("cpu"))
    rollout = sample_responses(model, batch, 12, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id,
                               torch.Generator().manual_seed(0))
    ended = rollout.ended_with_eos(tokenizer.eos_token_id)
    assert ended.any(), "the test needs some responses that end with EOS"
    for ids, mask in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
        real = [t for t, m in zip(ids, mask) if m]
        assert all(t == tokenizer.pad_token_id for t, m in zip(ids, mask) if not m), "after EOS only padding"
        assert tokenizer.eos_token_id not in real[:-1], "the mask ends at the first EOS"
    full = response_logprobs(model, rollout.input_ids, rollout.attention_mask, batch.input_ids.shape[1])
    mask = rollout.response_mask.bool()
    assert torch.allclose(rollout.logprobs[mask], full[mask], atol=1e-4)

    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with torch.no_grad():  # HF's own pooling reads the last non-pad token: the EOS, or the last token
        expected = rm(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                      position_ids=(rollout.attention_mask.cumsum(1) - 1).clamp(min=0)).logits[:, 0]
    assert torch.allclose(reward_scores(rm, rollout), expected, atol=1e-5)


def _capture_models(monkeypatch):
    captured = {}
    original = ppo.load_models

    def load_and_capture(*args, **kwargs):
        models = original(*args, **kwargs)
        captured["models"] = models
        captured["before"] = {name: {k: v.detach().clone() for k, v in model.state_dict().items()}
                              for name, model in zip(("reference", "reward_model"), models[2:4])}
        return models

    monkeypatch.setattr(ppo, "load_models", load_and_capture)
    return captured


def test_training_raises_the_rm_score_with_bounded_kl_and_leaves_frozen_models_alone(tiny_models, tmp_path, monkeypatch):
    sft_dir, rm_dir, prompts = tiny_models
    captured = _capture_models(monkeypatch)
    summary = train_ppo(sft_dir, rm_dir, prompts, tmp_path, PpoSettings(total_episodes=320, kl_coef=0.05, **FAST))

    history = [json.loads(line) for line in (tmp_path / "ppo_train_metrics.jsonl").read_text().splitlines()]
    assert len(history) == 10
    required = {"step", "episodes", "rm_score", "kl", "total_reward", "entropy", "response_length", "clip_fraction",
                "approx_kl", "value_loss", "policy_loss", "explained_variance", "beta"}
    assert required <= set(history[0])
    early = sum(r["rm_score"] for r in history[:3]) / 3
    late = sum(r["rm_score"] for r in history[-3:]) / 3
    assert late > early + 0.5, f"RM score should rise over training: {early:.2f} -> {late:.2f}"
    assert summary["rm_score_ppo"] > summary["rm_score_sft"]
    assert max(r["kl"] for r in history) < 3.0 and summary["kl_to_sft"] < 3.0

    _, policy, reference, reward_model, _ = captured["models"]
    for name, model in (("reference", reference), ("reward_model", reward_model)):
        for key, value in model.state_dict().items():
            assert torch.equal(value, captured["before"][name][key]), f"{name}.{key} changed during PPO"
    sft = AutoModelForCausalLM.from_pretrained(sft_dir)
    assert any(not torch.equal(a, b) for a, b in zip(policy.state_dict().values(), sft.state_dict().values()))

    # the artifact layout other stages load
    trained = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token_id is not None
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "value_model").config.num_labels == 1
    assert torch.equal(trained.lm_head.weight, policy.lm_head.weight)
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    written = json.loads((tmp_path / "ppo_summary.json").read_text())
    assert written["kl_bound"] == 8.0 and "response_length_ratio" in written


def test_a_very_large_beta_keeps_the_policy_at_the_reference(tiny_models, tmp_path):
    sft_dir, rm_dir, prompts = tiny_models
    summary = train_ppo(sft_dir, rm_dir, prompts, tmp_path, PpoSettings(total_episodes=128, kl_coef=1000.0, adaptive_kl=False, **FAST))
    history = [json.loads(line) for line in (tmp_path / "ppo_train_metrics.jsonl").read_text().splitlines()]
    # The first update cannot feel beta (its rollout comes from the reference, so every KL_t is 0);
    # from then on the penalty pulls the policy back. Per-step KLs are estimates from 32 one-token
    # answers, so they only stay small; the final policy's KL on held-out prompts (an estimate from
    # 4 x 8 one-token answers) is near 0, where without the penalty it passes 0.5 within a few steps
    # (test_training_stops_at_the_kl_bound_and_keeps_the_last_policy_inside_it).
    assert abs(summary["kl_to_sft"]) < 0.2
    assert all(abs(r["kl"]) < 0.2 for r in history)


def test_training_resumes_from_the_latest_checkpoint(tiny_models, tmp_path):
    sft_dir, rm_dir, prompts = tiny_models
    settings = PpoSettings(total_episodes=96, **{**FAST, "checkpoint_every": 1, "n_eval_samples": 1})
    uninterrupted = train_ppo(sft_dir, rm_dir, prompts, tmp_path / "a", settings)

    class Crash(Exception):
        pass

    def crash_after_step_2(record):
        if record["step"] == 2:
            raise Crash

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Crash):
        train_ppo(sft_dir, rm_dir, prompts, tmp_path / "b", settings, checkpoint_dir=checkpoints, on_step=crash_after_step_2)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "tensorboard"]
    resumed = train_ppo(sft_dir, rm_dir, prompts, tmp_path / "b", settings, checkpoint_dir=checkpoints)
    assert resumed["resumed_from_step"] == 2
    # One TensorBoard curve over steps 1..3: the crashed run's steps, then the resumed run's.
    kl_curve = read_scalars(tmp_path / "b" / TENSORBOARD_DIR)["ppo/kl"]
    assert [event.step for event in kl_curve] == [1, 2, 3]

    def last_record(directory):
        return json.loads((directory / "ppo_train_metrics.jsonl").read_text().splitlines()[-1])

    a, b = last_record(tmp_path / "a"), last_record(tmp_path / "b")
    for key in ("rm_score", "kl", "value_loss", "policy_loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert uninterrupted["rm_score_ppo"] == pytest.approx(resumed["rm_score_ppo"], rel=1e-4, abs=1e-5)


def test_lora_with_ptx_trains_and_saves_a_merged_policy(tiny_models, tmp_path):
    sft_dir, rm_dir, prompts = tiny_models
    ptx_records = [{"prompt": "What is PPO?", "completion": "A policy-gradient method."}] * 4
    settings = PpoSettings(total_episodes=64, use_lora=True, ptx_coef=0.5, ptx_batch_size=2,
                           **{**FAST, "n_eval_samples": 1})
    train_ppo(sft_dir, rm_dir, prompts, tmp_path, settings, ptx_records=ptx_records)
    history = [json.loads(line) for line in (tmp_path / "ppo_train_metrics.jsonl").read_text().splitlines()]
    assert abs(history[0]["kl"]) < 1e-5, "with the adapter disabled the reference equals the starting policy"
    assert all(r["ptx_loss"] > 0 for r in history)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)  # a plain causal LM, no adapter files needed
    assert not any("lora" in name for name in merged.state_dict())


def test_settings_reject_a_batch_that_minibatches_do_not_divide(tiny_models, tmp_path):
    sft_dir, rm_dir, prompts = tiny_models
    with pytest.raises(ValueError, match="multiple of minibatch_size"):
        train_ppo(sft_dir, rm_dir, prompts, tmp_path, PpoSettings(batch_size=10, minibatch_size=4, device="cpu"))


def _materialize_ppo_policy(tiny_models, artifacts_root, dagster_instance, config, raise_on_error=True):
    """ppo_policy alone, on the tiny SFT model, reward model and prompts reported as its inputs."""
    import dagster as dg

    from pipeline.data.records import write_jsonl
    from pipeline.definitions import defs
    from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource
    from pipeline.storage.contract import ARTIFACT_PATH_KEY

    sft_dir, rm_dir, prompts = tiny_models
    prompts_dir = artifacts_root / "ppo_prompts" / "given"
    prompts_dir.mkdir(parents=True)
    write_jsonl([{"prompt": p} for p in prompts], prompts_dir / "data.jsonl")
    for key, path in (("sft_checkpoint", sft_dir), ("reward_model", rm_dir), ("ppo_prompts", prompts_dir)):
        dagster_instance.report_runless_asset_event(
            dg.AssetMaterialization(key, metadata={ARTIFACT_PATH_KEY: dg.MetadataValue.path(str(path))})
        )
    return dg.materialize(
        list(defs.assets), selection=[dg.AssetKey("ppo_policy")], instance=dagster_instance,
        resources={"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": ArtifactIOManager()},
        run_config={"ops": {"ppo_policy": {"config": config}}}, raise_on_error=raise_on_error,
    )


def test_ppo_policy_asset_writes_the_contracted_artifact_and_metadata(tiny_models, artifacts_root, dagster_instance):
    from pipeline.storage.contract import ARTIFACT_PATH_KEY

    config = {k: v for k, v in FAST.items() if k != "device"} | {"total_episodes": 64, "n_eval_samples": 1, "checkpoint_every": 1}
    result = _materialize_ppo_policy(tiny_models, artifacts_root, dagster_instance, config)
    assert result.success
    metadata = result.asset_materializations_for_node("ppo_policy")[0].metadata
    for key in ("rm_score_sft", "rm_score_ppo", "kl_to_sft", "kl_bound", "response_length_sft", "response_length_ppo",
                "response_length_ratio", "training_curves", "samples"):
        assert key in metadata, key
    artifact = Path(metadata[ARTIFACT_PATH_KEY].value)
    for name in ("ppo_train_metrics.jsonl", "ppo_summary.json", "training_curves.png", "value_model/config.json", "config.json"):
        assert (artifact / name).exists(), f"{name} missing from {artifact}"
    checkpoints = artifacts_root / "ppo_policy" / ".checkpoints"
    assert not any(p.is_dir() for p in checkpoints.glob("*")), "checkpoints are removed once the artifact is committed"


def test_ppo_policy_asset_refuses_ptx_coef_it_has_no_records_for(tiny_models, artifacts_root, dagster_instance):
    result = _materialize_ppo_policy(tiny_models, artifacts_root, dagster_instance, {"ptx_coef": 0.5}, raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert "ptx_coef=0.5" in message and "set ptx_coef: 0" in message
    assert not list((artifacts_root / "ppo_policy").glob("2*")), "no artifact is written"


def test_training_stops_at_the_kl_bound_and_keeps_the_last_policy_inside_it(tiny_models, tmp_path):
    sft_dir, rm_dir, prompts = tiny_models
    # No KL penalty and a large step: the policy leaves the reference within a few steps.
    settings = PpoSettings(total_episodes=640, kl_coef=0.0, adaptive_kl=False, kl_bound=0.5, **FAST)
    summary = train_ppo(sft_dir, rm_dir, prompts, tmp_path, settings)
    history = [json.loads(line) for line in (tmp_path / "ppo_train_metrics.jsonl").read_text().splitlines()]

    stopped = summary["stopped_at_kl_bound"]
    assert stopped is not None and stopped["kl"] > 0.5
    assert summary["n_steps"] == len(history) < summary["n_steps_planned"] == 20
    # The kept policy is the one the last recorded rollout measured, inside the bound.
    assert stopped["kept_policy_of_step"] == len(history) - 1
    assert history[-1]["kl"] <= 0.5
    assert summary["kl_to_sft"] < 1.0


def test_the_adaptive_controller_raises_beta_above_its_target_and_lowers_it_below():
    controller = ppo.AdaptiveKLController(beta=0.1, target=2.0, horizon=100)
    controller.update(current_kl=4.0, n_episodes=10)  # error clipped to +0.2: beta * (1 + 0.2 * 10/100)
    assert controller.value == pytest.approx(0.1 * 1.02)
    controller.update(current_kl=1.0, n_episodes=10)  # error -0.5 clipped to -0.2
    assert controller.value == pytest.approx(0.1 * 1.02 * 0.98)
