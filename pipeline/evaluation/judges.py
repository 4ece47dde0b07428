"""Pairwise judges for the evaluation report, RLAIF style: "which of two answers to this prompt is better?"

A judge is anything that satisfies `PairwiseJudge`: a callable taking the prompt and the two
answers, labelled A and B, and returning a `Verdict`. Three come built in:

- `HeuristicJudge`: deterministic, no model; prefers answers that address the prompt, do not
  repeat themselves, finish their sentences and stay concise. It is the default, so the judge
  path is exercised on every run.
- `CompletionJudge`: wraps any text-completion function (a local HF model, an API client) with
  the judge prompt template `JUDGE_TEMPLATE`, which asks for JSON `{"winner": "A"|"B"|"tie",
  "reason": ...}`, and parses the answer. `hf_completion` makes such a function from a local
  causal LM directory.
- a user's own: `load_judge("my_package.judges:make_judge")` imports a factory (or a judge).

Judges are shown each pair once, with the A/B order drawn at random per pair (see
`judge_pairs`), so that a judge's position bias averages out and can be measured.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Winner = Literal["A", "B", "tie"]
WINNERS: tuple[str, ...] = ("A", "B", "tie")

JUDGE_TEMPLATE = """You are comparing two answers to the same user prompt. Decide which answer is better: \
correct, on topic, complete and concise. Ignore the order in which the answers are shown.

Prompt:
{prompt}

Answer A:
{response_a}

Answer B:
{response_b}

Reply with JSON only, in the form {{"winner": "A" or "B" or "tie", "reason": "<one sentence>"}}."""


@dataclass(frozen=True)
class Verdict:
    winner: Winner
    reason: str = ""

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise ValueError(f"judge verdict winner must be one of {WINNERS}, got {self.winner!r}")


@runtime_checkable
class PairwiseJudge(Protocol):
    """Decides which of two answers (shown as A and B) to a prompt is better."""

    name: str

    def __call__(self, prompt: str, response_a: str, response_b: str) -> Verdict: ...


@dataclass(frozen=True)
class JudgedPair:
    """One comparison of model X's and model Y's answers, mapped back from the A/B positions."""

    prompt: str
    x_shown_as: Literal["A", "B"]
    verdict: Verdict

    @property
    def outcome(self) -> float:
        """1 if X's answer won, 0 if Y's did, 0.5 for a tie."""
        if self.verdict.winner == "tie":
            return 0.5
        return 1.0 if self.verdict.winner == self.x_shown_as else 0.0


def judge_pairs(
    judge: PairwiseJudge, prompts: Sequence[str], responses_x: Sequence[str], responses_y: Sequence[str], seed: int,
) -> list[JudgedPair]:
    """Judge X against Y on every prompt, X shown as A or B by a seeded coin flip per pair."""
    if not len(prompts) == len(responses_x) == len(responses_y):
        raise ValueError(
            f"judge_pairs needs one answer per prompt from each model: {len(prompts)} prompts, "
            f"{len(responses_x)} and {len(responses_y)} answers"
        )
    rng = random.Random(f"judge-order:{seed}")
    shown = ["A" if rng.random() < 0.5 else "B" for _ in prompts]
    cases = [
        (prompt, x, y) if where == "A" else (prompt, y, x)
        for prompt, x, y, where in zip(prompts, responses_x, responses_y, shown)
    ]
    batch = getattr(judge, "judge_batch", None)
    verdicts = batch(cases) if callable(batch) else [judge(*case) for case in cases]
    return [JudgedPair(prompt, where, verdict) for prompt, where, verdict in zip(prompts, shown, verdicts)]


# --- the built-in heuristic judge -----------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from give how i in is it me of on or say some that the "
    "their these this to what when which who why will with you your about example explain tell help "
    "understand".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class HeuristicScore:
    relevance: float
    repetition: float
    finished: bool
    n_words: int

    @property
    def total(self) -> float:
        if self.n_words == 0:
            return -1.0
        verbosity = max(0, self.n_words - 80) / 80  # past ~80 words every extra word costs
        return self.relevance - self.repetition + 0.2 * self.finished - 0.3 * verbosity


def heuristic_score(prompt: str, response: str) -> HeuristicScore:
    words = _words(response)
    content = {w for w in _words(prompt) if w not in _STOPWORDS and len(w) > 1}
    relevance = len(content & set(words)) / len(content) if content else 0.0
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    repetition = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    finished = response.rstrip().endswith((".", "!", "?"))
    return HeuristicScore(relevance, repetition, finished, len(words))


class HeuristicJudge:
    """Deterministic judge without a model: relevance to the prompt, no repetition, finished, concise."""

    name = "heuristic"

    def __init__(self, tie_margin: float = 0.05):
        self.tie_margin = tie_margin

    def __call__(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        a, b = heuristic_score(prompt, response_a), heuristic_score(prompt, response_b)
        detail = (
            f"A: relevance {a.relevance:.2f}, repetition {a.repetition:.2f}, {a.n_words} words"
            f"{'' if a.finished else ', unfinished'}; "
            f"B: relevance {b.relevance:.2f}, repetition {b.repetition:.2f}, {b.n_words} words"
            f"{'' if b.finished else ', unfinished'}"
        )
        if abs(a.total - b.total) < self.tie_margin:
            return Verdict("tie", f"too close to call ({detail})")
        return Verdict("A" if a.total > b.total else "B", detail)


# --- judges that read a model's text answer ------------------------------------------------------

_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_BARE_WINNER = re.compile(r'"?winner"?\s*[:=]\s*"?(A|B|tie)\b', re.IGNORECASE)


def parse_verdict(text: str) -> Verdict:
    """The judge's JSON answer as a Verdict; anything unreadable counts as a tie, with the text kept as reason."""
    for candidate in _JSON_OBJECT.findall(text):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        winner = str(data.get("winner", "")).strip() if isinstance(data, dict) else ""
        winner = {"a": "A", "b": "B", "tie": "tie"}.get(winner.lower())
        if winner:
            return Verdict(winner, str(data.get("reason", "")).strip())
    match = _BARE_WINNER.search(text)
    if match:
        winner = {"a": "A", "b": "B", "tie": "tie"}[match.group(1).lower()]
        return Verdict(winner, f"(no valid JSON) {text.strip()[:200]}")
    return Verdict("tie", f"unreadable judge output: {text.strip()[:200]!r}")


class CompletionJudge:
    """A judge from a text-completion function: fills `template`, completes it, parses the JSON verdict."""

    def __init__(
        self,
        name: str,
        complete: Callable[[str], str],
        template: str = JUDGE_TEMPLATE,
        complete_batch: Callable[[Sequence[str]], list[str]] | None = None,
    ):
        self.name = name
        self.complete = complete
        self.complete_batch = complete_batch
        self.template = template

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        return self.template.format(prompt=prompt, response_a=response_a, response_b=response_b)

    def __call__(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return parse_verdict(self.complete(self.render(prompt, response_a, response_b)))

    def judge_batch(self, cases: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        texts = [self.render(*case) for case in cases]
        if self.complete_batch is not None:
            return [parse_verdict(answer) for answer in self.complete_batch(texts)]
        return [parse_verdict(self.complete(text)) for text in texts]


def hf_completion(model_dir: str, max_new_tokens: int = 64, device: str = "auto", batch_size: int = 8):
    """(complete, complete_batch) for a local HF causal LM directory; greedy decoding through its chat template."""

    from pipeline.training.device import select_device
    from pipeline.training.generation import generate, load_causal_lm

    loaded: list = []  # loaded on first use, so the judge is not in memory while the policies answer

    def complete_batch(texts: Sequence[str]) -> list[str]:
        if not loaded:
            loaded.extend(load_causal_lm(model_dir, select_device(device)))
        model, tokenizer = loaded
        generations = generate(
            model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
        )
        return [g.response for g in generations]

    def complete(text: str) -> str:
        return complete_batch([text])[0]

    return complete, complete_batch


class FunctionJudge:
    """A plain function (prompt, response_a, response_b) -> Verdict, given a name."""

    def __init__(self, name: str, function: Callable[[str, str, str], Verdict]):
        self.name = name
        self.function = function

    def __call__(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return self.function(prompt, response_a, response_b)


def load_judge(spec: str) -> PairwiseJudge:
    """A user's judge from "module.path:attribute".

    The attribute may be a judge object, a judge class or zero-argument factory (called once), or a
    plain function (prompt, response_a, response_b) -> Verdict (named after the attribute).
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"custom judge must be given as 'module.path:attribute', got {spec!r}")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import custom judge {spec!r}: {error}") from error
    if isinstance(target, type):
        judge = target()
    elif isinstance(target, PairwiseJudge):
        judge = target
    elif callable(target) and _required_arguments(target) == 0:
        judge = target()
    elif callable(target) and _required_arguments(target) == 3:
        judge = FunctionJudge(attribute, target)
    else:
        judge = target
    if not isinstance(judge, PairwiseJudge):
        raise TypeError(
            f"custom judge {spec!r} must be (or return) a callable (prompt, response_a, response_b) -> Verdict "
            f"with a `name` attribute; got {type(judge).__name__}"
        )
    return judge


def _required_arguments(function: Callable) -> int:
    parameters = inspect.signature(function).parameters.values()
    return sum(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def build_judge(
    judge_model: str | None = None, custom_judge: str | None = None, max_new_tokens: int = 64, device: str = "auto",
) -> PairwiseJudge:
    """The configured pairwise judge: a custom one, else a local HF model, else the heuristic judge."""
    if custom_judge:
        return load_judge(custom_judge)
    if judge_model:
        complete, complete_batch = hf_completion(judge_model, max_new_tokens, device)
        return CompletionJudge(f"llm:{judge_model.rstrip('/').rsplit('/', 1)[-1]}", complete, complete_batch=complete_batch)
    return HeuristicJudge()
