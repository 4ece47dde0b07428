"""Deterministic, seeded generator of the embedded default data.

It produces explanation prompts about RL and ML concepts (from `pipeline.data.glossary`) with good
answers, verifiable tasks with a rule-based checker (`pipeline.data.tasks`), preference
pairs whose rejected answers show distinct failures, PPO prompts, held-out evaluation prompts and
plain pretraining text.

Held-out evaluation prompts are disjoint from every training set by construction, whatever the
seeds: evaluation uses its own phrasings (explanation templates and task phrasings that training
never uses). Every record is a plain dict so it can be written as JSONL or Parquet.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.data.glossary import (
    GLOSSARY,
    OFF_TOPIC_ANSWERS,
    PADDING_CLOSERS,
    PADDING_OPENERS,
    VAGUE_EXPLANATIONS,
    VAGUE_TASK_ANSWERS,
    Concept,
)
from pipeline.data.tasks import (
    EVAL_PHRASINGS,
    TASK_TYPES,
    TRAIN_PHRASINGS,
    make_task,
    wrong_answer,
)

TRAIN_TEMPLATES = (
    "Explain what {c} is, and give an intuitive example.",
    "What is {c}? Give an example.",
    "Describe {c} in simple terms.",
    "Why does {c} matter? Explain with an example.",
    "Give a short explanation of {c}.",
    "How would you explain {c} to a new student?",
    "What should an engineer know about {c}?",
    "Define {c} and say why it is useful.",
    "What do people mean by {c}?",
    "I keep hearing about {c}. What is it?",
    "Explain {c} to me.",
    "Could you describe {c}, with an example?",
)
EVAL_TEMPLATES = (
    "Tell me about {c}, with an example.",
    "Can you help me understand {c}?",
)
# How the rejected answers of preference pairs fail. Besides the flaws of demonstrations, answers that
# are fine in themselves but answer another question: another concept's explanation
# (`other_concept`), a worked task (`answers_task`), or, for a task, an explanation (`explains`) or
# another task's worked answer (`other_task`). SFT models confuse prompts that way, and a reward
# model that never saw such pairs scores them by their form alone, which PPO then exploits (the spot
# checks of PPO's answers showed each of them). And `ramble`: 3-80 words of pretraining-like text,
# usually cut off mid-sentence, which is what a policy that has not learnt the format (the base model)
# writes. (It does not stop the reward model from scoring such rambles by whether they end: on the
# previous default's base model, whose greedy answers mostly run to the token limit, corr(RM score,
# length) was -0.79 without these pairs and -0.84 with them on seed 1.)
# And `changes_concept`: the right concept's definition, then another concept's reason and example, which
# is how most of the SFT model's sampled explanations that leave the concept asked do it (seed 0 after a
# reward model of 8 epochs: 29 of PPO's 56 such answers began with the concept asked).
FAILURE_MODES = (
    "vague", "wrong", "padded", "repetitive", "off_topic", "salad", "other_concept", "answers_task", "ramble",
    "changes_concept",
)
# Explanation pairs: half the rejected answers are a good explanation of another concept. It is the
# explanation the SFT model most often gives instead of the right one (a few tokens in, its sampled
# answers drift to another concept's definition), and with one pair in nine of that kind the reward
# model scored a finished explanation of the wrong concept above an unfinished one of the right
# concept, so PPO drew the policy further off the concept asked (seed 0: concept match 0.84 after SFT,
# 0.75 after PPO; with half, 0.81).
# A quarter change concept halfway, the other quarter cycles through the other modes.
EXPLANATION_FAILURE_CYCLE = tuple(
    mode for other in FAILURE_MODES if other not in ("other_concept", "changes_concept")
    for mode in ("other_concept", "changes_concept", "other_concept", other)
)
# Task pairs: half the rejected answers are well-formed but wrong, the answer the SFT model most often
# gets wrong looks like that, and telling it from a right one takes the most comparisons.
TASK_FAILURE_CYCLE = (
    "wrong", "vague", "wrong", "explains", "wrong", "padded", "wrong", "repetitive", "wrong", "other_task",
    "wrong", "off_topic", "wrong", "salad", "wrong", "explains", "wrong", "other_task", "wrong", "ramble",
)
# The ways a flawed demonstration can fall short: real demonstrations vary in quality and SFT imitates
# them all; the preference pairs' rejected answers fail in the same ways (and more), so the reward
# model learns which of the SFT model's own kinds of answer is better. A wrong result is a flaw of
# task answers only: an explanation "wrong" in the same way (the concept's name over another concept's
# definition) taught SFT to follow a name with any definition.
DEMONSTRATION_FLAWS = ("wrong", "padded", "vague", "repetitive")
DEMONSTRATION_FLAWS_BY_KIND = {"verifiable": DEMONSTRATION_FLAWS, "explanation": ("padded", "vague", "repetitive")}
# The default's flawed demonstrations are repetitive: they show the right working (a task's result, a
# concept's definition) over and over and never finish with a final answer. Flaws that teach the task
# itself wrongly cost the small SFT model what PPO cannot give back: of its sampled held-out answers
# that state a result, 35% were right after 2000 demonstrations with a quarter each of wrong,
# padded, vague and repetitive task flaws, 59% with repetitive ones, 61% with none flawed; padded
# and vague explanations, a padded one's long opener coming between the question and the answer,
# drew it to another concept's definition (benchmarks/sft_flaws.py, seed 0; README: Does RLHF work
# on the default job?). PPO removes the unfinished answers, which is the improvement comparisons can
# teach. The other flaws stay selectable (`sft_data`'s `task_flaws`, `explanation_flaws`) and among
# the rejected answers.
DEFAULT_DEMONSTRATION_FLAWS = {"verifiable": ("repetitive",), "explanation": ("repetitive",)}

# Fixed prompts for `base_probe`: evaluation phrasings only, so they never occur in training.
PROBE_PROMPTS = (
    "Tell me about PPO's clip ratio, with an example.",
    "Can you help me understand the KL penalty in RLHF?",
    "Tell me about a reward model, with an example.",
    "Can you help me understand overfitting?",
    "Find 8 plus 5.",
    "Numbers to sort, smallest first: 9, 3, 21, 12.",
    "Out of river lemon hammer, which word is a fruit?",
    "Between 14 and 9, which number is larger?",
)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def good_explanation(concept: Concept) -> str:
    return f"{_capitalise(concept.name)} is {concept.definition}. {concept.why}. For example, {concept.example}."


def _other_concept(concept: Concept, rng: random.Random) -> Concept:
    while True:
        other = rng.choice(GLOSSARY)
        if other != concept:
            return other


def rejected_explanation(concept: Concept, mode: str, rng: random.Random) -> str:
    """A fluent but worse answer to an explanation prompt, failing in the given way."""
    name = _capitalise(concept.name)
    if mode == "vague":
        return rng.choice(VAGUE_EXPLANATIONS).format(name=name)
    if mode == "wrong":
        other = _other_concept(concept, rng)
        return f"{name} is {other.definition}. {other.why}."
    if mode == "padded":
        return f"{rng.choice(PADDING_OPENERS)} {name} is {concept.definition}. {rng.choice(PADDING_CLOSERS)}"
    if mode == "repetitive":
        sentence = f"{name} is {concept.definition}."
        return " ".join([sentence] * rng.randint(2, 3))
    if mode == "off_topic":
        return rng.choice(OFF_TOPIC_ANSWERS)
    if mode == "salad":
        return _salad(concept, rng)
    if mode == "other_concept":
        return good_explanation(_other_concept(concept, rng))
    if mode == "answers_task":
        return _worked_task(rng)
    if mode == "ramble":
        return _ramble(rng)
    if mode == "changes_concept":
        return changed_concept(concept, _other_concept(concept, rng))
    raise ValueError(f"unknown failure mode {mode!r}; expected one of {FAILURE_MODES}")


def changed_concept(concept: Concept, other: Concept) -> str:
    """The concept's definition, then `other`'s reason and example: an answer that changes concept halfway."""
    return f"{_capitalise(concept.name)} is {concept.definition}. {other.why}. For example, {other.example}."


def _worked_task(rng: random.Random, other_than: str | None = None) -> str:
    """A good answer to a task drawn at random (of another type than `other_than`)."""
    task_type = rng.choice([t for t in TASK_TYPES if t != other_than])
    return make_task(task_type, rng, rng.choice(TRAIN_PHRASINGS))["answer"]


def _salad(concept: Concept, rng: random.Random) -> str:
    """Fluent fragments of several concepts stitched together, the shape a policy finds when it games the RM."""
    other, third = _other_concept(concept, rng), _other_concept(concept, rng)
    return f"{_capitalise(concept.name)} is {other.definition}. {third.why}. The answer is {third.definition}."


def _ramble(rng: random.Random) -> str:
    """Pretraining-like text (explanations, worked tasks, off-topic prose) of 3-80 words, usually cut mid-sentence."""
    n_words = rng.randint(3, 80)
    words: list[str] = []
    while len(words) < n_words:
        source = rng.random()
        if source < 0.4:
            sentence = good_explanation(rng.choice(GLOSSARY))
        elif source < 0.8:
            task = make_task(rng.choice(TASK_TYPES), rng, rng.choice(TRAIN_PHRASINGS))
            sentence = f"{task['prompt']} {task['answer']}"
        else:
            sentence = rng.choice(OFF_TOPIC_ANSWERS)
        words.extend(sentence.split())
    return " ".join(words[:n_words])


def rejected_task_answer(record: dict[str, Any], mode: str, rng: random.Random) -> str:
    answer, task = record["answer"], record["task"]
    if mode == "vague":
        return rng.choice(VAGUE_TASK_ANSWERS)
    if mode == "wrong":
        return wrong_answer(task["type"], answer, task["expected"], rng)
    if mode == "padded":
        return f"{rng.choice(PADDING_OPENERS)} {answer} {rng.choice(PADDING_CLOSERS)}"
    if mode == "repetitive":
        first_sentence = answer.split(". ")[0].rstrip(".") + "."
        return " ".join([first_sentence] * 3)
    if mode == "off_topic":
        return rng.choice(OFF_TOPIC_ANSWERS)
    if mode == "salad":
        concept = rng.choice(GLOSSARY)
        return f"The answer is {concept.definition}. {concept.why}."
    if mode == "explains":
        return good_explanation(rng.choice(GLOSSARY))
    if mode == "other_task":
        return _worked_task(rng, other_than=task["type"])
    if mode == "ramble":
        return _ramble(rng)
    raise ValueError(f"unknown failure mode {mode!r}; expected one of {set(TASK_FAILURE_CYCLE)}")


def flawed_answer(record: dict[str, Any], flaw: str, rng: random.Random) -> str:
    """A demonstration of the record's prompt that falls short in the given way (see DEMONSTRATION_FLAWS)."""
    if record["kind"] == "explanation":
        return rejected_explanation(_concept(record["concept"]), flaw, rng)
    return rejected_task_answer(record, flaw, rng)


def _concept(name: str) -> Concept:
    return next(c for c in GLOSSARY if c.name == name)


def _explanation_pool(templates: tuple[str, ...]) -> list[tuple[Concept, str]]:
    return [(concept, template) for concept in GLOSSARY for template in templates]


def _records(n: int, seed: int, salt: str, explanation_fraction: float, train: bool) -> list[dict[str, Any]]:
    """n unique prompts with good answers: explanation prompts and verifiable tasks mixed."""
    rng = random.Random(f"{salt}:{seed}")
    templates = TRAIN_TEMPLATES if train else EVAL_TEMPLATES
    phrasings = TRAIN_PHRASINGS if train else EVAL_PHRASINGS
    pool = _explanation_pool(templates)
    rng.shuffle(pool)
    n_explain = min(round(n * explanation_fraction), len(pool))
    records: list[dict[str, Any]] = []
    for concept, template in pool[:n_explain]:
        records.append({
            "prompt": template.format(c=concept.name),
            "answer": good_explanation(concept),
            "kind": "explanation",
            "task": None,
            "concept": concept.name,
        })
    seen = {r["prompt"] for r in records} | set(PROBE_PROMPTS)
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"cannot draw {n} unique prompts from the generator; ask for fewer")
        task = make_task(rng.choice(TASK_TYPES), rng, rng.choice(phrasings))
        if task["prompt"] in seen:
            continue
        seen.add(task["prompt"])
        records.append({**task, "kind": "verifiable", "concept": None})
    rng.shuffle(records)
    return records


def sft_records(
    n: int, seed: int, explanation_fraction: float = 0.5, flawed_fraction: float = 0.0,
    flaws_by_kind: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Instruction/answer pairs: {"prompt", "completion", "kind", "task", "concept", "flaw"}.

    A `flawed_fraction` of the demonstrations (exactly round(n * flawed_fraction), spread over both
    kinds at random) fall short in one of their kind's DEFAULT_DEMONSTRATION_FLAWS, cycling so each
    flaw of a kind is equally common; `flaw` names it (None for a good demonstration).
    `flaws_by_kind` replaces the cycle of a kind ("verifiable", "explanation") with some of the
    kind's DEMONSTRATION_FLAWS_BY_KIND; a flaw named twice is twice as common.
    """
    if not 0 <= flawed_fraction <= 1:
        raise ValueError(f"flawed_fraction must be in [0, 1], got {flawed_fraction}")
    flaws_by_kind = {**DEFAULT_DEMONSTRATION_FLAWS, **(flaws_by_kind or {})}
    for kind, kind_flaws in flaws_by_kind.items():
        allowed = DEMONSTRATION_FLAWS_BY_KIND.get(kind, ())
        if not kind_flaws or not set(kind_flaws) <= set(allowed):
            raise ValueError(f"{kind} demonstrations can be flawed as some of {allowed}, got {list(kind_flaws)}")
    records = _records(n, seed, "sft", explanation_fraction, train=True)
    rng = random.Random(f"sft-flaws:{seed}")
    flawed = sorted(rng.sample(range(len(records)), round(len(records) * flawed_fraction)))
    cycles = {kind: itertools.cycle(kind_flaws) for kind, kind_flaws in flaws_by_kind.items()}
    flaws = {index: next(cycles[records[index]["kind"]]) for index in flawed}
    demonstrations = []
    for i, r in enumerate(records):
        flaw = flaws.get(i)
        demonstrations.append({
            "prompt": r["prompt"], "completion": flawed_answer(r, flaw, rng) if flaw else r["answer"],
            "kind": r["kind"], "task": r["task"], "concept": r["concept"], "flaw": flaw,
        })
    return demonstrations


def preference_records(n: int, seed: int, explanation_fraction: float = 0.5) -> list[dict[str, Any]]:
    """(prompt, chosen, rejected) pairs; failure modes cycle within each kind of prompt.

    Explanation pairs cycle through EXPLANATION_FAILURE_CYCLE, where half the rejected answers explain another
    concept well and a quarter change to another concept halfway; task pairs through TASK_FAILURE_CYCLE, where
    half are well-formed but wrong.
    """
    rng = random.Random(f"preference-failures:{seed}")
    pairs = []
    modes = {"explanation": itertools.cycle(EXPLANATION_FAILURE_CYCLE), "verifiable": itertools.cycle(TASK_FAILURE_CYCLE)}
    shown_instead: dict[tuple[str, str], set[str]] = {}  # (concept, mode) -> the other concepts shown so far
    for r in _records(n, seed, "preference", explanation_fraction, train=True):
        mode = next(modes[r["kind"]])
        if mode in ("other_concept", "changes_concept"):
            # Never the same other concept twice for one concept and mode: the two pairs would differ only
            # in the template of the prompt, near-duplicates that the dedup gate rightly blocks.
            shown = shown_instead.setdefault((r["concept"], mode), {r["concept"]})
            other = rng.choice([c for c in GLOSSARY if c.name not in shown])
            shown.add(other.name)
            rejected = good_explanation(other) if mode == "other_concept" else changed_concept(_concept(r["concept"]), other)
        else:
            rejected = flawed_answer(r, mode, rng)
        pairs.append({
            "prompt": r["prompt"], "chosen": r["answer"], "rejected": rejected,
            "failure_mode": mode, "kind": r["kind"],
        })
    return pairs


def prompt_records(n: int, seed: int, split: str, explanation_fraction: float = 0.5) -> list[dict[str, Any]]:
    """Prompts for `ppo_prompts` (split="ppo") or held-out `eval_prompts` (split="eval").

    Each keeps its reference answer and, for verifiable tasks, the task for the rule checker.
    """
    if split not in ("ppo", "eval"):
        raise ValueError(f"split must be 'ppo' or 'eval', got {split!r}")
    records = _records(n, seed, split, explanation_fraction, train=split == "ppo")
    return [
        {"prompt": r["prompt"], "reference": r["answer"], "kind": r["kind"], "task": r["task"], "concept": r["concept"]}
        for r in records
    ]


def pretraining_text(n_documents: int, seed: int, tasks_per_document: int = 16) -> list[str]:
    """Plain prose (no chat format): the base model learns to continue text, not to follow instructions.

    Besides explanations, each document holds worked tasks written as a question and its answer in
    the training phrasings (never the evaluation ones), so the base model has read task-shaped
    text, as a real base model has read worked examples on the web.
    """
    rng = random.Random(f"pretrain:{seed}")
    documents = []
    for _ in range(n_documents):
        concepts = rng.sample(GLOSSARY, 3)
        sentences = []
        for concept in concepts:
            sentences.append(good_explanation(concept))
        for _ in range(tasks_per_document):
            task = make_task(rng.choice(TASK_TYPES), rng, rng.choice(TRAIN_PHRASINGS))
            sentences.append(f"{task['prompt']} {task['answer']}")
        sentences.append(rng.choice(OFF_TOPIC_ANSWERS))
        rng.shuffle(sentences)
        documents.append(" ".join(sentences))
    return documents
