"""benchmarks/sft_flaws.py: the shares it reports, and one small call end to end."""

import json
import shutil

import yaml

from assets.data import SftDataConfig
from benchmark_scripts import load_benchmark
from ppo_models import tiny_sft_and_reward_model


def test_shares_of_right_wrong_and_unanswered():
    benchmark = load_benchmark("reward_ceiling")  # the probe sft_flaws.py shares
    shares = benchmark.answer_shares([["right", "wrong", "no result", "no result"], ["right", "right", "wrong", "wrong"]])
    assert shares == {"accuracy": 3 / 8, "no_result": 2 / 8, "right_when_answered": 3 / 6}
    assert benchmark.answer_shares([["no result"]])["right_when_answered"] == 0.0


def test_a_small_call_trains_sft_on_the_asked_flaws_and_probes_it(tmp_path):
    benchmark = load_benchmark("sft_flaws")
    base_dir, _, _ = tiny_sft_and_reward_model(tmp_path / "models")
    run = tmp_path / "run"
    shutil.copytree(base_dir, run / "artifacts" / "base_model" / "20260101T000000000000Z-abc")
    (run / "run_config.yaml").write_text(yaml.safe_dump({"ops": {"sft_data": {"config": {"seed": 3}}}}))
    out = tmp_path / "results.jsonl"
    argv = [str(run), "--n-records", "40", "--task-flaws", "wrong", "vague", "--per-type", "1", "--samples", "1",
            "--epochs", "2", "--out", str(out)]
    assert benchmark.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["seed"] == 3 and result["flaws"]["verifiable"] == ["wrong", "vague"]
    assert result["epochs"] == 2 and result["sft_steps"] == 2 * 3  # 36 training demonstrations, batches of 16
    n_good = round(40 * (1 - SftDataConfig().flawed_fraction))  # the default share of flawed demonstrations
    assert set(result["demonstrations"]) <= {"good", "wrong", "vague", "repetitive"} and result["demonstrations"]["good"] == n_good
    for share in ("accuracy", "no_result", "right_when_answered", "greedy_accuracy", "concept_match"):
        assert 0.0 <= result[share] <= 1.0
    assert result["accuracy"] + result["no_result"] <= 1.0
