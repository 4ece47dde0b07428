"""Verifiable tasks and the rule-based checker.

Every task carries its expected answer. A good answer always ends with the sentence
"The answer is <X>." so that the checker can read the final answer of any response without
guessing; a response that never states a final answer is simply wrong.

The tasks are sized for a model of a few million parameters trained for minutes on a CPU: each
must be answered from the prompt (copying, reordering, picking from a short list, small lookups),
so a model that ignores the prompt fails them. Sorting and word counting stay harder, so the
checker is not saturated.
"""

from __future__ import annotations

import random
import re
from typing import Any

from pipeline.data.glossary import WORDS

TASK_TYPES = ("add", "multiply", "sort", "count_words", "reverse_words", "repeat_words", "last_word")

# Training and evaluation phrase each task differently, so that evaluation prompts can never
# coincide with a training prompt whatever the seeds: phrasings 0-3 train, 4 evaluates.
# All three phrasings of a task share its key word ("plus", "times", "sort", ...): a held-out
# phrasing is new wording around a word the model has learnt, as it is for users' rephrasings.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("What is {a} plus {b}?", "Compute {a} plus {b}.", "Work out {a} plus {b}.", "Give me {a} plus {b}.",
            "Tell me {a} plus {b}, please."),
    "multiply": ("What is {a} times {b}?", "Compute {a} times {b}.", "Work out {a} times {b}.", "Give me {a} times {b}.",
                 "Tell me {a} times {b}, please."),
    "sort": (
        "Sort these numbers from smallest to largest: {items}.",
        "Sort the numbers {items} in increasing order.",
        "Sort this list of numbers: {items}.",
        "Can you sort {items}?",
        "Please sort, smallest first: {items}.",
    ),
    "count_words": (
        "How many words are in this list: {words}?",
        "Count the words in this list: {words}.",
        "Count how many words there are: {words}.",
        "How many words does this list have: {words}?",
        "Tell me how many words this list has: {words}.",
    ),
    "reverse_words": (
        "Reverse the order of these words: {words}.",
        "Write these words in reverse order: {words}.",
        "Reverse this list: {words}.",
        "Can you reverse the words {words}?",
        "Please reverse this list of words: {words}.",
    ),
    "repeat_words": (
        "Repeat these words exactly: {words}.",
        "Repeat after me: {words}.",
        "Repeat this list: {words}.",
        "Can you repeat the words {words}?",
        "Please repeat this list of words: {words}.",
    ),
    "last_word": (
        "Which word comes last in this list: {words}?",
        "Name the last word of this list: {words}.",
        "What is the last word of {words}?",
        "Give me the last word of this list: {words}.",
        "Tell me the last word in the list {words}.",
    ),
}
TRAIN_PHRASINGS = (0, 1, 2, 3)
EVAL_PHRASINGS = (4,)

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
    elif task_type in ("count_words", "reverse_words", "repeat_words", "last_word"):
        words = rng.sample(WORDS, rng.randint(3, 5) if task_type != "count_words" else rng.randint(2, 6))
        fields = {"words": " ".join(words)}
        if task_type == "count_words":
            expected = str(len(words))
            work = f"The list {' '.join(words)} has {len(words)} words."
        elif task_type == "reverse_words":
            expected = " ".join(reversed(words))
            work = f"Read from the last word to the first, the words are {expected}."
        elif task_type == "repeat_words":
            expected = " ".join(words)
            work = f"Repeated exactly, the words are {expected}."
        else:
            expected = words[-1]
            work = f"The list ends with the word {expected}."
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
    if task_type in ("add", "multiply", "count_words"):
        wrong = str(int(expected) + rng.choice((-3, -2, -1, 1, 2, 4)))
        if int(wrong) < 0:
            wrong = str(int(expected) + 1)
    elif task_type == "last_word":
        wrong = rng.choice([w for w in WORDS if w != expected])
    else:
        items = expected.split(", ") if task_type == "sort" else expected.split(" ")
        wrong_items = list(items)
        while wrong_items == items:
            rng.shuffle(wrong_items)
        wrong = (", " if task_type == "sort" else " ").join(wrong_items)
    # Only the stated answers change: "The list X has 3 words" must not turn its list into another.
    head, marker, _ = answer.rpartition("The answer is ")
    if task_type == "count_words":
        head = re.sub(rf"has {re.escape(expected)} words\.$", f"has {wrong} words.", head.rstrip()) + " "
    else:
        head = head.replace(expected, wrong)
    return f"{head}{marker}{wrong}."
