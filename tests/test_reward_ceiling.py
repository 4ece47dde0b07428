"""benchmarks/reward_ceiling.py: the checker-decided reward, and that it reaches PPO's loop only inside its context."""

import json

import yaml

import pipeline.ppo.algorithm as ppo
from benchmark_scripts import load_benchmark
from pipeline.data.generator import prompt_records
from pipeline.ppo.algorithm import train_ppo
from pipeline.settings import PpoSettings
from ppo_models import tiny_sft_and_reward_model

FAST = dict(batch_size=16, minibatch_size=8, ppo_epochs=1, max_new_tokens=2, n_eval_prompts=4, n_eval_samples=2,
            checkpoint_every=0, device="cpu")


def test_the_checker_decides_task_answers_and_leaves_explanations_to_the_reward_model():
    benchmark = load_benchmark("reward_ceiling")
    task = {"type": "add", "expected": "7"}
    assert benchmark.checker_reward(0.3, None, "anything") == 0.3
    assert benchmark.checker_reward(-2.0, task, "3 plus 4 is 7. The answer is 7.") == 1.0
    assert benchmark.checker_reward(2.5, task, "3 plus 4 is 7. The answer is 7.") == 2.5
    assert benchmark.checker_reward(2.5, task, "3 plus 4 is 8. The answer is 8.") == -1.0
    assert benchmark.checker_reward(-3.0, task, "no final answer") == -3.0


def test_ppo_inside_the_context_is_rewarded_by_the_checker_and_the_loop_is_restored_after(tmp_path):
    benchmark = load_benchmark("reward_ceiling")
    sft_dir, rm_dir, _ = tiny_sft_and_reward_model(tmp_path / "models")
    records = prompt_records(24, 0, "ppo", explanation_fraction=0.0)  # tasks only: two tokens never answer one
    originals = (ppo.prompts_for_step, ppo.sample_responses, ppo.reward_scores)
    from transformers import AutoTokenizer

    with benchmark.checker_rewarded_ppo({r["prompt"]: r["task"] for r in records}, AutoTokenizer.from_pretrained(sft_dir)):
        train_ppo(sft_dir, rm_dir, [r["prompt"] for r in records], tmp_path / "ppo", PpoSettings(total_episodes=32, **FAST))
    assert (ppo.prompts_for_step, ppo.sample_responses, ppo.reward_scores) == originals
    history = [json.loads(line) for line in (tmp_path / "ppo" / "ppo_train_metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(step["rm_score"] <= -1.0 for step in history)


def test_settings_are_the_runs_ppo_config_with_overrides(tmp_path):
    benchmark = load_benchmark("reward_ceiling")
    config = {"ops": {"ppo_policy": {"config": {"seed": 3, "total_episodes": 512, "launcher": "in_process"}}}}
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(config))
    settings = benchmark.ppo_settings(tmp_path, {"learning_rate": "3e-4"})
    assert (settings.seed, settings.total_episodes, settings.learning_rate) == (3, 512, 3e-4)
    assert benchmark.ppo_settings(tmp_path / "missing", {}).total_episodes == PpoSettings().total_episodes
