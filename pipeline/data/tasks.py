"""Verifiable tasks and the rule-based checker.

Every task carries its expected answer. A good answer always ends with the sentence
"The answer is <X>." so that the checker can read the final answer of any response without
guessing; a response that never states a final answer is simply wrong.

The tasks are sized for a model of about a million parameters trained for minutes on a CPU: each
must be answered from the prompt, and by the *content* of what it reads there (which number, which
word of a named kind), not by its position: a model that small learns to look up "the fruit in this
list" or "the number after 7" within the default's budget, but not "the fourth word" or "these
words backwards" (benchmarks/base_task_accuracy.py measured both kinds). Sorting and word counting
stay harder, so the checker is not saturated.
"""

from __future__ import annotations

import random
import re
from typing import Any

from pipeline.data.glossary import CATEGORIES, CATEGORY_NOUNS, WORDS

TASK_TYPES = ("add", "multiply", "sort", "count_words", "pick_kind", "larger", "next_number")

# Training and evaluation phrase each task differently, so that evaluation prompts can never
# coincide with a training prompt whatever the seeds: phrasings 0-7 train, 8 evaluates. Eight
# training phrasings, because a small model learns the task rather than the wording only when the
# wording varies. All phrasings of a task share its key word ("plus", "times", "sort", ...): a
# held-out phrasing is new wording around a word the model has learnt, as it is for users'
# rephrasings. No task phrasing starts like a held-out explanation prompt ("Tell me about ...",
# "Can you help me ..."): a task prompt must not read as a request for an explanation, nor the other
# way round (with "Can you sort ...?" among the training phrasings, SFT answered held-out "Can you
# help me understand ...?" prompts by sorting numbers).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": (
        "What is {a} plus {b}?", "Compute {a} plus {b}.", "Work out {a} plus {b}.", "Give me {a} plus {b}.",
        "Calculate {a} plus {b}.", "How much is {a} plus {b}?", "Solve {a} plus {b}.", "Quick one: {a} plus {b}?",
        "Find {a} plus {b}.",
    ),
    "multiply": (
        "What is {a} times {b}?", "Compute {a} times {b}.", "Work out {a} times {b}.", "Give me {a} times {b}.",
        "Calculate {a} times {b}.", "How much is {a} times {b}?", "Solve {a} times {b}.", "Quick one: {a} times {b}?",
        "Find {a} times {b}.",
    ),
    "sort": (
        "Sort these numbers from smallest to largest: {items}.", "Sort the numbers {items} in increasing order.",
        "Sort this list of numbers: {items}.", "Please sort {items}.", "Sort {items}, smallest first.",
        "I need {items} sorted.", "Put these in sorted order: {items}.", "Sort, please: {items}.",
        "Numbers to sort, smallest first: {items}.",
    ),
    "count_words": (
        "How many words are in this list: {words}?", "Count the words in this list: {words}.",
        "Count how many words there are: {words}.", "How many words does this list have: {words}?",
        "Count these words: {words}.", "What is the number of words in {words}?",
        "Here is a list: {words}. How many words?", "Give the word count of {words}.",
        "In the list {words}, how many words are there?",
    ),
    "pick_kind": (
        "Which word in this list is {kind}: {words}?", "Find {kind} in this list: {words}.",
        "Pick out {kind} from {words}.", "Name the word that is {kind}: {words}.",
        "Here are some words: {words}. Which is {kind}?", "One of {words} is {kind}. Which one?",
        "Which of these words is {kind}: {words}?", "Spot {kind} among {words}.",
        "Out of {words}, which word is {kind}?",
    ),
    "larger": (
        "Which is larger, {a} or {b}?", "Which number is larger: {a} or {b}?", "Pick the larger of {a} and {b}.",
        "Of {a} and {b}, which is larger?", "Is {a} or {b} larger?", "Name the larger number: {a} or {b}.",
        "Which one is larger, {a} or {b}?", "Give me the larger of {a} and {b}.",
        "Between {a} and {b}, which number is larger?",
    ),
    "next_number": (
        "What number comes after {a}?", "Which number comes after {a}?", "Name the number that comes after {a}.",
        "Give me the number after {a}.", "What comes after {a}?", "Which number is after {a}?",
        "Say the number that comes after {a}.", "After {a}, what number comes?",
        "Counting up, what comes right after {a}?",
    ),
}
TRAIN_PHRASINGS = (0, 1, 2, 3, 4, 5, 6, 7)
EVAL_PHRASINGS = (8,)

_ANSWER_PATTERN = re.compile(r"the answer is\s*:?\s*(.+?)\s*\.?\s*$", re.IGNORECASE | re.DOTALL)


def make_task(task_type: str, rng: random.Random, phrasing: int) -> dict[str, Any]:
    """Draw one task; returns {"prompt", "answer" (a good worked answer), "task" (for the checker)}."""
    if task_type == "add":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        expected, work = str(a + b), f"{a} plus {b} is {a + b}."
        fields = {"a": a, "b": b}
    elif task_type == "multiply":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        expected, work = str(a * b), f"{a} times {b} is {a * b}."
        fields = {"a": a, "b": b}
    elif task_type == "sort":
        numbers = rng.sample(range(1, 30), rng.randint(3, 4))
        expected = ", ".join(str(n) for n in sorted(numbers))
        work = f"From smallest to largest the numbers are {expected}."
        fields = {"items": ", ".join(str(n) for n in numbers)}
    elif task_type == "count_words":
        words = rng.sample(WORDS, rng.randint(2, 6))
        fields = {"words": " ".join(words)}
        expected = str(len(words))
        work = f"The list {' '.join(words)} has {len(words)} words."
    elif task_type == "pick_kind":
        kind, *others = rng.sample(sorted(CATEGORIES), rng.randint(3, 4))
        expected = rng.choice(CATEGORIES[kind])
        words = [expected, *(rng.choice(CATEGORIES[other]) for other in others)]
        rng.shuffle(words)
        fields = {"words": " ".join(words), "kind": CATEGORY_NOUNS[kind]}
        work = f"The {kind} in the list is {expected}."
    elif task_type == "larger":
        a, b = rng.sample(range(1, 30), 2)
        expected, work = str(max(a, b)), f"{max(a, b)} is larger than {min(a, b)}."
        fields = {"a": a, "b": b}
    elif task_type == "next_number":
        a = rng.randint(1, 40)
        expected, work = str(a + 1), f"After {a} comes {a + 1}."
        fields = {"a": a}
    else:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {TASK_TYPES}")
    prompt = PHRASINGS[task_type][phrasing].format(**fields)
    return {
        "prompt": prompt,
        "answer": f"{work} The answer is {expected}.",
        "task": {"type": task_type, "expected": expected},
    }


def extract_final_answer(response: str) -> str | None:
    """The text after the last "The answer is", without the closing full stop; None if absent."""
    last = response.lower().rfind("the answer is")
    if last < 0:
        return None
    match = _ANSWER_PATTERN.search(response[last:].split("\n")[0])
    return match.group(1).strip() if match else None


def _normalise(answer: str) -> str:
    return re.sub(r"[\s,]+", " ", answer.strip().strip(".").lower()).strip()


def check_answer(task: dict[str, Any], response: str) -> bool:
    """True when the response's stated final answer equals the task's expected answer."""
    stated = extract_final_answer(response)
    return stated is not None and _normalise(stated) == _normalise(str(task["expected"]))


def wrong_answer(task_type: str, answer: str, expected: str, rng: random.Random) -> str:
    """A fluent answer in the right format whose final answer is wrong."""
    if task_type in ("add", "multiply", "count_words", "next_number"):
        wrong = str(int(expected) + rng.choice((-3, -2, -1, 1, 2, 4)))
        if int(wrong) < 0:
            wrong = str(int(expected) + 1)
    elif task_type == "larger":  # the smaller of the two: the answer is the other number of the prompt
        wrong = re.search(r"larger than (\d+)", answer).group(1)
    elif task_type == "pick_kind":  # a word of another kind
        kind = re.search(r"The (\w+) in the list", answer).group(1)
        wrong = rng.choice([w for k, words in CATEGORIES.items() if k != kind for w in words])
    else:
        items = expected.split(", ")
        wrong_items = list(items)
        while wrong_items == items:
            rng.shuffle(wrong_items)
        wrong = ", ".join(wrong_items)
    # Only the stated answers change: "The list X has 3 words" must not turn its list into another.
    head, marker, _ = answer.rpartition("The answer is ")
    if task_type == "count_words":
        head = re.sub(rf"has {re.escape(expected)} words\.$", f"has {wrong} words.", head.rstrip()) + " "
    elif task_type == "larger":
        head = f"{wrong} is larger than {expected}. "
    else:
        head = head.replace(expected, wrong)
    return f"{head}{marker}{wrong}."
