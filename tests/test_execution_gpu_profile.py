"""The GPU profile: a 100M-350M model run config, and its benchmark harness (reduced, on the CPU)."""

import json
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml

from benchmark_scripts import load_benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_PROFILE = REPO_ROOT / "pipeline" / "profiles" / "gpu.yaml"


def _benchmark_module():
    return load_benchmark("gpu_profile")


def _valid_profile_parameter_counts(profile_path: Path) -> list[int]:
    """The profile validates against the job; its base model's parameter counts at both ends of the
    vocabulary range (the BPE trainer may stop below vocab_size on generator text), built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.definitions import defs
    from pipeline.settings import TinyModelSpec

    profile = yaml.safe_load(profile_path.read_text())
    assert dg.validate_run_config(defs.resolve_job_def("rlhf_pipeline"), profile)
    config = profile["ops"]["base_model"]["config"]
    spec = TinyModelSpec(**{k: v for k, v in config.items() if k in TinyModelSpec.model_fields})
    counts = []
    for vocab in (4096, spec.vocab_size):
        llama = LlamaConfig(vocab_size=vocab, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                            num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                            num_key_value_heads=spec.num_heads, max_position_embeddings=spec.max_position_embeddings,
                            tie_word_embeddings=True)
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in LlamaForCausalLM(llama).parameters()))
    return counts


def test_gpu_profile_is_valid_and_builds_a_100m_to_350m_model():
    for n_parameters in _valid_profile_parameter_counts(GPU_PROFILE):
        assert 100e6 <= n_parameters <= 350e6, n_parameters


def test_ppo_step_split_from_trainer_timings(tmp_path):
    benchmark = _benchmark_module()
    metrics = tmp_path / "ppo_train_metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in [
        {"step": 1, "step_seconds": 2.0, "rollout_seconds": 1.2, "generation_seconds": 1.0, "generated_tokens": 500},
        {"step": 2, "step_seconds": 4.0, "rollout_seconds": 1.8, "generation_seconds": 1.0, "generated_tokens": 300},
    ]))
    split = benchmark.ppo_step_split(metrics)
    assert split["n_steps"] == 2 and split["step_seconds"] == pytest.approx(3.0)
    assert split["generation_seconds"] == pytest.approx(1.0)
    assert split["scoring_seconds"] == pytest.approx(0.5)
    assert split["training_seconds"] == pytest.approx(1.5)
    assert split["generated_tokens_per_second_in_ppo"] == pytest.approx(400.0)
    report = benchmark.markdown_report({
        "device": "cpu", "profile": "p.yaml", "timestamp": "t", "torch": "x",
        "stages": [{"stage": "ppo_policy", "seconds": 6.0, "peak_gpu_gib": 0.0}], "ppo_step_split": split,
    })
    assert "| generation | 1.000 | 33% |" in report and "| training | 1.500 | 50% |" in report


@pytest.mark.slow
def test_benchmark_runs_reduced_on_the_cpu(tmp_path, tiny_run_config):
    benchmark = _benchmark_module()
    profile = tmp_path / "reduced.yaml"
    tiny_run_config["ops"]["base_model"]["config"].update(pretrain_steps=0, pretrain_documents=50)
    profile.write_text(yaml.safe_dump(tiny_run_config))
    result = benchmark.main(["--profile", str(profile), "--stages", "base_model,eval_prompts",
                             "--generation-batches", "1", "--out", str(tmp_path / "out")])
    assert [row["stage"] for row in result["stages"]] == ["base_model", "eval_prompts"]
    assert all(row["seconds"] > 0 for row in result["stages"])
    generation = result["generation"]
    assert generation["generated_tokens"] > 0 and generation["tokens_per_second"] > 0
    written = json.loads(next((tmp_path / "out").glob("gpu_profile-*.json")).read_text())
    assert written["stages"] == result["stages"]
    assert not list((tmp_path / "out").glob("gpu-profile-*")), "the run's artifacts are removed"


def test_eight_minute_profile_is_valid_and_builds_a_model_of_about_100m():
    for n_parameters in _valid_profile_parameter_counts(_benchmark_module().EIGHT_MINUTE_PROFILE):
        assert 80e6 <= n_parameters <= 120e6, n_parameters


def test_eight_minute_report_has_the_trl_comparison_and_the_budget(tmp_path):
    benchmark = _benchmark_module()
    skipped = benchmark.ppo_against_trl(None, {}, tmp_path / "no-such-python", 64, tmp_path)
    assert "no TRL 1.12 environment" in skipped["skipped"]
    run = {"episodes_per_second": 10.0, "peak_gpu_gib": 3.5, "rm_score_gain": 0.4, "kl_to_sft": 2.0}
    report = benchmark.markdown_report({
        "device": "NVIDIA H200", "profile": "gpu_8min.yaml", "timestamp": "t", "torch": "x",
        "stages": [{"stage": "ppo_policy", "seconds": 60.0, "peak_gpu_gib": 12.0}],
        "ppo_vs_trl": {"episodes": 256, "batch_size": 64, "response_length": 128, "episodes_per_second_ratio": 2.0,
                       "runs": {"ours": run, "trl": {**run, "episodes_per_second": 5.0}}},
        "wall_seconds": 470.0, "budget_seconds": 480,
    })
    assert "| ours / TRL | 2.00x |" in report and "within the 480 s budget" in report
