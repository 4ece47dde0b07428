"""Each quality gate's library function on data built to pass and data built to fail (no Dagster)."""

import math

import pytest

from pipeline.data import generator as data_generator
from pipeline.data.records import DataError
from quality_gates.dedup import DedupSettings, compared_fields, find_duplicates
from quality_gates.leak import LeakSettings, find_eval_leaks
from quality_gates.length_bias import LengthBiasSettings, length_bias_violations, measure_length_bias
from quality_gates.model_gates import (
    PpoGuardSettings,
    RewardMarginSettings,
    gate_severity,
    ppo_guard_violations,
    reward_margin_violations,
    steps_beyond_kl_bound,
)
from quality_gates.schemas import validate_data
from quality_gates.text import normalise_text

SFT_FIELDS = ("prompt", "completion")


@pytest.fixture(scope="module")
def default_data():
    """The embedded default's data at its default sizes, for two seeds."""
    return {
        seed: {
            "sft_data": data_generator.sft_records(400, seed),
            "preference_data": data_generator.preference_records(400, seed),
            "ppo_prompts": data_generator.prompt_records(128, seed, "ppo"),
            "eval_prompts": data_generator.prompt_records(48, seed, "eval"),
        }
        for seed in (0, 1)
    }


# --- pandera schemas ---------------------------------------------------------------------------


def test_schemas_accept_the_default_data(default_data):
    for name, records in default_data[0].items():
        validate_data(records, name, "generator")


@pytest.mark.parametrize(("asset", "records", "row", "field", "why"), [
    ("sft_data", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "   "}], 2, "completion", "not blank"),
    ("sft_data", [{"prompt": 3, "completion": "b"}], 1, "prompt", "is a string"),
    ("sft_data", [{"prompt": "a", "completion": "x" * 40_000}], 1, "completion", "characters"),
    ("preference_data", [{"prompt": "p", "chosen": "same", "rejected": "same "}], 1, "rejected", "chosen differs"),
    ("ppo_prompts", [{"prompt": "fine"}, {"prompt": None}], 2, "prompt", "not_nullable"),
    ("eval_prompts", [{"text": "no prompt field"}], 1, "prompt", "missing field"),
])
def test_schemas_name_the_failing_row_and_field(asset, records, row, field, why):
    with pytest.raises(DataError) as raised:
        validate_data(records, asset, "user.jsonl")
    assert (raised.value.row, raised.value.field) == (row, field)
    assert why in str(raised.value) and "user.jsonl" in str(raised.value)


# --- dedup -------------------------------------------------------------------------------------


def test_normalisation_ignores_case_space_and_punctuation_but_not_numbers():
    assert normalise_text("  What IS 12+35?? ") == normalise_text("what is 12 + 35") == "what is 12 35"
    assert normalise_text("What is 12 + 36?") != normalise_text("What is 12 + 35?")


def test_default_data_has_no_duplicates(default_data):
    settings = DedupSettings()
    for data in default_data.values():
        for name in ("sft_data", "preference_data", "ppo_prompts"):
            candidates = {"sft_data": SFT_FIELDS, "preference_data": ("prompt", "chosen", "rejected"),
                          "ppo_prompts": ("prompt", "reference")}[name]
            report = find_duplicates(data[name], compared_fields(data[name], candidates), settings)
            assert report.exact == [] and report.near == [], (name, report.exact[:2], report.near[:2])


def test_tasks_that_differ_only_in_numbers_are_not_duplicates():
    records = [
        {"prompt": "What is 12 + 35?", "completion": "12 + 35 = 47. The answer is 47."},
        {"prompt": "What is 12 + 36?", "completion": "12 + 36 = 48. The answer is 48."},
        {"prompt": "Sort these numbers in ascending order: 3, 9, 41, 12.", "completion": "From smallest to largest the numbers are 3, 9, 12, 41. The answer is 3, 9, 12, 41."},
        {"prompt": "Sort these numbers in ascending order: 3, 9, 41, 13.", "completion": "From smallest to largest the numbers are 3, 9, 13, 41. The answer is 3, 9, 13, 41."},
    ]
    report = find_duplicates(records, SFT_FIELDS, DedupSettings())
    assert report.exact == [] and report.near == []


def test_exact_and_near_duplicates_are_found_with_their_rows():
    records = data_generator.sft_records(40, 0)
    explanation = next(r for r in records if r["kind"] == "explanation")
    records.append({"prompt": explanation["prompt"].upper().replace(",", " ,"), "completion": explanation["completion"] + "!!"})
    edited = explanation["completion"].replace(" is ", " is really ", 1)
    records.append({"prompt": explanation["prompt"], "completion": edited})
    report = find_duplicates(records, SFT_FIELDS, DedupSettings())
    first_row = records.index(explanation) + 1
    assert [(d["row"], d["duplicate_of_row"]) for d in report.exact] == [(41, first_row)]
    assert [(d["row"], d["similar_to_row"]) for d in report.near] == [(42, first_row)]
    assert report.near[0]["similarity"] >= 0.85


# --- eval leak ---------------------------------------------------------------------------------


def test_default_training_data_does_not_contain_eval_prompts(default_data):
    for data in default_data.values():
        eval_prompts = [r["prompt"] for r in data["eval_prompts"]]
        for name, fields in (("sft_data", SFT_FIELDS), ("preference_data", ("prompt", "chosen", "rejected")),
                             ("ppo_prompts", ("prompt", "reference"))):
            assert find_eval_leaks(data[name], fields, eval_prompts, LeakSettings()) == [], name


def test_leaks_by_exact_match_13_gram_and_containment():
    long_eval = ("Explain step by step how the clipped surrogate objective in proximal policy optimisation keeps "
                 "each update close to the previous policy")
    eval_prompts = ["Tell me about overfitting, with an example.", long_eval, "Add 17 and 25 together."]
    training = [
        {"prompt": "What is PPO?", "completion": "A policy gradient method."},
        {"prompt": "tell me about OVERFITTING with an example", "completion": "Overfitting is ..."},
        {"prompt": "Summarise this.", "completion": "Sure: " + long_eval.lower() + " and more."},
        {"prompt": "Please answer: add 17 and 25 together, then halve it.", "completion": "21."},
        {"prompt": "Add 17 and 26 together.", "completion": "43."},
    ]
    leaks = find_eval_leaks(training, SFT_FIELDS, eval_prompts, LeakSettings())
    assert [(leak["row"], leak["match"], leak["field"]) for leak in leaks] == [
        (2, "exact", "prompt"), (3, "13-gram", "completion"), (4, "contained", "prompt"),
    ]
    assert leaks[0]["eval_prompt"] == eval_prompts[0]


# --- length bias -------------------------------------------------------------------------------


def test_default_preferences_are_within_length_bias_bounds(default_data):
    for data in default_data.values():
        stats = measure_length_bias(data["preference_data"])
        assert length_bias_violations(stats, LengthBiasSettings()) == [], stats


def test_preferences_where_longer_always_wins_fail():
    pairs = [{"prompt": f"q{i}", "chosen": "a detailed answer " * (2 + i % 3), "rejected": "short"} for i in range(20)]
    stats = measure_length_bias(pairs)
    assert stats["fraction_chosen_longer"] == 1.0 and stats["length_label_correlation"] > 0.95
    problems = length_bias_violations(stats, LengthBiasSettings())
    assert len(problems) == 2 and "fraction_chosen_longer" in problems[0]
    # Shorter always winning is a length shortcut too.
    flipped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    assert len(length_bias_violations(measure_length_bias(flipped), LengthBiasSettings())) == 2


def test_length_label_correlation_is_the_pearson_correlation_over_both_orders():
    pairs = [{"prompt": "p", "chosen": "x" * c, "rejected": "y" * r} for c, r in ((10, 5), (4, 8), (9, 3), (6, 6))]
    xs, ys = [], []
    for p in pairs:
        d = math.log(len(p["chosen"]) / len(p["rejected"]))
        xs += [d, -d]
        ys += [1.0, 0.0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    pearson = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    assert measure_length_bias(pairs)["length_label_correlation"] == pytest.approx(pearson)


# --- reward model margin and PPO guard ---------------------------------------------------------


def test_reward_margin_thresholds():
    good = {"held_out_accuracy": 0.9, "mean_margin": 2.0, "reward_length_correlation": 0.1}
    assert reward_margin_violations(good, RewardMarginSettings()) == []
    bad = {"held_out_accuracy": 0.55, "mean_margin": 0.1, "reward_length_correlation": -0.8}
    problems = reward_margin_violations(bad, RewardMarginSettings())
    assert [p.split("=")[0].strip("|") for p in problems] == ["held_out_accuracy", "mean_margin", "reward_length_correlation"]
    assert reward_margin_violations(bad, RewardMarginSettings(min_held_out_accuracy=0.5, min_mean_margin=0.0,
                                                              max_abs_reward_length_correlation=0.9)) == []


def test_ppo_guard_bounds_kl_and_length_growth():
    ok = {"kl_to_sft": 3.0, "kl_bound": 8.0, "response_length_ratio": 1.1}
    assert ppo_guard_violations(ok, PpoGuardSettings()) == []
    assert "kl_to_sft" in ppo_guard_violations({**ok, "kl_to_sft": 9.5}, PpoGuardSettings())[0]
    assert ppo_guard_violations({**ok, "kl_to_sft": 9.5}, PpoGuardSettings(max_kl_to_sft=10.0)) == []
    assert "exceeds" in ppo_guard_violations({**ok, "response_length_ratio": 2.4}, PpoGuardSettings())[0]
    assert "below" in ppo_guard_violations({**ok, "response_length_ratio": 0.1}, PpoGuardSettings())[0]
    assert ppo_guard_violations({**ok, "kl_to_sft": float("nan")}, PpoGuardSettings())
    history = [{"step": s, "kl": kl} for s, kl in enumerate((1.0, 9.0, 12.0), start=1)]
    assert [r["step"] for r in steps_beyond_kl_bound(history, 8.0, 10)] == [2, 3]


def test_thin_evidence_downgrades_a_model_gate_to_a_warning():
    problems = ["held_out_accuracy=0.600 is below 0.750"]
    assert gate_severity(problems, "ERROR", 10, 30, "held-out pairs") == "WARN"
    assert problems[0] == "only 10 held-out pairs (< 30), so not blocking"
    assert gate_severity([], "ERROR", 60, 30, "held-out pairs") == "ERROR"
    assert gate_severity([], "ERROR", None, 30, "held-out pairs") == "ERROR"  # an artifact that does not say: enforce
