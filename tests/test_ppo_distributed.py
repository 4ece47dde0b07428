"""PPO on two processes (DDP over gloo on the CPU) does what one process does.

Each rank samples and scores half of the step's prompts, the rollout is gathered, advantages are
whitened over the whole batch and every minibatch is split between the ranks, whose gradients DDP
averages: so 2 processes x B/2 prompts must make the same update as 1 process x B prompts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.ppo.algorithm import train_ppo
from pipeline.settings import PpoSettings
from pipeline.storage.contract import PPO_METRICS_FILE, PPO_SUMMARY_FILE
from ppo_models import tiny_sft_and_reward_model

REPO_ROOT = Path(__file__).resolve().parents[1]
# One PPO step of 8 prompts in 2 minibatches of 4 (2 per rank): the first update, and the second within the step.
ONE_STEP = PpoSettings(
    total_episodes=8, batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=6, learning_rate=1e-2,
    n_eval_prompts=2, n_eval_samples=1, checkpoint_every=0, device="cpu", seed=3,
)


def launch_two_ranks(sft: Path, rm: Path, prompts: list[str], settings: PpoSettings, output_dir: Path) -> None:
    prompts_file, settings_file = output_dir.parent / "prompts.json", output_dir.parent / "settings.json"
    prompts_file.write_text(json.dumps(prompts))
    settings_file.write_text(settings.model_dump_json())
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO_ROOT / "tests" / "ppo_rank_runner.py"), str(sft), str(rm), str(prompts_file),
               str(settings_file), str(output_dir)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.mark.slow
def test_two_processes_with_half_the_batch_each_make_the_same_update_as_one_process(tmp_path):
    sft, rm, prompts = tiny_sft_and_reward_model(tmp_path / "models")
    one, two = tmp_path / "one" / "out", tmp_path / "two" / "out"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    train_ppo(sft, rm, prompts, one, ONE_STEP)
    launch_two_ranks(sft, rm, prompts, ONE_STEP, two)

    # The same step: the same samples and statistics of the whole batch...
    (step_one,) = [json.loads(line) for line in (one / PPO_METRICS_FILE).read_text().splitlines()]
    (step_two,) = [json.loads(line) for line in (two / PPO_METRICS_FILE).read_text().splitlines()]
    assert step_two.keys() == step_one.keys(), "a 2-process run writes the 1-process metrics schema"
    assert step_two["generated_tokens"] == step_one["generated_tokens"]
    for key in ("rm_score", "kl", "total_reward", "response_length", "no_eos_fraction", "explained_variance"):
        assert step_two[key] == pytest.approx(step_one[key], rel=1e-4, abs=1e-5), key
    # (per-rank means of minibatch statistics, so close but not equal to the whole minibatch's mean)
    for key in ("policy_loss", "value_loss", "approx_kl", "entropy"):
        assert step_two[key] == pytest.approx(step_one[key], rel=0.2, abs=1e-3), key

    # ...and the same weights after its updates, to float rounding (learning rate 1e-2: a real move).
    before = load_file(sft / "model.safetensors")
    weights_one, weights_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    moved = max(float((weights_one[name] - before[name]).abs().max()) for name in before)
    assert moved > 1e-3, "the update moved the policy"
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    value_one = load_file(one / "value_model" / "model.safetensors")
    value_two = load_file(two / "value_model" / "model.safetensors")
    for name, tensor in value_one.items():
        torch.testing.assert_close(value_two[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    summary_one = json.loads((one / PPO_SUMMARY_FILE).read_text())
    summary_two = json.loads((two / PPO_SUMMARY_FILE).read_text())
    assert summary_two.keys() == summary_one.keys()
    assert (summary_one["num_processes"], summary_two["num_processes"]) == (1, 2)
    assert not list(two.parent.glob("out-*")), "only rank 0 writes"


def test_each_rank_takes_a_contiguous_share_and_one_process_weights_its_loss_by_one():
    from types import SimpleNamespace

    from pipeline.ppo.algorithm import rank_share, token_share

    two_ranks = [SimpleNamespace(num_processes=2, process_index=rank) for rank in (0, 1)]
    assert [rank_share(8, a) for a in two_ranks] == [slice(0, 4), slice(4, 8)]
    assert token_share(5, SimpleNamespace(num_processes=1)) == 1.0
