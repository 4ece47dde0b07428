"""Verifiable tasks (arithmetic, sorting, counting, reversing) and the rule-based checker.

Every task carries its expected answer. A good answer always ends with the sentence
"The answer is <X>." so that the checker can read the final answer of any response without
guessing; a response that never states a final answer is simply wrong.
"""

from __future__ import annotations

import random
import re
from typing import Any

from pipeline.data.glossary import WORDS

TASK_TYPES = ("add", "multiply", "sort", "count_letter", "reverse_words")

# Training and evaluation phrase each task differently, so that evaluation prompts can never
# coincide with a training prompt whatever the seeds: phrasing index 0 and 1 train, 2 evaluates.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("What is {a} + {b}?", "Compute the sum of {a} and {b}.", "Add {a} and {b} together."),
    "multiply": ("What is {a} times {b}?", "Compute {a} multiplied by {b}.", "Multiply {a} by {b}."),
    "sort": (
        "Sort these numbers in ascending order: {items}.",
        "Put these numbers in increasing order: {items}.",
        "Arrange from smallest to largest: {items}.",
    ),
    "count_letter": (
        "How many times does the letter '{letter}' appear in the word '{word}'?",
        "Count the letter '{letter}' in the word '{word}'.",
        "In '{word}', how often does '{letter}' occur?",
    ),
    "reverse_words": (
        "Reverse the order of these words: {words}.",
        "Write these words in reverse order: {words}.",
        "List these words backwards, last word first: {words}.",
    ),
}
TRAIN_PHRASINGS = (0, 1)
EVAL_PHRASINGS = (2,)

_ANSWER_PATTERN = re.compile(r"the answer is\s*:?\s*(.+?)\s*\.?\s*$", re.IGNORECASE | re.DOTALL)


def make_task(task_type: str, rng: random.Random, phrasing: int) -> dict[str, Any]:
    """Draw one task; returns {"prompt", "answer" (a good worked answer), "task" (for the checker)}."""
    if task_type == "add":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        expected, work = str(a + b), f"{a} + {b} = {a + b}."
        fields = {"a": a, "b": b}
    elif task_type == "multiply":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        expected, work = str(a * b), f"{a} times {b} is {a * b}."
        fields = {"a": a, "b": b}
    elif task_type == "sort":
        numbers = rng.sample(range(1, 60), rng.randint(3, 6))
        expected = ", ".join(str(n) for n in sorted(numbers))
        work = f"From smallest to largest the numbers are {expected}."
        fields = {"items": ", ".join(str(n) for n in numbers)}
    elif task_type == "count_letter":
        word = rng.choice(WORDS)
        letter = rng.choice(sorted(set(word)))
        count = word.count(letter)
        expected = str(count)
        times = "time" if count == 1 else "times"
        work = f"The letter '{letter}' appears {count} {times} in '{word}'."
        fields = {"letter": letter, "word": word}
    elif task_type == "reverse_words":
        words = rng.sample(WORDS, rng.randint(3, 5))
        expected = " ".join(reversed(words))
        work = f"Read from the last word to the first, the words are {expected}."
        fields = {"words": " ".join(words)}
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
    if task_type in ("add", "multiply", "count_letter"):
        wrong = str(int(expected) + rng.choice((-3, -2, -1, 1, 2, 4)))
        if int(wrong) < 0:
            wrong = str(int(expected) + 1)
    else:
        items = expected.split(", ") if task_type == "sort" else expected.split(" ")
        wrong_items = list(items)
        while wrong_items == items:
            rng.shuffle(wrong_items)
        wrong = (", " if task_type == "sort" else " ").join(wrong_items)
    return answer.replace(expected, wrong)
