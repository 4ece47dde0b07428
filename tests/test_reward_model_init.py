"""The reward model's new score head is initialised from the RM's seed, so a run can be repeated."""

import torch

from pipeline.training.reward_model import reward_model_from_sft
from ppo_models import tiny_sft_and_reward_model


def test_score_head_is_the_same_for_the_same_seed_and_leaves_the_global_random_state_alone(tmp_path):
    sft_dir, _, _ = tiny_sft_and_reward_model(tmp_path, n_prompts=2)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = reward_model_from_sft(sft_dir, seed=0).score.weight
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream goes on as if untouched
    torch.rand(5)  # whatever the process drew before, the head depends on the seed only
    assert torch.equal(reward_model_from_sft(sft_dir, seed=0).score.weight, first)
    assert not torch.equal(reward_model_from_sft(sft_dir, seed=1).score.weight, first)
