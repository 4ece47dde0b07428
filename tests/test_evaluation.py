"""Evaluation report library: bootstrap intervals, win rates, judges, report rendering, held-out prompts."""

import dataclasses
import json
import math
import random

import numpy as np
import pytest

from pipeline.data.statistics import within_group_correlation
from pipeline.evaluation.metrics import (
    bootstrap_mean_ci, checker_outcomes, model_metrics, rm_outcomes, rm_right_over_wrong, summarise, win_rate,
)
from pipeline.evaluation.result import MODELS, Answer
from pipeline.evaluation.judges import (
    JUDGE_TEMPLATE,
    CompletionJudge,
    HeuristicJudge,
    PairwiseJudge,
    Verdict,
    judge_pairs,
    load_judge,
    parse_verdict,
)
from pipeline.evaluation.report import SECTION_TITLES, compare_with_previous, read_training_metrics, write_report
from pipeline.settings import EvaluationSettings
from pipeline.storage.contract import EVAL_JSON, LENGTH_HISTOGRAMS_PNG, REPORT_HTML, REPORT_MD, TRAINING_CURVES_PNG, WIN_RATES_PNG

# --- statistics ------------------------------------------------------------------------------


def test_bootstrap_interval_on_known_inputs():
    assert bootstrap_mean_ci([2.5] * 20, 500, seed=0) == (2.5, 2.5)
    # 50 zeros and 50 ones: mean 0.5, standard error 0.05, so the 95% interval is about 0.5 +- 0.098.
    low, high = bootstrap_mean_ci([0.0] * 50 + [1.0] * 50, 4000, seed=0)
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    # Normal data: the interval is centred on the sample mean with half-width 1.96 * sd / sqrt(n).
    values = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    low, high = bootstrap_mean_ci(values, 4000, seed=0)
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.03)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    # Seeded: the same inputs give the same interval; no data gives no interval.
    assert bootstrap_mean_ci(values, 500, seed=7) == bootstrap_mean_ci(values, 500, seed=7)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([], 500, seed=0))


def _answer(prompt="p", response="r", score=0.0, passed=None, n_tokens=5, eos=True):
    return Answer(prompt, response, n_tokens, eos, False, score, passed)


def test_win_rates_count_ties_half_and_checker_only_judges_verifiable_prompts():
    assert dataclasses.asdict(win_rate([1.0, 0.5, 0.0, 1.0], 500, seed=0)) | {"ci95": None} == {
        "rate": 0.625, "ci95": None, "n": 4, "wins": 2, "ties": 1, "losses": 1,
    }
    x = [_answer(score=1.0, passed=True), _answer(score=0.0, passed=False), _answer(score=2.0, passed=None)]
    y = [_answer(score=0.5, passed=False), _answer(score=0.0, passed=False), _answer(score=3.0, passed=None)]
    assert rm_outcomes(x, y, tie_margin=0.0) == [1.0, 0.5, 0.0]
    assert rm_outcomes(x, y, tie_margin=0.6) == [0.5, 0.5, 0.0]
    assert checker_outcomes(x, y) == [1.0, 0.5]


def test_rm_right_over_wrong_ranks_stated_results_and_leaves_out_unfinished_answers():
    right = [_answer(response="2 plus 2 is 4. The answer is 4.", score=s, passed=True) for s in (1.0, 3.0)]
    wrong = [_answer(response="2 plus 2 is 5. The answer is 5.", score=s, passed=False) for s in (0.0, 2.0, 3.0)]
    unfinished = _answer(response="2 plus 2 is 4. 2 plus 2 is 4.", score=-9.0, passed=False)
    explanation = _answer(response="A reward model is ...", score=-9.0, passed=None)
    # pairs (right, wrong): 1>0, 1<2, 1<3, 3>0, 3>2, 3=3 -> (3 + 0.5) / 6
    separation = rm_right_over_wrong([*right, *wrong, unfinished, explanation])
    assert (separation.rate, separation.n_right, separation.n_wrong) == (pytest.approx(3.5 / 6), 2, 3)
    assert rm_right_over_wrong([*right, unfinished]).rate is None  # no wrong stated result to rank against


def test_length_correlation_within_kind_compares_answers_only_with_their_own_kind():
    # Two kinds: short task answers that score low, long explanations that score high, and within each
    # kind the longer answer scores lower. Pooled, length looks rewarded (Simpson's paradox); within kind it is not.
    tasks = [dataclasses.replace(_answer(score=s, n_tokens=n), task_type="add") for s, n in ((0.3, 10), (0.2, 12), (0.1, 14))]
    explanations = [_answer(score=s, n_tokens=n) for s, n in ((2.3, 60), (2.2, 62), (2.1, 64))]
    metrics = model_metrics([*tasks, *explanations], n_resamples=100, seed=0)
    assert metrics.rm_length_correlation > 0.9
    assert metrics.rm_length_correlation_within_kind == pytest.approx(-1.0)
    assert within_group_correlation([1, 2, 3], [5, 5, 5], ["a", "a", "a"]) is None  # a constant side: undefined


# --- judges ----------------------------------------------------------------------------------


class RecordingJudge:
    """Prefers whichever answer contains GOOD, and records the order it was shown."""

    name = "recording"

    def __init__(self):
        self.seen = []

    def __call__(self, prompt, response_a, response_b):
        self.seen.append((response_a, response_b))
        return Verdict("A" if "GOOD" in response_a else "B", "contains GOOD")


def test_judge_sees_both_orders_and_verdicts_map_back_to_the_models():
    judge = RecordingJudge()
    assert isinstance(judge, PairwiseJudge)
    n = 40
    prompts = [f"prompt {i}" for i in range(n)]
    judged = judge_pairs(judge, prompts, [f"GOOD {i}" for i in range(n)], [f"bad {i}" for i in range(n)], seed=0)
    x_first = [a.startswith("GOOD") for a, _ in judge.seen]
    assert 0 < sum(x_first) < n, "the judge must see the x answer both as A and as B"
    assert [p.x_shown_as == "A" for p in judged] == x_first
    assert all(p.outcome == 1.0 for p in judged), "the better answer wins wherever it was shown"
    assert all(p.verdict.reason == "contains GOOD" for p in judged)
    # A judge that always picks A: x wins exactly where it was shown first, so position bias averages out.
    always_a = judge_pairs(lambda_judge("always-a", Verdict("A")), prompts, ["x"] * n, ["y"] * n, seed=0)
    assert [p.outcome for p in always_a] == [1.0 if first else 0.0 for first in x_first]
    # The order is seeded: the same seed shows the same order.
    again = judge_pairs(RecordingJudge(), prompts, ["GOOD"] * n, ["bad"] * n, seed=0)
    assert [p.x_shown_as for p in again] == [p.x_shown_as for p in judged]


def lambda_judge(name, verdict):
    class Fixed:
        def __call__(self, prompt, response_a, response_b):
            return verdict

    judge = Fixed()
    judge.name = name
    return judge


def test_completion_judge_fills_the_template_and_parses_json_verdicts():
    sent = []

    def complete(text):
        sent.append(text)
        return 'Sure. {"winner": "B", "reason": "B states the right total."}'

    judge = CompletionJudge("fake-llm", complete)
    verdict = judge("What is 2 + 2?", "The answer is 5.", "The answer is 4.")
    assert verdict == Verdict("B", "B states the right total.")
    assert sent[0] == JUDGE_TEMPLATE.format(prompt="What is 2 + 2?", response_a="The answer is 5.", response_b="The answer is 4.")
    assert "Answer A:\nThe answer is 5." in sent[0] and '"winner"' in sent[0]
    assert parse_verdict('{"winner": "tie", "reason": "same"}') == Verdict("tie", "same")
    assert parse_verdict('winner: a').winner == "A"
    unreadable = parse_verdict("I cannot decide")
    assert unreadable.winner == "tie" and "I cannot decide" in unreadable.reason


def test_custom_judge_loads_from_an_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(
        "from pipeline.evaluation.judges import Verdict\n"
        "def shorter_wins(prompt, response_a, response_b):\n"
        "    return Verdict('A' if len(response_a) < len(response_b) else 'B', 'shorter')\n"
        "not_a_judge = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    judge = load_judge("my_judges:shorter_wins")
    assert judge.name == "shorter_wins" and judge("p", "ab", "abc") == Verdict("A", "shorter")
    with pytest.raises(TypeError, match="my_judges:not_a_judge"):
        load_judge("my_judges:not_a_judge")
    with pytest.raises(ValueError, match="module.path:attribute"):
        load_judge("my_judges")


def test_heuristic_judge_prefers_on_topic_concise_answers():
    judge = HeuristicJudge()
    prompt = "Tell me about the discount factor, with an example."
    good = "The discount factor weighs future rewards against immediate ones. For example, 0.99 values the future."
    repetitive = "It is a thing. It is a thing. It is a thing. It is a thing. It is a thing."
    assert judge(prompt, good, repetitive).winner == "A"
    assert judge(prompt, repetitive, good).winner == "B"
    assert judge(prompt, good, good).winner == "tie"


# --- report ----------------------------------------------------------------------------------


def _synthetic_answers(seed=0, n=24):
    rng = random.Random(seed)
    answers = {}
    for offset, model in enumerate(MODELS):
        rows = []
        for i in range(n):
            verifiable = i % 2 == 0
            rows.append(_answer(
                prompt=f"prompt {i}", response=f"{model} answer {i} " + "word " * rng.randint(1, 20),
                score=rng.gauss(offset, 1.0), passed=(rng.random() < 0.3 * offset + 0.1) if verifiable else None,
                n_tokens=rng.randint(3, 40), eos=rng.random() < 0.9,
            ))
        answers[model] = rows
    return answers


def _synthetic_result(seed=0):
    answers = _synthetic_answers(seed)
    settings = EvaluationSettings(n_bootstrap=200, n_spot_checks=3)
    judged = {
        f"{x}_vs_{y}": judge_pairs(HeuristicJudge(), [a.prompt for a in answers[x]],
                                   [a.response for a in answers[x]], [a.response for a in answers[y]], seed=i)
        for i, (x, y) in enumerate((("ppo", "sft"), ("sft", "base"), ("ppo", "base")))
    }
    kl = {"per_sequence": [0.5, 1.0, 1.5, 0.8], "n_tokens": 40}
    return dataclasses.replace(summarise(answers, judged, kl, "heuristic", settings), inputs={"reward_model": "/rm/1"})


def test_report_renders_every_section_with_plots_and_eval_json(tmp_path):
    result = _synthetic_result()
    training = [{"step": s, "rm_score": 0.1 * s, "total_reward": 0.1 * s - 0.01, "kl": 0.02 * s, "response_length": 20 + s}
                for s in range(10)]
    previous = json.loads(json.dumps(result.to_dict()))
    previous["models"]["ppo"]["checker_accuracy_ci95"] = [0.98, 1.0]
    comparison = {**compare_with_previous(result.to_dict(), previous), "previous_path": "/old/report"}
    markdown = write_report(result, tmp_path, training, None, comparison)

    html = (tmp_path / REPORT_HTML).read_text()
    assert markdown == (tmp_path / REPORT_MD).read_text()
    for title in SECTION_TITLES:
        assert f"## {title}" in markdown, title
        assert title.replace("&", "&amp;") in html, title
    for png in (TRAINING_CURVES_PNG, LENGTH_HISTOGRAMS_PNG, WIN_RATES_PNG):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"src='{png}'" in html and f"]({png})" in markdown
    assert "models.ppo.checker_accuracy" in markdown, "the regression shows up in the comparison section"
    assert "Does the reward model tell a right result from a wrong one?" in markdown

    report = json.loads((tmp_path / EVAL_JSON).read_text())
    for model in ("base", "sft", "ppo"):
        entry = report["models"][model]
        assert isinstance(entry["rm_score_mean"], float) and len(entry["rm_score_ci95"]) == 2
        assert entry["rm_score_ci95"][0] <= entry["rm_score_mean"] <= entry["rm_score_ci95"][1]
        assert 0 <= entry["checker_accuracy"] <= 1 and entry["mean_length"] > 0
        assert set(entry["rm_right_over_wrong"]) == {"rate", "n_right", "n_wrong"}
        assert -1 <= entry["rm_length_correlation_within_kind"] <= 1
    for pair in ("ppo_vs_sft", "sft_vs_base", "ppo_vs_base"):
        for judge in ("reward_model", "rule_checker", "pairwise_judge"):
            assert 0 <= report["win_rates"][pair][judge]["rate"] <= 1
            assert len(report["win_rates"][pair][judge]["ci95"]) == 2
    assert report["kl_ppo_vs_sft"] == pytest.approx(0.95)
    assert report["ppo_training"]["n_steps"] == 10
    assert "answers" not in report and (tmp_path / "answers.jsonl").exists()


def test_report_without_training_metrics_says_so(tmp_path):
    rows, note = read_training_metrics(tmp_path / "missing.jsonl")
    assert rows == [] and "no PPO training metrics" in note
    (tmp_path / "m.jsonl").write_text('{"step": 0, "kl": 0.1}\nnot json\n\n{"step": 1, "kl": 0.2}\n')
    rows, note = read_training_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and "[2]" in note
    (tmp_path / "empty.jsonl").write_text("")
    assert read_training_metrics(tmp_path / "empty.jsonl")[0] == []

    out = tmp_path / "report"
    markdown = write_report(_synthetic_result(), out, [], "no PPO training metrics file at /x", None)
    assert not (out / TRAINING_CURVES_PNG).exists()
    assert "no PPO training metrics file at /x" in markdown and "No previous report" in markdown


def test_regressions_are_flagged_only_beyond_the_intervals():
    before = _synthetic_result().to_dict()
    same = compare_with_previous(before, before)
    assert same == {"same_reward_model": True, "regressions": []}
    after = json.loads(json.dumps(before))
    after["models"]["sft"]["rm_score_mean"] = before["models"]["sft"]["rm_score_ci95"][0] - 1.0
    after["models"]["sft"]["rm_score_ci95"] = [after["models"]["sft"]["rm_score_mean"] - 0.1,
                                               before["models"]["sft"]["rm_score_ci95"][0] - 0.01]
    after["kl_ppo_vs_sft_ci95"] = [before["kl_ppo_vs_sft_ci95"][1] + 0.1, before["kl_ppo_vs_sft_ci95"][1] + 0.5]
    flagged = {r["metric"] for r in compare_with_previous(after, before)["regressions"]}
    assert flagged == {"models.sft.rm_score_mean", "kl_ppo_vs_sft"}
    # Scores from a different reward model are not comparable, so they are not flagged.
    after["inputs"] = {"reward_model": "/rm/2"}
    comparison = compare_with_previous(after, before)
    assert not comparison["same_reward_model"]
    assert {r["metric"] for r in comparison["regressions"]} == {"kl_ppo_vs_sft"}


# --- data ------------------------------------------------------------------------------------


def _normalised(text):
    return " ".join(text.lower().split())


def test_no_eval_prompt_occurs_in_any_training_asset_on_the_default_data():
    from assets.data import EvalPromptsConfig, PpoPromptsConfig, PreferenceDataConfig, SftDataConfig
    from pipeline.settings import PretrainSettings
    from pipeline.data.generator import preference_records, pretraining_text, prompt_records, sft_records

    eval_config = EvalPromptsConfig()
    eval_prompts = {_normalised(r["prompt"]) for r in prompt_records(eval_config.n_records, eval_config.seed, "eval")}
    assert len(eval_prompts) == eval_config.n_records == 128
    training_prompts = {
        "sft_data": sft_records(SftDataConfig().n_records, SftDataConfig().seed),
        "preference_data": preference_records(PreferenceDataConfig().n_records, PreferenceDataConfig().seed),
        "ppo_prompts": prompt_records(PpoPromptsConfig().n_records, PpoPromptsConfig().seed, "ppo"),
    }
    for asset, records in training_prompts.items():
        leaked = eval_prompts & {_normalised(r["prompt"]) for r in records}
        assert not leaked, f"{len(leaked)} eval prompts occur in {asset}, e.g. {sorted(leaked)[:3]}"
    pretraining = PretrainSettings()
    corpus = _normalised(" ".join(pretraining_text(
        pretraining.pretrain_documents, pretraining.seed, pretraining.pretrain_tasks_per_document)))
    leaked = [p for p in eval_prompts if p in corpus]
    assert not leaked, f"eval prompts occur in the base model's pretraining text: {leaked[:3]}"
