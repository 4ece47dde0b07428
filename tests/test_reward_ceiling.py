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


def test_answers_are_right_wrong_or_without_a_result_and_the_table_shows_the_shares():
    benchmark = load_benchmark("reward_ceiling")
    task = {"type": "add", "expected": "7"}
    assert benchmark.answer_kind(task, "3 plus 4 is 7. The answer is 7.") == "right"
    assert benchmark.answer_kind(task, "3 plus 4 is 8. The answer is 8.") == "wrong"
    assert benchmark.answer_kind(task, "Great question, it depends.") == "no result"
    assert benchmark.answer_kind(task, "The answer is 6. The answer is 8.") == "no result"
    gain = {"difference": 0.05, "ci95": [0.01, 0.09]}
    kinds = {"sft": {"right": 2, "wrong": 4, "no result": 2}, "reward model": {"right": 3, "wrong": 4, "no result": 1},
             "checker": {"right": 4, "wrong": 4}}
    result = {"run": "/tmp/runs/seed3", "seed": 3, "n_tasks": 2, "samples": 4,
              "ppo_kl_to_sft": {"reward model": 1.0, "checker": 1.5},
              "sampled": {"accuracy": {"sft": 0.25}, "gain_over_sft": {"reward model": gain, "checker": gain},
                          "answer_kinds": kinds, "accuracy_when_answered": {"sft": 1 / 3, "reward model": 3 / 7, "checker": 0.5}},
              "greedy": {"accuracy": {"sft": 0.5, "reward model": 0.5, "checker": 1.0}}}
    row = benchmark.table([result]).splitlines()[2]
    assert row.startswith("| seed3 | 3 | 0.250 | +0.050 [+0.010, +0.090] |")
    assert "| 0.25 / 0.12 / 0.00 | 0.33 / 0.43 / 0.50 | 0.500 / 0.500 / 1.000 | 1.00 / 1.50 |" in row
