"""The evaluation report's files: `eval.json`, `final_eval.md`, `report.html` and PNG plots.

The markdown and the HTML page are rendered from one list of sections (text, tables, figures), so
they always say the same thing. Plots use matplotlib's Agg canvas directly: no display, no global
pyplot state, safe in a Dagster worker.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluation.markdown import markdown_table
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

MODELS = ("base", "sft", "ppo")  # the models every report compares, in eval.json's `models`

REPORT_TITLE = "Evaluation report: base vs SFT vs PPO"
SECTION_TITLES = (
    "Headline",
    "Per-model metrics",
    "Win rates",
    "KL of PPO to SFT",
    "Response lengths",
    "PPO training curves",
    "Spot checks: highest-reward PPO answers",
    "Spot checks: reward model vs rule checker (reward-hacking candidates)",
    "Judge reasons",
    "Compared with the previous report",
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


def plot_training_curves(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Reward, KL and response length per PPO step; False (and no file) when nothing was logged."""
    panels = [
        ("reward", ("rm_score", "total_reward")),
        ("KL to reference", ("kl",)),
        ("response length (tokens)", ("response_length",)),
    ]
    if not any(isinstance(r.get(k), (int, float)) for r in rows for _, keys in panels for k in keys):
        return False
    figure = _new_figure(12, 3.4)
    axes = figure.subplots(1, len(panels))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return True


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


def plot_win_rates(win_rates: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> None:
    """Grouped bars per model pair, one bar per judge, with 95% interval whiskers and the 0.5 line."""
    pairs = list(win_rates)
    judges = list(JUDGE_LABELS)
    figure = _new_figure(7, 3.6)
    ax = figure.subplots()
    width = 0.8 / len(judges)
    for j, judge in enumerate(judges):
        xs, heights, errors = [], [], [[], []]
        for i, pair in enumerate(pairs):
            entry = win_rates[pair].get(judge, {})
            if entry.get("rate") is None:
                continue
            xs.append(i + (j - (len(judges) - 1) / 2) * width)
            heights.append(entry["rate"])
            low, high = entry["ci95"]
            errors[0].append(max(0.0, entry["rate"] - low))
            errors[1].append(max(0.0, high - entry["rate"]))
        if xs:
            ax.bar(xs, heights, width=width, yerr=errors, capsize=3, label=JUDGE_LABELS[judge])
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(pairs)), [p.replace("_vs_", " vs ") for p in pairs])
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("win rate (ties count half)")
    ax.legend(fontsize=8, loc="upper center", ncol=len(judges), frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


# --- the report's content ----------------------------------------------------------------------


def assessment(result: Mapping[str, Any]) -> str:
    """One sentence: did RLHF help, hurt, or hack the reward (PPO vs SFT, by the intervals)."""
    ppo_vs_sft = result["win_rates"]["ppo_vs_sft"]
    rm, checker = ppo_vs_sft["reward_model"], ppo_vs_sft["rule_checker"]
    rm_better = rm["ci95"] is not None and rm["ci95"][0] > 0.5
    rm_worse = rm["ci95"] is not None and rm["ci95"][1] < 0.5
    checker_worse = checker["ci95"] is not None and checker["ci95"][1] < 0.5
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


def _win_rate_rows(win_rates: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for pair, judges in win_rates.items():
        for judge, entry in judges.items():
            label = JUDGE_LABELS.get(judge, judge) + (f" ({entry['judge']})" if entry.get("judge") else "")
            rows.append({
                "pair": pair, "judge": label, "win rate": fmt(entry["rate"]), "95% CI": fmt_ci(entry["ci95"]),
                "wins / ties / losses": f"{entry['wins']} / {entry['ties']} / {entry['losses']}", "n": entry["n"],
            })
    return rows


def build_sections(
    result: Mapping[str, Any],
    figures: Mapping[str, str | None],
    training_note: str | None,
    comparison: Mapping[str, Any] | None,
) -> list[Section]:
    models, win_rates = result["models"], result["win_rates"]
    ppo_vs_sft = win_rates["ppo_vs_sft"]
    headline = Section(SECTION_TITLES[0], [
        result.get("assessment") or assessment(result),
        "PPO vs SFT win rate: reward model {} {}, rule checker {} {} (n={}), {} judge {} {}.".format(
            fmt(ppo_vs_sft["reward_model"]["rate"]), fmt_ci(ppo_vs_sft["reward_model"]["ci95"]),
            fmt(ppo_vs_sft["rule_checker"]["rate"]), fmt_ci(ppo_vs_sft["rule_checker"]["ci95"]),
            ppo_vs_sft["rule_checker"]["n"],
            result["judge"], fmt(ppo_vs_sft["pairwise_judge"]["rate"]), fmt_ci(ppo_vs_sft["pairwise_judge"]["ci95"]),
        ),
        "Checker accuracy: " + ", ".join(f"{m} {fmt(models[m]['checker_accuracy'])}" for m in MODELS)
        + f" (on {result['n_verifiable']} verifiable prompts of {result['n_prompts']}).",
        f"KL(PPO || SFT): {fmt(result['kl_ppo_vs_sft'])} nats per answer {fmt_ci(result['kl_ppo_vs_sft_ci95'])}.",
    ])
    per_model = Section(SECTION_TITLES[1], [
        "Means over the evaluation prompts with 95% percentile-bootstrap intervals (prompts resampled). "
        "Format adherence: the answer ends with EOS and echoes no chat role marker.",
        Table([
            {
                "model": m,
                "RM score": fmt(models[m]["rm_score_mean"]), "RM 95% CI": fmt_ci(models[m]["rm_score_ci95"]),
                "checker acc.": fmt(models[m]["checker_accuracy"]), "checker 95% CI": fmt_ci(models[m]["checker_accuracy_ci95"]),
                "format": fmt(models[m]["format_adherence"]), "ends w/ EOS": fmt(models[m]["ends_with_eos_rate"]),
                "role markers": fmt(models[m]["role_marker_rate"]), "mean length": fmt(models[m]["mean_length"], 1),
                "corr(RM, length)": fmt(models[m]["rm_length_correlation"]),
            }
            for m in MODELS
        ]),
    ])
    wins = Section(SECTION_TITLES[2], [
        "Rate at which the first model's answer beats the second's on the same prompt; ties count half. "
        "The rule checker judges only verifiable prompts. The pairwise judge saw each pair once, in a "
        "random (seeded) A/B order.",
        Table(_win_rate_rows(win_rates)),
        Figure(figures["win_rates"], "Win rates with 95% intervals; the dashed line is parity."),
    ])
    kl_blocks: list[str | Table | Figure] = []
    if result["kl_ppo_vs_sft"] is None:
        kl_blocks.append("Not computed (PPO and SFT do not share a tokenizer).")
    else:
        kl_blocks.append(
            f"KL(PPO || SFT) = {fmt(result['kl_ppo_vs_sft'])} nats per answer, 95% CI {fmt_ci(result['kl_ppo_vs_sft_ci95'])}; "
            f"{fmt(result['kl_ppo_vs_sft_per_token'], 4)} nats per token. Estimated on {result.get('kl_n_samples')} "
            "answers sampled from PPO (temperature 1) as the mean of log pi_ppo(y|x) - log pi_sft(y|x)."
        )
    kl = Section(SECTION_TITLES[3], kl_blocks)
    lengths = Section(SECTION_TITLES[4], [
        Table([
            {"model": m, "mean": fmt(models[m]["mean_length"], 1), **{k: fmt(v, 0) for k, v in models[m]["length_tokens"].items()},
             "mean chars": fmt(models[m]["mean_length_chars"], 0), "corr(RM, length)": fmt(models[m]["rm_length_correlation"])}
            for m in MODELS
        ]),
        Figure(figures["length_histograms"], "Response length (tokens) per model."),
    ])
    training_blocks: list[str | Table | Figure] = []
    summary = result.get("ppo_training") or {}
    if figures.get("training_curves"):
        training_blocks.append(f"{summary.get('n_steps', 0)} PPO steps from `{PPO_METRICS_FILE}`.")
        training_blocks.append(Figure(figures["training_curves"], "PPO training: reward, KL and response length per step."))
    if training_note:
        training_blocks.append(f"Note: {training_note}.")
    training = Section(SECTION_TITLES[5], training_blocks or ["No PPO training metrics were logged."])
    spots = result["spot_checks"]
    top = Section(SECTION_TITLES[6], [
        "The PPO answers the reward model likes most: do they deserve it?",
        Table(spots["top_ppo_by_rm"], ["rm_score", "checker", "n_tokens", "prompt", "response"], max_chars=240),
    ])
    disagreement_blocks: list[str | Table | Figure] = [
        "Pairs of answers to one verifiable prompt where the rule checker passes one answer and fails the other, "
        "but the reward model scores the failing answer higher (largest margin first).",
        Table(spots["rm_checker_disagreements"],
              ["rm_margin", "prompt", "rm_preferred_model", "rm_preferred_answer", "checker_passed_model", "checker_passed_answer"],
              max_chars=200),
        "Answers that fail the rule checker yet score above the median passing answer:",
        Table(spots["failed_but_high_rm"], ["model", "rm_score", "n_tokens", "prompt", "response"], max_chars=200),
    ]
    disagreements = Section(SECTION_TITLES[7], disagreement_blocks)
    reasons = Section(SECTION_TITLES[8], [
        f"A sample of the {result['judge']} judge's verdicts on PPO vs SFT (all verdicts: `{JUDGEMENTS_FILE}`). "
        f"Share of decisive verdicts that picked position A: "
        f"{fmt(ppo_vs_sft['pairwise_judge'].get('a_picked_fraction'))} (0.5 = no position bias).",
        Table([
            {"prompt": j["prompt"], "PPO shown as": j["x_shown_as"], "verdict": j["winner_position"],
             "winner": j["winner_model"], "reason": j["reason"]}
            for j in result.get("judgements", []) if j["pair"] == "ppo_vs_sft"
        ][:8], max_chars=200),
    ])
    if comparison is None:
        previous_blocks: list[str | Table | Figure] = ["No previous report to compare with."]
    else:
        previous_blocks = [f"Previous report: `{comparison.get('previous_path')}`."]
        if not comparison["same_reward_model"]:
            previous_blocks.append("The reward model changed since then, so reward-model scores and win rates are not compared.")
        if comparison["regressions"]:
            previous_blocks.append("Regressions beyond the 95% intervals:")
            previous_blocks.append(Table([
                {"metric": r["metric"], "previous": fmt(r["previous"]), "previous 95% CI": fmt_ci(r["previous_ci95"]),
                 "current": fmt(r["current"]), "current 95% CI": fmt_ci(r["current_ci95"])}
                for r in comparison["regressions"]
            ]))
        else:
            previous_blocks.append("No metric got worse beyond its 95% interval.")
    previous = Section(SECTION_TITLES[9], previous_blocks)
    return [headline, per_model, wins, kl, lengths, training, top, disagreements, reasons, previous]


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
    result: dict[str, Any],
    out_dir: Path,
    training_rows: Sequence[Mapping[str, Any]],
    training_note: str | None = None,
    comparison: Mapping[str, Any] | None = None,
) -> str:
    """Write every report file into `out_dir`; returns the markdown (for Dagster metadata).

    `result` is `pipeline.evaluation.evaluate.evaluate`'s output; its per-answer rows and judge verdicts go to
    JSONL files, everything else to eval.json.
    """
    out_dir = Path(out_dir)
    (out_dir / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    result["ppo_training"] = training_summary(training_rows)
    result["assessment"] = assessment(result)
    if comparison is not None:
        result["previous_report"] = {"path": comparison.get("previous_path"), "same_reward_model": comparison["same_reward_model"],
                                     "regressions": comparison["regressions"]}
    figures = {
        "win_rates": WIN_RATES_PNG,
        "length_histograms": LENGTH_HISTOGRAMS_PNG,
        "training_curves": TRAINING_CURVES_PNG if plot_training_curves(training_rows, out_dir / TRAINING_CURVES_PNG) else None,
    }
    plot_win_rates(result["win_rates"], out_dir / WIN_RATES_PNG)
    plot_length_histograms({m: [a["n_tokens"] for a in result["answers"][m]] for m in MODELS}, out_dir / LENGTH_HISTOGRAMS_PNG)

    sections = build_sections(result, figures, training_note, comparison)
    markdown = render_markdown(REPORT_TITLE, sections)
    (out_dir / REPORT_MD).write_text(markdown, encoding="utf-8")
    (out_dir / REPORT_HTML).write_text(render_html(REPORT_TITLE, sections), encoding="utf-8")
    with open(out_dir / ANSWERS_FILE, "w", encoding="utf-8") as handle:
        for model in MODELS:
            for answer in result["answers"][model]:
                handle.write(json.dumps({"model": model, **answer}, ensure_ascii=False) + "\n")
    with open(out_dir / JUDGEMENTS_FILE, "w", encoding="utf-8") as handle:
        for judgement in result["judgements"]:
            handle.write(json.dumps(judgement, ensure_ascii=False) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("answers", "judgements")}
    (out_dir / EVAL_JSON).write_text(json.dumps(_nan_to_none(summary), indent=2, allow_nan=False, default=str) + "\n")
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
