import hashlib
import json

import pytest

from assets.data import PreferenceDataConfig
from pipeline.data import generator as gen
from quality_gates.dedup import DedupSettings, find_duplicates
from pipeline.data.tasks import PHRASINGS, TASK_TYPES, check_answer, extract_final_answer, make_task, wrong_answer


def _digest(records) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def test_same_seed_gives_identical_data_and_other_seed_differs():
    for make in (lambda s: gen.sft_records(100, s), lambda s: gen.preference_records(100, s),
                 lambda s: gen.prompt_records(40, s, "ppo"), lambda s: gen.prompt_records(40, s, "eval")):
        assert _digest(make(7)) == _digest(make(7))
        assert _digest(make(7)) != _digest(make(8))


def test_eval_prompts_are_disjoint_from_every_training_set_whatever_the_seeds():
    eval_prompts = {r["prompt"] for seed in range(3) for r in gen.prompt_records(64, seed, "eval")}
    training = set()
    for seed in range(3):
        training |= {r["prompt"] for r in gen.sft_records(400, seed)}
        training |= {r["prompt"] for r in gen.preference_records(400, seed)}
        training |= {r["prompt"] for r in gen.prompt_records(128, seed, "ppo")}
    assert eval_prompts and training
    assert not eval_prompts & training
    assert not set(gen.PROBE_PROMPTS) & training


def test_prompts_are_unique_within_each_set():
    for records in (gen.sft_records(400, 0), gen.preference_records(400, 0), gen.prompt_records(128, 0, "ppo")):
        prompts = [r["prompt"] for r in records]
        assert len(prompts) == len(set(prompts))


def test_preference_pairs_cover_every_failure_mode_and_length_does_not_give_the_label_away():
    pairs = gen.preference_records(400, 0)
    explanation_modes = [p["failure_mode"] for p in pairs if p["kind"] == "explanation"]
    assert set(explanation_modes) == set(gen.FAILURE_MODES)
    assert 0.4 <= explanation_modes.count("other_concept") / len(explanation_modes) <= 0.6  # another concept, explained well
    task_modes = [p["failure_mode"] for p in pairs if p["kind"] == "verifiable"]
    assert set(task_modes) == set(gen.TASK_FAILURE_CYCLE)
    assert 0.4 <= task_modes.count("wrong") / len(task_modes) <= 0.6  # the hard pairs: well-formed, wrong result
    for pair in pairs:
        if pair["kind"] == "verifiable" and pair["failure_mode"] == "wrong":
            assert pair["rejected"].count("The answer is") == 1 and pair["rejected"] != pair["chosen"], pair
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    chosen_longer = sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs) / len(pairs)
    assert 0.3 < chosen_longer < 0.7, chosen_longer


def test_explanation_prompts_mix_with_verifiable_tasks():
    records = gen.sft_records(200, 0, explanation_fraction=0.5)
    kinds = [r["kind"] for r in records]
    assert kinds.count("explanation") == 100 and kinds.count("verifiable") == 100
    explanation = next(r for r in records if r["kind"] == "explanation")
    assert explanation["concept"] in explanation["prompt"]
    assert "For example" in explanation["completion"]


def test_checker_accepts_good_answers_and_rejects_wrong_or_missing_ones():
    import random

    rng = random.Random(0)
    for task_type in TASK_TYPES:
        for _ in range(20):
            task = make_task(task_type, rng, 0)
            assert check_answer(task["task"], task["answer"]), task
            bad = wrong_answer(task_type, task["answer"], task["task"]["expected"], rng)
            assert not check_answer(task["task"], bad), (task, bad)
            assert not check_answer(task["task"], "I am not sure.")


def test_checker_reads_the_last_stated_answer():
    task = {"type": "add", "expected": "42"}
    assert extract_final_answer("The answer is 41. No wait, the answer is 42.") == "42"
    assert check_answer(task, "The answer is 41. No wait, the answer is 42.")
    assert not check_answer(task, "The answer is 42. Actually the answer is 41.")
    assert check_answer({"type": "sort", "expected": "1, 2, 3"}, "Sorted: The answer is 1, 2, 3.")


def test_pretraining_text_is_plain_prose_without_chat_markers():
    documents = gen.pretraining_text(20, 0)
    assert len(documents) == 20
    assert not any("<|user|>" in d or "<|assistant|>" in d for d in documents)


def _assert_flaws_take_turns(records, flaws_by_kind):
    flawed = [r for r in records if r["flaw"]]
    assert {r["kind"] for r in flawed} == {"explanation", "verifiable"}
    for kind, kind_flaws in flaws_by_kind.items():
        of_kind = [r for r in flawed if r["kind"] == kind]
        assert {r["flaw"] for r in of_kind} == set(kind_flaws)
        counts = {flaw: sum(r["flaw"] == flaw for r in of_kind) for flaw in set(kind_flaws)}
        shares = [counts[flaw] / kind_flaws.count(flaw) for flaw in counts]
        assert max(shares) - min(shares) <= 1  # the flaws of a kind take turns, a flaw named twice twice as often


def test_a_share_of_demonstrations_is_flawed_in_each_way_and_the_rest_are_good():
    mixed = {"verifiable": ("wrong", "padded", "vague", "repetitive", "repetitive"), "explanation": ("padded", "vague")}
    clean = {r["prompt"]: r["completion"] for r in gen.sft_records(400, 0)}
    for flaws_by_kind in (gen.DEFAULT_DEMONSTRATION_FLAWS, mixed):
        records = gen.sft_records(400, 0, flawed_fraction=0.4, flaws_by_kind=flaws_by_kind)
        assert sum(r["flaw"] is not None for r in records) == 160
        _assert_flaws_take_turns(records, flaws_by_kind)
        for record in records:
            assert (record["completion"] == clean[record["prompt"]]) == (record["flaw"] is None), record
            if record["flaw"] in ("wrong", "vague", "repetitive") and record["kind"] == "verifiable":
                assert not check_answer(record["task"], record["completion"]), record
    assert all(r["flaw"] is None for r in gen.sft_records(100, 0))


def test_the_default_flaw_repeats_the_right_working_without_a_final_answer():
    records = gen.sft_records(400, 0, flawed_fraction=0.4)
    clean = {r["prompt"]: r["completion"] for r in gen.sft_records(400, 0)}
    assert {r["flaw"] for r in records} == {None, "repetitive"}
    for record in (r for r in records if r["flaw"]):
        working = clean[record["prompt"]].split(". ")[0].rstrip(".")
        assert record["completion"].count(working) >= 2 and "The answer is" not in record["completion"], record


@pytest.mark.parametrize("flaws_by_kind", [
    {"verifiable": ()}, {"verifiable": ("sloppy",)}, {"explanation": ("wrong",)}, {"dialogue": ("vague",)},
])
def test_unknown_or_misplaced_flaws_are_refused(flaws_by_kind):
    with pytest.raises(ValueError, match="demonstrations can be flawed as"):
        gen.sft_records(40, 0, flawed_fraction=0.4, flaws_by_kind=flaws_by_kind)


def test_checker_accepts_every_task_types_good_answer_in_every_phrasing():
    import random

    rng = random.Random(1)
    for task_type in TASK_TYPES:
        for phrasing in range(len(PHRASINGS[task_type])):
            task = make_task(task_type, rng, phrasing)
            assert check_answer(task["task"], task["answer"]), task


def test_every_task_type_appears_in_training_and_evaluation_with_its_key_word():
    train = [r for r in gen.sft_records(400, 0) if r["kind"] == "verifiable"]
    held_out = [r for r in gen.prompt_records(200, 0, "eval") if r["kind"] == "verifiable"]
    for records in (train, held_out):
        assert {r["task"]["type"] for r in records} == set(TASK_TYPES)


def test_pretraining_text_holds_training_phrasings_of_tasks_but_no_evaluation_prompt():
    corpus = " ".join(gen.pretraining_text(200, 0))
    assert "Which word in this list is" in corpus or "Pick out a" in corpus
    for record in gen.prompt_records(200, 0, "eval"):
        assert record["prompt"] not in corpus


def test_pretraining_documents_hold_the_configured_number_of_worked_tasks():
    for tasks_per_document in (0, 3, 24):
        for document in gen.pretraining_text(5, 0, tasks_per_document):
            assert document.count("The answer is") == tasks_per_document


def test_the_closest_concept_of_a_good_explanation_is_its_own_and_of_a_wrong_one_is_not():
    import random

    from pipeline.data.glossary import GLOSSARY, closest_concept

    rng = random.Random(0)
    for concept in GLOSSARY:
        assert closest_concept(gen.good_explanation(concept)) == concept
        assert closest_concept(gen.rejected_explanation(concept, "wrong", rng)) != concept
    assert closest_concept("The weather is mild today.") is None


def test_held_out_task_phrasings_do_not_start_like_held_out_explanation_prompts():
    from pipeline.data.tasks import EVAL_PHRASINGS

    explanation_starts = {" ".join(template.split()[:2]) for template in gen.EVAL_TEMPLATES}
    for task_type in TASK_TYPES:
        for phrasing in EVAL_PHRASINGS:
            assert " ".join(PHRASINGS[task_type][phrasing].split()[:2]) not in explanation_starts, task_type


def test_pick_kind_lists_hold_exactly_one_word_of_the_named_kind():
    import random

    from pipeline.data.glossary import CATEGORIES, CATEGORY_NOUNS

    rng = random.Random(3)
    assert len({w for words in CATEGORIES.values() for w in words}) == sum(map(len, CATEGORIES.values()))
    for _ in range(200):
        task = make_task("pick_kind", rng, rng.randrange(len(PHRASINGS["pick_kind"])))
        kind = next(k for k, noun in CATEGORY_NOUNS.items() if f" {noun}" in task["prompt"])
        listed = [w.strip("?.:,") for w in task["prompt"].split() if w.strip("?.:,") in {x for ws in CATEGORIES.values() for x in ws}]
        assert [w for w in listed if w in CATEGORIES[kind]] == [task["task"]["expected"]], task


def test_no_task_phrasing_starts_like_a_held_out_explanation_prompt():
    openings = {" ".join(template.split()[:2]).lower() for template in gen.EVAL_TEMPLATES}
    for task_type, phrasings in PHRASINGS.items():
        for phrasing in phrasings:
            assert " ".join(phrasing.split()[:2]).lower() not in openings, (task_type, phrasing)


def test_rambling_rejected_answers_vary_in_length_and_mostly_stop_mid_sentence():
    # The base model's kind of answer: pretraining-like text of any length, usually cut off.
    rambles = [p["rejected"] for p in gen.preference_records(2000, 0) if p["failure_mode"] == "ramble"]
    assert len(rambles) >= 80
    lengths = [len(r.split()) for r in rambles]
    assert min(lengths) <= 10 and max(lengths) >= 70
    cut_off = sum(not r.endswith((".", "?")) for r in rambles) / len(rambles)
    assert 0.5 < cut_off < 1, cut_off


@pytest.mark.parametrize("seed", [0, 3])  # seed 3 had one near-duplicate before each concept's other concepts differed
def test_default_preference_pairs_have_no_near_duplicates_whatever_the_seed(seed):
    # Half the explanation pairs reject a good explanation of another concept; the same other concept twice
    # for one concept would make two pairs that differ only in the prompt's template, which the gate blocks.
    config = PreferenceDataConfig()
    pairs = gen.preference_records(config.n_records, seed, config.explanation_fraction)
    report = find_duplicates(pairs, ("prompt", "chosen", "rejected"), DedupSettings())
    assert (report.exact, report.near) == ([], [])


def test_a_quarter_of_rejected_explanations_change_concept_halfway_each_time_to_another():
    # The SFT model's sampled explanations mostly leave the concept asked after its definition.
    from pipeline.data.glossary import GLOSSARY

    pairs = [p for p in gen.preference_records(2000, 0) if p["kind"] == "explanation"]
    changed = [p for p in pairs if p["failure_mode"] == "changes_concept"]
    assert 0.2 <= len(changed) / len(pairs) <= 0.3
    seen = set()
    for pair in changed:
        concept = next(c for c in GLOSSARY if pair["chosen"] == gen.good_explanation(c))
        definition = pair["chosen"].split(f"{concept.definition}.")[0] + f"{concept.definition}."
        assert pair["rejected"].startswith(definition), pair
        others = [c for c in GLOSSARY if c != concept and c.why in pair["rejected"] and c.example in pair["rejected"]]
        assert len(others) == 1 and concept.why not in pair["rejected"], pair
        assert (concept.name, others[0].name) not in seen, pair  # the same two concepts twice: near-duplicate pairs
        seen.add((concept.name, others[0].name))
