"""The evaluation's result as types: what `pipeline.evaluation.evaluate` computes and the report renders.

Every number has a name here, so the report, the asset's metadata and the regression check read
`result.models["ppo"].checker_accuracy`, not `result["models"]["ppo"]["checker_accuracy"]`.
`EvaluationResult.to_dict()` is its JSON form: `eval.json` holds it (without the per-answer rows and
judge verdicts, which go to `answers.jsonl` and `judgements.jsonl`) together with what the report
adds; its keys are a published format that users and the regression check read.

No torch here: the report imports this module, and the report's regression check runs on every run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.training.generation import Generation

MODELS = ("base", "sft", "ppo")  # the models every report compares, in eval.json's `models`
# (x, y): "x_vs_y" is the rate at which x's answer beats y's (ties count half).
PAIRS = (("ppo", "sft"), ("sft", "base"), ("ppo", "base"))
JUDGE_KEYS = ("reward_model", "rule_checker", "pairwise_judge")


def pair_key(x: str, y: str) -> str:
    return f"{x}_vs_{y}"


@dataclass(frozen=True)
class Answer(Generation):
    """A model's answer to one evaluation prompt, with the reward model's score and the rule checker's verdict."""

    rm_score: float = math.nan
    checker_passed: bool | None = None  # None: not a verifiable prompt
    task_type: str | None = None  # the verifiable task's type, for per-task accuracy
    concept_matched: bool | None = None  # explanation prompts: is the answer about the concept asked? None: not one

    @classmethod
    def scored(
        cls, generation: Generation, rm_score: float, checker_passed: bool | None,
        task_type: str | None = None, concept_matched: bool | None = None,
    ) -> Answer:
        return cls(**asdict(generation), rm_score=rm_score, checker_passed=checker_passed,
                   task_type=task_type, concept_matched=concept_matched)

    @property
    def n_chars(self) -> int:
        return len(self.response)

    def to_dict(self) -> dict[str, Any]:
        """One line of answers.jsonl."""
        return {
            "prompt": self.prompt, "response": self.response, "n_tokens": self.n_tokens, "n_chars": self.n_chars,
            "ended_with_eos": self.ended_with_eos, "echoed_role_marker": self.echoed_role_marker,
            "rm_score": self.rm_score, "checker_passed": self.checker_passed,
            "task_type": self.task_type, "concept_matched": self.concept_matched,
        }


@dataclass(frozen=True)
class LengthQuantiles:
    """Response length in tokens."""

    p10: float
    median: float
    p90: float
    max: float


@dataclass(frozen=True)
class ModelMetrics:
    """One model's numbers over the evaluation prompts; `*_ci95` are 95% bootstrap intervals [low, high]."""

    n_answers: int
    rm_score_mean: float | None
    rm_score_ci95: list[float] | None
    checker_accuracy: float | None  # None: no verifiable prompt
    checker_accuracy_ci95: list[float] | None
    n_verifiable: int
    format_adherence: float | None  # ends with EOS and echoes no role marker
    format_adherence_ci95: list[float] | None
    ends_with_eos_rate: float
    role_marker_rate: float
    mean_length: float  # tokens
    length_tokens: LengthQuantiles
    mean_length_chars: float
    rm_length_correlation: float | None  # None: undefined (see pipeline.data.statistics)
    # Explanation prompts with a known concept: the share of answers about the concept asked
    # (`pipeline.data.glossary.closest_concept`); None when there is no such prompt.
    concept_match_rate: float | None = None
    concept_match_rate_ci95: list[float] | None = None
    n_explanations: int = 0
    checker_accuracy_by_task: dict[str, TaskAccuracy] = field(default_factory=dict)
    # Does the reward model tell a right result from a wrong one among this model's answers?
    rm_right_over_wrong: RightOverWrong | None = None
    # corr(RM score, length) within each kind of prompt (each task type, explanations): does a longer answer
    # score higher than others to the same kind of prompt? The pooled correlation also holds the difference
    # between kinds (explanations are longer than task answers and may score higher or lower as a kind).
    rm_length_correlation_within_kind: float | None = None


@dataclass(frozen=True)
class RightOverWrong:
    """Of the answers to verifiable prompts that state a result, how often the reward model scores a right one above
    a wrong one: the share of all (right, wrong) pairs, ties counting half (0.5 is chance, 1 a perfect ranking).
    `rate` is None unless there are answers of both kinds. Near 0.5, a policy climbing the RM gains nothing by
    being right, only by stating a result at all."""

    rate: float | None
    n_right: int
    n_wrong: int


@dataclass(frozen=True)
class TaskAccuracy:
    """Rule-checker accuracy on one task type."""

    accuracy: float
    n: int


@dataclass(frozen=True)
class AccuracyDifference:
    """Checker accuracy of x minus y on the same verifiable prompts, with its 95% bootstrap interval."""

    difference: float | None
    ci95: list[float] | None
    n_prompts: int


@dataclass(frozen=True)
class Decoding:
    """How the compared answers were drawn: temperature 0 is greedy (one answer per prompt)."""

    temperature: float
    samples_per_prompt: int

    @property
    def label(self) -> str:
        if self.temperature == 0:
            return "greedy"
        return f"sampled at temperature {self.temperature:g}, {self.samples_per_prompt} answers per prompt"


@dataclass(frozen=True)
class WinRate:
    """How often x's answer beats y's (1 win, 0.5 tie, 0 loss per prompt), with its 95% interval."""

    rate: float | None
    ci95: list[float] | None
    n: int
    wins: int
    ties: int
    losses: int


@dataclass(frozen=True)
class JudgeWinRate(WinRate):
    """The pairwise judge's win rate, and how it saw the pairs."""

    judge: str = ""
    x_shown_first_fraction: float = math.nan
    # A judge without position bias picks A in about half of its decisive verdicts (None: no decisive verdict).
    a_picked_fraction: float | None = None


@dataclass(frozen=True)
class PairWinRates:
    """x vs y under each judge."""

    reward_model: WinRate
    rule_checker: WinRate  # verifiable prompts only
    pairwise_judge: JudgeWinRate

    def by_judge(self) -> dict[str, WinRate]:
        return {key: getattr(self, key) for key in JUDGE_KEYS}


@dataclass(frozen=True)
class KlEstimate:
    """KL(PPO || SFT) in nats per answer, on answers sampled from PPO at temperature 1."""

    mean: float
    ci95: list[float]
    per_token: float
    n_samples: int


@dataclass(frozen=True)
class SpotChecks:
    """Rows for the reward-hacking spot checks (see `pipeline.evaluation.metrics.spot_checks`)."""

    top_ppo_by_rm: list[dict[str, Any]]
    rm_checker_disagreements: list[dict[str, Any]]
    failed_but_high_rm: list[dict[str, Any]]


@dataclass(frozen=True)
class Judgement:
    """One pairwise verdict, mapped back from the A/B positions to the models (a line of judgements.jsonl)."""

    pair: str
    prompt: str
    x_shown_as: str
    winner_position: str
    winner_model: str
    outcome_for_x: float
    reason: str


@dataclass(frozen=True)
class EvaluationResult:
    """The comparison of the models' answers drawn one way (`decoding`); with sampling, also the greedy one."""

    n_prompts: int
    n_verifiable: int
    judge: str
    models: dict[str, ModelMetrics]
    win_rates: dict[str, PairWinRates]  # by pair_key(x, y), in PAIRS order
    kl: KlEstimate | None  # None: PPO and SFT do not share a tokenizer
    spot_checks: SpotChecks
    judgements: list[Judgement]
    answers: dict[str, list[Answer]]
    decoding: Decoding = Decoding(temperature=0.0, samples_per_prompt=1)
    checker_accuracy_difference: dict[str, AccuracyDifference] = field(default_factory=dict)  # by pair_key
    greedy: EvaluationResult | None = None  # the same comparison on greedy answers
    kl_bound: float | None = None  # set by the asset: the bound PPO trained under (its ppo_summary.json)
    # Per model: evaluation prompts longer than its context window leaves room for, cut from the left.
    prompts_truncated: dict[str, int] = field(default_factory=dict)
    # Set by the asset: the artifacts evaluated, and the settings used.
    inputs: dict[str, str] | None = None
    settings: dict[str, Any] | None = None

    def summary_dict(self) -> dict[str, Any]:
        """The JSON form without the per-answer rows and judge verdicts: what eval.json starts with."""
        summary: dict[str, Any] = {
            "n_prompts": self.n_prompts,
            "n_verifiable": self.n_verifiable,
            "judge": self.judge,
            "models": {name: asdict(metrics) for name, metrics in self.models.items()},
            "win_rates": {pair: asdict(rates) for pair, rates in self.win_rates.items()},
            "kl_ppo_vs_sft": self.kl.mean if self.kl else None,
            "kl_ppo_vs_sft_ci95": self.kl.ci95 if self.kl else None,
            "kl_ppo_vs_sft_per_token": self.kl.per_token if self.kl else None,
            "kl_bound": self.kl_bound,
            "decoding": {**asdict(self.decoding), "label": self.decoding.label},
            "checker_accuracy_difference": {pair: asdict(d) for pair, d in self.checker_accuracy_difference.items()},
            "length_ratio_ppo_vs_sft": self.length_ratio("ppo", "sft"),
            "spot_checks": asdict(self.spot_checks),
            "prompts_truncated": dict(self.prompts_truncated),
        }
        if self.greedy is not None:
            summary["greedy"] = self.greedy.summary_dict()
        if self.kl is not None:
            summary["kl_n_samples"] = self.kl.n_samples
        if self.inputs is not None:
            summary["inputs"] = dict(self.inputs)
        if self.settings is not None:
            summary["settings"] = dict(self.settings)
        return summary

    def length_ratio(self, x: str, y: str) -> float | None:
        """Mean answer length (tokens) of x over y's."""
        x_length, y_length = self.models[x].mean_length, self.models[y].mean_length
        return x_length / y_length if y_length else None

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready data, per-answer rows and judge verdicts included."""
        return {
            **self.summary_dict(),
            "judgements": [asdict(judgement) for judgement in self.judgements],
            "answers": {name: [answer.to_dict() for answer in rows] for name, rows in self.answers.items()},
        }
