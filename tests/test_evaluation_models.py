"""Evaluation on real (tiny, random) models: KL estimation, the whole `evaluate`, the asset and its WARN check."""

import json
import statistics
from pathlib import Path

import dagster as dg
import pytest
import torch

from pipeline.data.generator import pretraining_text, prompt_records
from pipeline.settings import EvaluationSettings
from pipeline.evaluation.evaluate import evaluate, kl_to_reference, sample_answers
from pipeline.ppo.rollout import sequence_logprobs
from pipeline.evaluation.judges import HeuristicJudge, judge_pairs

FAST_SETTINGS = {"max_new_tokens": 6, "n_bootstrap": 200, "kl_samples_per_prompt": 2, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """base, sft, ppo (sft with perturbed weights) and a random scalar-head RM, sharing one tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from pipeline.settings import TinyModelSpec
    from pipeline.training.base_model import build_tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = train_tokenizer(pretraining_text(60, 0), vocab_size=512)
    spec = TinyModelSpec(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    dirs = {name: root / name for name in ("base", "sft", "ppo", "reward_model")}
    build_tiny_llama(tokenizer, spec, seed=0).save_pretrained(dirs["base"])
    sft = build_tiny_llama(tokenizer, spec, seed=1)
    sft.save_pretrained(dirs["sft"])
    _perturb(sft, 0.05, seed=2).save_pretrained(dirs["ppo"])
    for name in ("base", "sft", "ppo"):
        tokenizer.save_pretrained(dirs[name])
    reward = AutoModelForSequenceClassification.from_pretrained(dirs["sft"], num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(dirs["reward_model"])
    tokenizer.save_pretrained(dirs["reward_model"])
    with open(dirs["ppo"] / "ppo_train_metrics.jsonl", "w") as handle:
        for step in range(4):
            handle.write(json.dumps({"step": step, "rm_score": 0.1 * step, "kl": 0.01 * step, "response_length": 5 + step}) + "\n")
    return dirs


def _perturb(model, scale: float, seed: int):
    """`model` with Gaussian noise of standard deviation `scale` added to every weight, in place."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_kl_samples_are_scored_consistently_with_sampling(tiny_models):
    ppo, tokenizer = _load(tiny_models["ppo"])
    sft, _ = _load(tiny_models["sft"])
    prompts = [r["prompt"] for r in prompt_records(5, 0, "eval")]
    samples = sample_answers(ppo, tokenizer, prompts, samples_per_prompt=2, temperature=1.0, max_new_tokens=6,
                             batch_size=4, seed=0, with_logprobs=True)
    # The forward-pass log-probs of the sampled tokens equal those at sampling time (padding handled alike).
    for rollout, sums in zip(samples.batches, samples.logprob_sums):
        assert torch.allclose(sums, rollout.logprobs.sum(1).cpu(), atol=1e-3)
    assert sum(len(s) for s in samples.logprob_sums) == 10
    # Each prompt's answers come together, decoded from the rollout up to its EOS.
    assert [g.prompt for g in samples.generations] == [p for p in prompts for _ in range(2)]
    assert all(g.n_tokens <= 6 for g in samples.generations)
    # A policy has zero KL to itself, and one moved well away from the reference a clearly positive KL to
    # it. The per-sequence log-ratio is an unbiased but noisy estimate: ppo (0.05 of noise on SFT's
    # weights) is too close to SFT for 10 short samples to give its sign, so this policy moves further.
    assert kl_to_reference(samples, ppo)["per_sequence"] == pytest.approx([0.0] * 10, abs=1e-5)
    far = _perturb(_load(tiny_models["sft"])[0], 0.3, seed=3)
    far_samples = sample_answers(far, tokenizer, prompts, samples_per_prompt=16, temperature=1.0, max_new_tokens=6,
                                 batch_size=16, seed=0, with_logprobs=True)
    kl = kl_to_reference(far_samples, sft)
    standard_error = statistics.stdev(kl["per_sequence"]) / len(kl["per_sequence"]) ** 0.5
    assert statistics.mean(kl["per_sequence"]) > 4 * standard_error and kl["n_tokens"] > 0
    for rollout in samples.batches:
        assert torch.equal(sequence_logprobs(ppo, rollout), sequence_logprobs(ppo, rollout))


def test_evaluate_scores_checks_and_judges_every_answer(tiny_models):
    records = prompt_records(6, 0, "eval")
    dirs = {name: tiny_models[name] for name in ("base", "sft", "ppo")}
    settings = EvaluationSettings(**FAST_SETTINGS, temperature=0.0)  # greedy only: one answer per prompt
    result = evaluate(dirs, tiny_models["reward_model"], records, settings, HeuristicJudge()).to_dict()
    assert result["decoding"]["label"] == "greedy" and "greedy" not in result
    assert result["n_prompts"] == 6 and result["judge"] == "heuristic"
    n_verifiable = sum(r["kind"] == "verifiable" for r in records)
    assert result["n_verifiable"] == n_verifiable > 0
    for name in ("base", "sft", "ppo"):
        answers = result["answers"][name]
        assert [a["prompt"] for a in answers] == [r["prompt"] for r in records]
        assert all(a["n_tokens"] <= 6 for a in answers)
        assert [a["checker_passed"] is None for a in answers] == [r["task"] is None for r in records]
        assert result["models"][name]["rm_score_ci95"][0] <= result["models"][name]["rm_score_mean"]
    assert result["win_rates"]["ppo_vs_sft"]["rule_checker"]["n"] == n_verifiable
    assert result["win_rates"]["ppo_vs_sft"]["pairwise_judge"]["n"] == 6
    assert result["kl_ppo_vs_sft"] is not None and result["kl_n_samples"] == 12
    assert len(result["judgements"]) == 18


def test_the_primary_comparison_samples_several_answers_per_prompt_and_greedy_sits_beside_it(tiny_models):
    records = prompt_records(6, 0, "eval")
    dirs = {name: tiny_models[name] for name in ("base", "sft", "ppo")}
    settings = EvaluationSettings(**FAST_SETTINGS, temperature=1.0, samples_per_prompt=3)
    result = evaluate(dirs, tiny_models["reward_model"], records, settings, HeuristicJudge()).to_dict()
    n_verifiable = sum(r["kind"] == "verifiable" for r in records)
    n_explanations = sum(r["kind"] == "explanation" for r in records)
    assert result["decoding"] == {"temperature": 1.0, "samples_per_prompt": 3,
                                  "label": "sampled at temperature 1, 3 answers per prompt"}
    assert result["n_prompts"] == 6 and result["n_verifiable"] == n_verifiable
    for name in ("base", "sft", "ppo"):
        answers = result["answers"][name]
        assert [a["prompt"] for a in answers] == [r["prompt"] for r in records for _ in range(3)]
        model = result["models"][name]
        assert model["n_answers"] == 18 and model["n_explanations"] == n_explanations
        assert sum(t["n"] for t in model["checker_accuracy_by_task"].values()) == 3 * n_verifiable
        assert {a["task_type"] for a in answers if a["task_type"]} == set(model["checker_accuracy_by_task"])
        assert [a["concept_matched"] is None for a in answers] == [r["kind"] != "explanation" for r in records for _ in range(3)]
        assert 0 <= model["concept_match_rate"] <= 1
    assert result["win_rates"]["ppo_vs_sft"]["rule_checker"]["n"] == 3 * n_verifiable
    assert result["win_rates"]["ppo_vs_sft"]["pairwise_judge"]["n"] == 18
    difference = result["checker_accuracy_difference"]["ppo_vs_sft"]
    ppo, sft = result["models"]["ppo"]["checker_accuracy"], result["models"]["sft"]["checker_accuracy"]
    assert difference["difference"] == pytest.approx(ppo - sft) and difference["n_prompts"] == n_verifiable
    assert difference["ci95"][0] <= difference["difference"] <= difference["ci95"][1]
    # The comparison's PPO samples are draws at temperature 1: they serve the KL estimate too.
    assert result["kl_n_samples"] == 18
    greedy = result["greedy"]
    assert greedy["decoding"]["label"] == "greedy" and greedy["n_prompts"] == 6
    assert [a["prompt"] for a in greedy["answers"]["ppo"]] if "answers" in greedy else True
    assert greedy["win_rates"]["ppo_vs_sft"]["rule_checker"]["n"] == n_verifiable
    assert greedy["models"]["ppo"]["n_answers"] == 6


def test_a_local_causal_lm_can_judge(tiny_models):
    from pipeline.evaluation.judges import CompletionJudge, build_judge

    judge = build_judge(judge_model=str(tiny_models["sft"]), max_new_tokens=4, device="cpu")
    assert isinstance(judge, CompletionJudge) and judge.name == "llm:sft"
    judged = judge_pairs(judge, ["What is 2 + 2?", "Sort: 3, 1."], ["The answer is 4.", "1, 3"], ["5", "3, 1"], seed=0)
    # A random tiny model writes no JSON: every verdict is a tie that keeps the model's text as its reason.
    assert all(p.verdict.winner in ("A", "B", "tie") and p.verdict.reason for p in judged)


class FixedPathsIOManager(dg.IOManager):
    """Hands the evaluation asset fixed upstream directories instead of reading the event log."""

    def __init__(self, paths):
        self.paths = paths

    def handle_output(self, context, obj):
        pass

    def load_input(self, context):
        return self.paths[context.asset_key.to_user_string()]


def test_asset_writes_report_and_check_compares_with_previous(tiny_models, tmp_path, artifacts_root, dagster_instance):
    from assets.evaluation import evaluation_report, no_regression_vs_previous_report
    from pipeline.storage.contract import DATA_FILE
    from pipeline.data.records import write_jsonl
    from pipeline.orchestration.resources import ArtifactStoreResource

    prompts_dir = tmp_path / "eval_prompts"
    prompts_dir.mkdir()
    write_jsonl(prompt_records(6, 0, "eval"), prompts_dir / DATA_FILE)
    paths = {
        "base_model": tiny_models["base"], "sft_checkpoint": tiny_models["sft"], "ppo_policy": tiny_models["ppo"],
        "reward_model": tiny_models["reward_model"], "eval_prompts": prompts_dir,
    }
    resources = {"artifacts": ArtifactStoreResource(root=str(artifacts_root)), "io_manager": FixedPathsIOManager(paths)}
    upstream = [dg.AssetSpec(key) for key in paths]
    run_config = {"ops": {"evaluation_report": {"config": FAST_SETTINGS}}}

    checks = []
    for _ in range(2):
        result = dg.materialize([*upstream, evaluation_report, no_regression_vs_previous_report],
                                selection=[evaluation_report.key], instance=dagster_instance,
                                resources=resources, run_config=run_config)
        assert result.success
        checks += result.get_asset_check_evaluations()
    assert [c.severity for c in checks] == [dg.AssetCheckSeverity.WARN] * 2
    assert checks[0].passed and checks[0].metadata["note"].value == "no previous report to compare with"
    # Same models, same prompts, greedy answers: the second report matches the first, so nothing regressed.
    assert checks[1].passed and checks[1].metadata["n_regressions"].value == 0

    event = dagster_instance.get_latest_materialization_event(evaluation_report.key).asset_materialization
    report_dir = Path(event.metadata["artifact_path"].value)
    for key in ("ppo_vs_sft_win_rate_rm", "checker_accuracy_ppo", "rm_score_sft", "report", "report_html"):
        assert key in event.metadata, key
    assert event.metadata["report"].value.startswith("# Evaluation report")
    report = json.loads((report_dir / "eval.json").read_text())
    assert report["inputs"]["ppo_policy"] == str(tiny_models["ppo"])
    assert report["previous_report"]["regressions"] == []
    assert report["ppo_training"]["n_steps"] == 4
    assert (report_dir / "plots" / "ppo_training_curves.png").exists()
