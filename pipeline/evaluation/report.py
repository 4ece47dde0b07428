"""The evaluation report's files: `eval.json`, `final_eval.md`, `report.html` and PNG plots.

The markdown and the HTML page are rendered from one list of sections (text, tables, figures), so
they always say the same thing; each section is built by its own function from the typed
`EvaluationResult`, by name. Plots use matplotlib's Agg canvas directly: no display, no global
pyplot state, safe in a Dagster worker. No torch here: the regression check imports this module on
every run.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluation.markdown import markdown_table
from pipeline.evaluation.result import JUDGE_KEYS, MODELS, EvaluationResult, PairWinRates
from pipeline.training.curves import REPORT_PANELS, plot_training_curves
from pipeline.storage.contract import (
    ANSWERS_FILE,
    EVAL_JSON,
    JUDGEMENTS_FILE,
    LENGTH_HISTOGRAMS_PNG,
    PLOTS_DIR,
    PPO_METRICS_FILE,
    REPORT_HTML,
    REPORT_MD,
    TRAINING_CURVES_PNG,
    WIN_RATES_PNG,
)

logger = logging.getLogger(__name__)

REPORT_TITLE = "Evaluation report: base vs SFT vs PPO"
HEADLINE = "Headline"
PER_MODEL_METRICS = "Per-model metrics"
WIN_RATES = "Win rates"
TASK_ACCURACY = "Rule-checker accuracy by task type"
GREEDY = "Greedy answers"
KL_TO_SFT = "KL of PPO to SFT"
RESPONSE_LENGTHS = "Response lengths"
TRAINING_CURVES = "PPO training curves"
TOP_PPO_ANSWERS = "Spot checks: highest-reward PPO answers"
RM_VS_CHECKER = "Spot checks: reward model vs rule checker (reward-hacking candidates)"
JUDGE_REASONS = "Judge reasons"
PREVIOUS_REPORT = "Compared with the previous report"
SECTION_TITLES = (
    HEADLINE, PER_MODEL_METRICS, WIN_RATES, TASK_ACCURACY, GREEDY, KL_TO_SFT, RESPONSE_LENGTHS, TRAINING_CURVES,
    TOP_PPO_ANSWERS, RM_VS_CHECKER, JUDGE_REASONS, PREVIOUS_REPORT,
)
JUDGE_LABELS = {"reward_model": "reward model", "rule_checker": "rule checker", "pairwise_judge": "pairwise judge"}


@dataclass
class Table:
    rows: Sequence[Mapping[str, Any]]
    columns: Sequence[str] | None = None
    max_chars: int = 160


@dataclass
class Figure:
    path: str  # relative to the report directory
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return "n/a" if not ci else f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


# --- PPO training metrics ----------------------------------------------------------------------


def read_training_metrics(path: Path | None) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of `ppo_train_metrics.jsonl`, and a note when the file is missing, empty or has bad lines.

    The report must not fail because training logged oddly, so bad lines are skipped and named.
    """
    if path is None or not Path(path).is_file():
        return [], f"no PPO training metrics file at {path}"
    rows, bad_lines = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad_lines.append(number)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad_lines.append(number)
    note = None
    if bad_lines:
        note = f"{path}: skipped unreadable line(s) {bad_lines[:10]}"
        logger.warning(note)
    if not rows:
        note = f"{path} holds no training steps"
    return rows, note


def training_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """First and last value of each logged curve, for eval.json and the headline."""
    summary: dict[str, Any] = {"n_steps": len(rows)}
    for key in ("rm_score", "kl", "total_reward", "response_length", "entropy"):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            summary[key] = {"first": values[0], "last": values[-1]}
    return summary


# --- plots -------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_length_histograms(lengths: Mapping[str, Sequence[int]], path: Path) -> None:
    figure = _new_figure(4 * len(lengths), 3.2)
    axes = figure.subplots(1, len(lengths), sharex=True, sharey=True)
    top = max((max(v) for v in lengths.values() if len(v)), default=1)
    bins = min(30, max(5, int(top) + 1))
    for ax, (name, values) in zip(axes, lengths.items()):
        ax.hist(values, bins=bins, range=(0, top + 1), color="tab:blue", alpha=0.8)
        ax.set_title(f"{name} (mean {sum(values) / max(1, len(values)):.1f})")
        ax.set_xlabel("response length (tokens)")
    axes[0].set_ylabel("answers")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def plot_win_rates(win_rates: Mapping[str, PairWinRates], path: Path) -> None:
    """Grouped bars per model pair, one bar per judge, with 95% interval whiskers and the 0.5 line."""
    pairs = list(win_rates)
    figure = _new_figure(7, 3.6)
    ax = figure.subplots()
    width = 0.8 / len(JUDGE_KEYS)
    for j, judge in enumerate(JUDGE_KEYS):
        xs, heights, errors = [], [], [[], []]
        for i, pair in enumerate(pairs):
            entry = win_rates[pair].by_judge()[judge]
            if entry.rate is None:
                continue
            xs.append(i + (j - (len(JUDGE_KEYS) - 1) / 2) * width)
            heights.append(entry.rate)
            low, high = entry.ci95
            errors[0].append(max(0.0, entry.rate - low))
            errors[1].append(max(0.0, high - entry.rate))
        if xs:
            ax.bar(xs, heights, width=width, yerr=errors, capsize=3, label=JUDGE_LABELS[judge])
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(pairs)), [p.replace("_vs_", " vs ") for p in pairs])
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("win rate (ties count half)")
    ax.legend(fontsize=8, loc="upper center", ncol=len(JUDGE_KEYS), frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


# --- the report's content ----------------------------------------------------------------------


def assessment(result: EvaluationResult) -> str:
    """One sentence: did RLHF help, hurt, or hack the reward (PPO vs SFT, by the intervals)."""
    ppo_vs_sft = result.win_rates["ppo_vs_sft"]
    rm, checker = ppo_vs_sft.reward_model, ppo_vs_sft.rule_checker
    rm_better = rm.ci95 is not None and rm.ci95[0] > 0.5
    rm_worse = rm.ci95 is not None and rm.ci95[1] < 0.5
    checker_worse = checker.ci95 is not None and checker.ci95[1] < 0.5
    if rm_better and checker_worse:
        return ("Possible reward hacking: the reward model prefers PPO over SFT, but the rule checker prefers SFT. "
                "Read the disagreement spot checks.")
    if rm_better:
        return "PPO beats SFT under the reward model, without a significant loss under the rule checker."
    if rm_worse:
        return "PPO scores below SFT under the reward model: PPO did not improve on SFT."
    if checker_worse:
        return "No significant reward-model difference between PPO and SFT, but PPO is worse under the rule checker."
    return "No significant difference between PPO and SFT under the reward model (95% intervals include 0.5)."


def _comparison_lines(result: EvaluationResult) -> list[str]:
    """PPO vs SFT in one comparison: win rates, checker accuracy and its difference, concept match."""
    models, ppo_vs_sft = result.models, result.win_rates["ppo_vs_sft"]
    rm, checker, judge = ppo_vs_sft.reward_model, ppo_vs_sft.rule_checker, ppo_vs_sft.pairwise_judge
    difference = result.checker_accuracy_difference.get("ppo_vs_sft")
    lines = [
        f"PPO vs SFT win rate: reward model {fmt(rm.rate)} {fmt_ci(rm.ci95)}, rule checker {fmt(checker.rate)} "
        f"{fmt_ci(checker.ci95)} (n={checker.n}), {result.judge} judge {fmt(judge.rate)} {fmt_ci(judge.ci95)}.",
        "Checker accuracy: " + ", ".join(f"{m} {fmt(models[m].checker_accuracy)}" for m in MODELS)
        + f" (on {result.n_verifiable} verifiable prompts of {result.n_prompts})"
        + (f"; PPO - SFT {fmt(difference.difference)} {fmt_ci(difference.ci95)}." if difference else "."),
    ]
    if any(models[m].concept_match_rate is not None for m in MODELS):
        lines.append("Answers about the concept asked (explanation prompts): "
                     + ", ".join(f"{m} {fmt(models[m].concept_match_rate)}" for m in MODELS) + ".")
    return lines


def headline_section(result: EvaluationResult) -> Section:
    kl_mean, kl_ci = (result.kl.mean, result.kl.ci95) if result.kl else (None, None)
    blocks: list[str | Table | Figure] = [
        assessment(result),
        f"Answers {result.decoding.label}; intervals are 95% percentile-bootstrap intervals over prompts.",
        *_comparison_lines(result),
        f"KL(PPO || SFT): {fmt(kl_mean)} nats per answer {fmt_ci(kl_ci)}; "
        f"mean length PPO / SFT {fmt(result.length_ratio('ppo', 'sft'))}.",
    ]
    if result.greedy is not None:
        blocks.append("Greedy answers: " + " ".join(_comparison_lines(result.greedy)))
    return Section(HEADLINE, blocks)


def per_model_section(result: EvaluationResult) -> Section:
    rows = []
    for name in MODELS:
        m = result.models[name]
        rows.append({
            "model": name,
            "RM score": fmt(m.rm_score_mean), "RM 95% CI": fmt_ci(m.rm_score_ci95),
            "checker acc.": fmt(m.checker_accuracy), "checker 95% CI": fmt_ci(m.checker_accuracy_ci95),
            "format": fmt(m.format_adherence), "ends w/ EOS": fmt(m.ends_with_eos_rate),
            "role markers": fmt(m.role_marker_rate), "mean length": fmt(m.mean_length, 1),
            "corr(RM, length)": fmt(m.rm_length_correlation),
            "within kind": fmt(m.rm_length_correlation_within_kind),
            "on concept": fmt(m.concept_match_rate), "on-concept 95% CI": fmt_ci(m.concept_match_rate_ci95),
        })
    return Section(PER_MODEL_METRICS, [
        f"Means over the evaluation prompts' answers ({result.decoding.label}) with 95% percentile-bootstrap "
        "intervals (prompts resampled). Format adherence: the answer ends with EOS and echoes no chat role "
        "marker. On concept: the share of answers to explanation prompts that are about the concept asked "
        "(the glossary entry sharing most words with the answer is that concept's). corr(RM, length) over all "
        "answers; within kind: the same correlation within each kind of prompt (each task type, explanations), "
        "so that a kind's longer answers and different scores do not show as a length preference.",
        Table(rows),
    ])


def _rm_separation_line(result: EvaluationResult) -> str:
    separation = {name: result.models[name].rm_right_over_wrong for name in MODELS}
    return (
        "Does the reward model tell a right result from a wrong one? Of the answers that state a result, the share "
        "of (right, wrong) pairs the RM scores right above wrong (0.5 is chance; answers without a result are left "
        "out): " + ", ".join(f"{name} {fmt(s.rate)} ({s.n_right} right, {s.n_wrong} wrong)"
                             for name, s in separation.items() if s is not None)
        + ". Near 0.5, PPO gains on the checker only by stating a result more often, not by stating the right one."
    )


def task_accuracy_section(result: EvaluationResult) -> Section:
    # Every model answers the same prompts, so each has an entry for every task type.
    tasks = sorted(result.models["ppo"].checker_accuracy_by_task)
    if not tasks:
        return Section(TASK_ACCURACY, ["No verifiable prompt with a task type.", _rm_separation_line(result)])
    rows = [
        {"task": task, **{name: fmt(result.models[name].checker_accuracy_by_task[task].accuracy) for name in MODELS},
         "answers per model": result.models["ppo"].checker_accuracy_by_task[task].n}
        for task in tasks
    ]
    return Section(TASK_ACCURACY, [
        f"Share of answers ({result.decoding.label}) the rule checker passes, per task type.", Table(rows),
        _rm_separation_line(result),
    ])


def greedy_section(result: EvaluationResult) -> Section:
    greedy = result.greedy
    if greedy is None:
        return Section(GREEDY, ["The comparison above is the greedy one." if result.decoding.temperature == 0
                                else "Not computed (greedy_comparison is off)."])
    rows = [
        {"model": name, "RM score": fmt(m.rm_score_mean), "checker acc.": fmt(m.checker_accuracy),
         "on concept": fmt(m.concept_match_rate), "format": fmt(m.format_adherence), "mean length": fmt(m.mean_length, 1),
         "corr(RM, length)": fmt(m.rm_length_correlation), "within kind": fmt(m.rm_length_correlation_within_kind)}
        for name, m in greedy.models.items()
    ]
    return Section(GREEDY, [
        "The same comparison on one greedy answer per prompt: what a deterministic deployment of each model says.",
        *_comparison_lines(greedy),
        Table(rows),
        Table(_win_rate_rows(greedy.win_rates)),
    ])


def _win_rate_rows(win_rates: Mapping[str, PairWinRates]) -> list[dict[str, Any]]:
    rows = []
    for pair, judges in win_rates.items():
        for judge, entry in judges.by_judge().items():
            label = JUDGE_LABELS[judge] + (f" ({entry.judge})" if getattr(entry, "judge", None) else "")
            rows.append({
                "pair": pair, "judge": label, "win rate": fmt(entry.rate), "95% CI": fmt_ci(entry.ci95),
                "wins / ties / losses": f"{entry.wins} / {entry.ties} / {entry.losses}", "n": entry.n,
            })
    return rows


def win_rates_section(result: EvaluationResult, figure: str) -> Section:
    rows = _win_rate_rows(result.win_rates)
    return Section(WIN_RATES, [
        f"Rate at which the first model's answer beats the second's on the same prompt ({result.decoding.label}; "
        "with several answers per prompt, the i-th answers are paired); ties count half. "
        "The rule checker judges only verifiable prompts. The pairwise judge saw each pair once, in a "
        "random (seeded) A/B order.",
        Table(rows),
        Figure(figure, "Win rates with 95% intervals; the dashed line is parity."),
    ])


def kl_section(result: EvaluationResult) -> Section:
    kl = result.kl
    if kl is None:
        return Section(KL_TO_SFT, ["Not computed (PPO and SFT do not share a tokenizer)."])
    return Section(KL_TO_SFT, [
        f"KL(PPO || SFT) = {fmt(kl.mean)} nats per answer, 95% CI {fmt_ci(kl.ci95)}; "
        f"{fmt(kl.per_token, 4)} nats per token. Estimated on {kl.n_samples} "
        "answers sampled from PPO (temperature 1) as the mean of log pi_ppo(y|x) - log pi_sft(y|x)."
    ])


def lengths_section(result: EvaluationResult, figure: str) -> Section:
    rows = []
    for name in MODELS:
        m = result.models[name]
        quantiles = {"p10": m.length_tokens.p10, "median": m.length_tokens.median, "p90": m.length_tokens.p90,
                     "max": m.length_tokens.max}
        rows.append({"model": name, "mean": fmt(m.mean_length, 1), **{k: fmt(v, 0) for k, v in quantiles.items()},
                     "mean chars": fmt(m.mean_length_chars, 0), "corr(RM, length)": fmt(m.rm_length_correlation),
                     "within kind": fmt(m.rm_length_correlation_within_kind)})
    return Section(RESPONSE_LENGTHS, [Table(rows), Figure(figure, "Response length (tokens) per model.")])


def training_section(training: Mapping[str, Any], figure: str | None, training_note: str | None) -> Section:
    blocks: list[str | Table | Figure] = []
    if figure:
        blocks.append(f"{training.get('n_steps', 0)} PPO steps from `{PPO_METRICS_FILE}`.")
        blocks.append(Figure(figure, "PPO training: reward, KL and response length per step."))
    if training_note:
        blocks.append(f"Note: {training_note}.")
    return Section(TRAINING_CURVES, blocks or ["No PPO training metrics were logged."])


def top_answers_section(result: EvaluationResult) -> Section:
    return Section(TOP_PPO_ANSWERS, [
        "The PPO answers the reward model likes most: do they deserve it?",
        Table(result.spot_checks.top_ppo_by_rm, ["rm_score", "checker", "n_tokens", "prompt", "response"], max_chars=240),
    ])


def disagreements_section(result: EvaluationResult) -> Section:
    spots = result.spot_checks
    return Section(RM_VS_CHECKER, [
        "Pairs of answers to one verifiable prompt where the rule checker passes one answer and fails the other, "
        "but the reward model scores the failing answer higher (largest margin first).",
        Table(spots.rm_checker_disagreements,
              ["rm_margin", "prompt", "rm_preferred_model", "rm_preferred_answer", "checker_passed_model", "checker_passed_answer"],
              max_chars=200),
        "Answers that fail the rule checker yet score above the median passing answer:",
        Table(spots.failed_but_high_rm, ["model", "rm_score", "n_tokens", "prompt", "response"], max_chars=200),
    ])


def judge_reasons_section(result: EvaluationResult) -> Section:
    judge = result.win_rates["ppo_vs_sft"].pairwise_judge
    return Section(JUDGE_REASONS, [
        f"A sample of the {result.judge} judge's verdicts on PPO vs SFT (all verdicts: `{JUDGEMENTS_FILE}`). "
        f"Share of decisive verdicts that picked position A: "
        f"{fmt(judge.a_picked_fraction)} (0.5 = no position bias).",
        Table([
            {"prompt": j.prompt, "PPO shown as": j.x_shown_as, "verdict": j.winner_position,
             "winner": j.winner_model, "reason": j.reason}
            for j in result.judgements if j.pair == "ppo_vs_sft"
        ][:8], max_chars=200),
    ])


def previous_report_section(comparison: Mapping[str, Any] | None) -> Section:
    if comparison is None:
        return Section(PREVIOUS_REPORT, ["No previous report to compare with."])
    blocks: list[str | Table | Figure] = [f"Previous report: `{comparison.get('previous_path')}`."]
    if not comparison["same_reward_model"]:
        blocks.append("The reward model changed since then, so reward-model scores and win rates are not compared.")
    if comparison["regressions"]:
        blocks.append("Regressions beyond the 95% intervals:")
        blocks.append(Table([
            {"metric": r["metric"], "previous": fmt(r["previous"]), "previous 95% CI": fmt_ci(r["previous_ci95"]),
             "current": fmt(r["current"]), "current 95% CI": fmt_ci(r["current_ci95"])}
            for r in comparison["regressions"]
        ]))
    else:
        blocks.append("No metric got worse beyond its 95% interval.")
    return Section(PREVIOUS_REPORT, blocks)


def build_sections(
    result: EvaluationResult,
    training: Mapping[str, Any],
    figures: Mapping[str, str | None],
    training_note: str | None,
    comparison: Mapping[str, Any] | None,
) -> list[Section]:
    """The report's sections, in SECTION_TITLES order."""
    return [
        headline_section(result),
        per_model_section(result),
        win_rates_section(result, figures["win_rates"]),
        task_accuracy_section(result),
        greedy_section(result),
        kl_section(result),
        lengths_section(result, figures["length_histograms"]),
        training_section(training, figures["training_curves"], training_note),
        top_answers_section(result),
        disagreements_section(result),
        judge_reasons_section(result),
        previous_report_section(comparison),
    ]


def eval_json(
    result: EvaluationResult, training: Mapping[str, Any], comparison: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The content of eval.json: the result without per-answer rows and verdicts, the PPO training
    summary, the one-sentence assessment and, when there is one, the comparison with the previous report."""
    document = {**result.summary_dict(), "ppo_training": dict(training), "assessment": assessment(result)}
    if comparison is not None:
        document["previous_report"] = {"path": comparison.get("previous_path"), "same_reward_model": comparison["same_reward_model"],
                                       "regressions": comparison["regressions"]}
    return document


# --- rendering ---------------------------------------------------------------------------------


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append(markdown_table(list(block.rows), block.columns, max_chars=block.max_chars))
            elif isinstance(block, Figure):
                lines.append(f"![{block.caption}]({block.path})")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    if not table.rows:
        return "<p><em>(no rows)</em></p>"
    columns = list(table.columns or table.rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555;font-size:0.9em}"""


def render_html(title: str, sections: Sequence[Section]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_html_table(block))
            elif isinstance(block, Figure):
                parts.append(f"<figure><img src='{html.escape(block.path)}' alt='{html.escape(block.caption)}'>"
                             f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    result: EvaluationResult,
    out_dir: Path,
    training_rows: Sequence[Mapping[str, Any]],
    training_note: str | None = None,
    comparison: Mapping[str, Any] | None = None,
) -> str:
    """Write every report file into `out_dir`; returns the markdown (for Dagster metadata).

    The per-answer rows and judge verdicts of `result` go to JSONL files, the rest to eval.json.
    """
    out_dir = Path(out_dir)
    (out_dir / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    training = training_summary(training_rows)
    drew_curves = plot_training_curves(training_rows, out_dir / TRAINING_CURVES_PNG, REPORT_PANELS, x_key="step", x_label="PPO step")
    figures = {
        "win_rates": WIN_RATES_PNG,
        "length_histograms": LENGTH_HISTOGRAMS_PNG,
        "training_curves": TRAINING_CURVES_PNG if drew_curves else None,
    }
    plot_win_rates(result.win_rates, out_dir / WIN_RATES_PNG)
    plot_length_histograms({m: [a.n_tokens for a in result.answers[m]] for m in MODELS}, out_dir / LENGTH_HISTOGRAMS_PNG)

    sections = build_sections(result, training, figures, training_note, comparison)
    markdown = render_markdown(REPORT_TITLE, sections)
    (out_dir / REPORT_MD).write_text(markdown, encoding="utf-8")
    (out_dir / REPORT_HTML).write_text(render_html(REPORT_TITLE, sections), encoding="utf-8")
    with open(out_dir / ANSWERS_FILE, "w", encoding="utf-8") as handle:
        for compared in (result, result.greedy):
            for model in MODELS if compared is not None else ():
                for answer in compared.answers[model]:
                    row = {"model": model, "decoding": compared.decoding.label, **answer.to_dict()}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(out_dir / JUDGEMENTS_FILE, "w", encoding="utf-8") as handle:
        for judgement in result.judgements:
            handle.write(json.dumps(asdict(judgement), ensure_ascii=False) + "\n")
    document = eval_json(result, training, comparison)
    (out_dir / EVAL_JSON).write_text(json.dumps(_nan_to_none(document), indent=2, allow_nan=False, default=str) + "\n")
    return markdown


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: an undefined number (e.g. a score of an empty set) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def compare_with_previous(current: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics that got worse beyond their intervals: the current 95% interval lies entirely below
    the previous one (KL: entirely above). RM-based numbers are compared only when both reports used
    the same reward model, since scores from different RMs are on different scales."""
    same_rm = current.get("inputs", {}).get("reward_model") == previous.get("inputs", {}).get("reward_model")
    regressions: list[dict[str, Any]] = []

    def compare(metric: str, now_value, now_ci, before_value, before_ci, higher_is_better: bool = True) -> None:
        if not now_ci or not before_ci or now_value is None or before_value is None:
            return
        worse = now_ci[1] < before_ci[0] if higher_is_better else now_ci[0] > before_ci[1]
        if worse:
            regressions.append({"metric": metric, "previous": before_value, "previous_ci95": list(before_ci),
                                "current": now_value, "current_ci95": list(now_ci)})

    for name in MODELS:
        now, before = current.get("models", {}).get(name), previous.get("models", {}).get(name)
        if not now or not before:
            continue
        fields = ["checker_accuracy", "format_adherence"] + (["rm_score_mean"] if same_rm else [])
        for metric in fields:
            ci_field = "rm_score_ci95" if metric == "rm_score_mean" else f"{metric}_ci95"
            compare(f"models.{name}.{metric}", now.get(metric), now.get(ci_field), before.get(metric), before.get(ci_field))
    for pair, judges in current.get("win_rates", {}).items():
        for judge_key, now in judges.items():
            before = previous.get("win_rates", {}).get(pair, {}).get(judge_key)
            if before is None or (judge_key == "reward_model" and not same_rm):
                continue
            if judge_key == "pairwise_judge" and now.get("judge") != before.get("judge"):
                continue
            compare(f"win_rates.{pair}.{judge_key}", now.get("rate"), now.get("ci95"), before.get("rate"), before.get("ci95"))
    compare("kl_ppo_vs_sft", current.get("kl_ppo_vs_sft"), current.get("kl_ppo_vs_sft_ci95"),
            previous.get("kl_ppo_vs_sft"), previous.get("kl_ppo_vs_sft_ci95"), higher_is_better=False)
    return {"same_reward_model": same_rm, "regressions": regressions}
