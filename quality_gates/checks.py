"""The quality gates as Dagster asset checks: blocking, ERROR severity, thresholds in check config.

Every check is a thin wrapper around a plain function in `quality_gates/`, which gets the check's
config narrowed to its settings model (`pipeline.settings.settings_from`). Thresholds are the
check's run config (its op is named `<asset>_<check>`), for example:

    ops:
      sft_data_dedup: {config: {near_duplicate_threshold: 0.9}}
      preference_data_length_bias: {config: {max_fraction_chosen_longer: 0.8}}
      reward_model_rm_margin: {config: {min_held_out_accuracy: 0.6}}
      ppo_policy_ppo_guard: {config: {max_response_length_ratio: 2.0, severity: WARN}}

A failing check records counts and the first offending rows (markdown tables; rows are line
numbers of the asset's `data.jsonl`) in its metadata. `quality_gate_checks(asset_keys)` builds the
checks whose assets are defined, so a gate on an asset that does not exist yet is simply absent.
A gate whose inputs, config and code did not change re-emits its last verdict (`quality_gates.reuse`).
"""

import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.data.records import load_data, read_jsonl
from pipeline.evaluation.markdown import markdown_table
from pipeline.orchestration.resources import ArtifactStoreResource
from pipeline.settings import settings_from
from pipeline.storage.contract import DATA_FILE, PPO_METRICS_FILE, PPO_SUMMARY_FILE, RM_EVAL_FILE
from quality_gates.dedup import DedupSettings, flag_duplicates
from quality_gates.leak import LeakSettings, flag_eval_leaks
from quality_gates.length_bias import (
    LengthBiasSettings,
    length_bias_violations,
    measure_length_bias,
    most_length_biased_pairs,
)
from quality_gates.model_gates import (
    PpoGuardSettings,
    RewardMarginSettings,
    gate_severity,
    kl_bound_for,
    ppo_guard_violations,
    reward_margin_violations,
    steps_beyond_kl_bound,
)
from quality_gates.reuse import reusable_gate
from quality_gates.text import TRAINING_TEXT_FIELDS

FIRST_ROWS = 10  # offending rows shown in a failing check's metadata

DATA_ASSETS = ("sft_data", "preference_data", "ppo_prompts", "eval_prompts")


class DedupConfig(dg.Config, DedupSettings):
    pass


class EvalLeakConfig(dg.Config, LeakSettings):
    pass


class LengthBiasConfig(dg.Config, LengthBiasSettings):
    pass


class RewardMarginConfig(dg.Config, RewardMarginSettings):
    pass


class PpoGuardConfig(dg.Config, PpoGuardSettings):
    pass


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(rows[:FIRST_ROWS], columns=columns, max_chars=160))


def _summary(context: dg.AssetCheckExecutionContext, problems: list[str], passing: str) -> str:
    """The check's one-line description (what failed, or the measured values), also logged."""
    text = "; ".join(problems) or passing
    context.log.info(f"{context.check_specs[0].key.to_user_string()}: {text}")
    return text


def _result(passed: bool, summary: str, metadata: dict[str, Any], severity: str = "ERROR") -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity(severity),
        description=summary,
        metadata=metadata,
    )


def dedup_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_name, name="dedup", blocking=True, description=(
        "No exact duplicates after normalising case, whitespace and punctuation, and no near duplicates "
        "(every compared field's word-bigram Jaccard at or above near_duplicate_threshold)."
    ))
    @reusable_gate
    def _dedup(context: dg.AssetCheckExecutionContext, config: DedupConfig, data: Path) -> dg.AssetCheckResult:
        records = load_data(data)
        report = flag_duplicates(records, TRAINING_TEXT_FIELDS[asset_name], settings_from(config, DedupSettings))
        fields = report.fields
        passed = len(report.exact) <= config.max_exact_duplicates and len(report.near) <= config.max_near_duplicates
        summary = (
            f"{len(report.exact)} exact and {len(report.near)} near-duplicate records among {len(records)} "
            f"(compared: {', '.join(fields)}; near threshold {config.near_duplicate_threshold})"
        )
        context.log.info(f"{asset_name} dedup: {summary}")
        metadata: dict[str, Any] = {
            "n_records": len(records),
            "n_exact_duplicates": len(report.exact),
            "n_near_duplicates": len(report.near),
            "compared_fields": ", ".join(fields),
            "near_duplicate_threshold": config.near_duplicate_threshold,
            "data_file": dg.MetadataValue.path(str(Path(data) / DATA_FILE)),
        }
        if report.exact:
            metadata["exact_duplicates"] = _table(report.exact)
        if report.near:
            metadata["near_duplicates"] = _table(report.near)
        return _result(passed, summary, metadata)

    return _dedup


def eval_leak_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_name, name="eval_leak", blocking=True,
        additional_ins={"eval_prompts": dg.AssetIn("eval_prompts")},
        description=(
            "No evaluation prompt in the training data: normalised exact match of the prompt, a shared "
            "13-word sequence in any text field (GPT-3 contamination test), or a short eval prompt contained whole."
        ),
    )
    @reusable_gate
    def _eval_leak(
        context: dg.AssetCheckExecutionContext, config: EvalLeakConfig, data: Path, eval_prompts: Path
    ) -> dg.AssetCheckResult:
        records = load_data(data)
        evaluation = [r["prompt"] for r in load_data(eval_prompts)]
        leaks = flag_eval_leaks(records, TRAINING_TEXT_FIELDS[asset_name], evaluation, settings_from(config, LeakSettings))
        passed = len(leaks) <= config.max_leaked_records
        summary = f"{len(leaks)} of {len(records)} training records contain one of {len(evaluation)} evaluation prompts"
        context.log.info(f"{asset_name} eval_leak: {summary}")
        metadata: dict[str, Any] = {
            "n_leaked_records": len(leaks),
            "n_records": len(records),
            "n_eval_prompts": len(evaluation),
            "ngram_words": config.ngram_words,
            "data_file": dg.MetadataValue.path(str(Path(data) / DATA_FILE)),
        }
        if leaks:
            metadata["leaked_rows"] = _table(leaks, ("row", "field", "match", "eval_prompt", "training_text"))
        return _result(passed, summary, metadata)

    return _eval_leak


@dg.asset_check(asset="preference_data", name="length_bias", blocking=True, description=(
    "Answer length alone must not predict the preference label: the share of pairs preferring the longer "
    "answer and the correlation of the label with the log length ratio stay within bounds."
))
@reusable_gate
def length_bias_check(context: dg.AssetCheckExecutionContext, config: LengthBiasConfig, data: Path) -> dg.AssetCheckResult:
    pairs = load_data(data)
    stats = measure_length_bias(pairs)
    problems = length_bias_violations(stats, settings_from(config, LengthBiasSettings))
    summary = _summary(context, problems, (
        f"fraction_chosen_longer={stats['fraction_chosen_longer']:.3f}, "
        f"length_label_correlation={stats['length_label_correlation']:.3f} within bounds"
    ))
    metadata: dict[str, Any] = {
        **{k: v for k, v in stats.items()},
        "max_fraction_chosen_longer": config.max_fraction_chosen_longer,
        "max_abs_length_label_correlation": config.max_abs_length_label_correlation,
    }
    if problems:
        metadata["most_length_biased_pairs"] = _table(
            most_length_biased_pairs(pairs, FIRST_ROWS),
            ("row", "chosen_chars", "rejected_chars", "prompt", "chosen", "rejected"),
        )
    return _result(not problems, summary, metadata)


@dg.asset_check(asset="reward_model", name="rm_margin", blocking=True, description=(
    "The reward model's held-out accuracy and mean margin are high enough and its reward does not track "
    "response length (from rm_eval.json)."
))
@reusable_gate
def rm_margin_check(context: dg.AssetCheckExecutionContext, config: RewardMarginConfig, model_dir: Path) -> dg.AssetCheckResult:
    rm_eval = json.loads((Path(model_dir) / RM_EVAL_FILE).read_text())
    problems = reward_margin_violations(rm_eval, settings_from(config, RewardMarginSettings))
    n_held_out = rm_eval.get("n_held_out")
    severity = gate_severity(problems, "ERROR", n_held_out, config.min_held_out_pairs, "held-out pairs")
    summary = _summary(context, problems, (
        f"held_out_accuracy={rm_eval['held_out_accuracy']:.3f}, mean_margin={rm_eval['mean_margin']:.3f}, "
        f"reward_length_correlation={rm_eval['reward_length_correlation']:.3f} within bounds"
    ))
    metadata: dict[str, Any] = {
        "held_out_accuracy": rm_eval["held_out_accuracy"],
        "mean_margin": rm_eval["mean_margin"],
        "reward_length_correlation": rm_eval["reward_length_correlation"],
        "n_held_out": n_held_out,
        **config.model_dump(),
        "rm_eval": dg.MetadataValue.path(str(Path(model_dir) / RM_EVAL_FILE)),
    }
    if problems:
        if rm_eval.get("accuracy_by_failure_mode"):
            metadata["accuracy_by_failure_mode"] = _table(
                [{"failure_mode": m, "accuracy": a} for m, a in rm_eval["accuracy_by_failure_mode"].items()]
            )
        if rm_eval.get("examples"):
            metadata["held_out_examples"] = _table(rm_eval["examples"])
    return _result(not problems, summary, metadata, severity=severity)


@dg.asset_check(asset="ppo_policy", name="ppo_guard", blocking=True, description=(
    "PPO stayed near the SFT policy: mean KL to SFT under the bound and response length not drifting "
    "(ratio of PPO to SFT mean response length within bounds). Severity is configurable."
))
@reusable_gate
def ppo_guard_check(context: dg.AssetCheckExecutionContext, config: PpoGuardConfig, policy_dir: Path) -> dg.AssetCheckResult:
    summary_file = Path(policy_dir) / PPO_SUMMARY_FILE
    if not summary_file.exists():
        raise dg.Failure(f"ppo_policy artifact {policy_dir} has no {PPO_SUMMARY_FILE}; the guard has nothing to check")
    summary = json.loads(summary_file.read_text())
    settings = settings_from(config, PpoGuardSettings)
    problems = ppo_guard_violations(summary, settings)
    bound = kl_bound_for(summary, settings)
    n_answers = summary.get("n_eval_answers")
    severity = gate_severity(problems, config.severity, n_answers, config.min_eval_answers, "evaluation answers")
    text = _summary(context, problems, (
        f"kl_to_sft={summary['kl_to_sft']:.3f} <= {bound:.3f}, "
        f"response_length_ratio={summary['response_length_ratio']:.3f} within bounds"
    ))
    metadata: dict[str, Any] = {
        "kl_to_sft": summary["kl_to_sft"],
        "kl_bound": bound,
        "response_length_ratio": summary["response_length_ratio"],
        "n_eval_answers": n_answers,
        "max_response_length_ratio": config.max_response_length_ratio,
        "min_response_length_ratio": config.min_response_length_ratio,
        "ppo_summary": dg.MetadataValue.path(str(summary_file)),
    }
    metrics_file = Path(policy_dir) / PPO_METRICS_FILE
    if problems and metrics_file.exists():
        metadata["steps_beyond_kl_bound"] = _table(steps_beyond_kl_bound(read_jsonl(metrics_file), bound, FIRST_ROWS))
    return _result(not problems, text, metadata, severity=severity)


def expectations_check(asset_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_name, name="expectations", blocking=True, description=(
        "The asset's Great Expectations suite (fields present, non-null, lengths in bounds, unique records); "
        "Data Docs HTML under <artifacts root>/data_docs/."
    ))
    @reusable_gate
    def _expectations(
        context: dg.AssetCheckExecutionContext, artifacts: ArtifactStoreResource, data: Path
    ) -> dg.AssetCheckResult:
        from quality_gates.expectations import DATA_DOCS_INDEX, validate_with_expectations

        records = load_data(data)
        with artifacts.store().stage("data_docs") as staged:
            outcome = validate_with_expectations(records, asset_name, staged.path, FIRST_ROWS)
        index_html = staged.path / DATA_DOCS_INDEX
        failed = [r for r in outcome["results"] if not r["success"]]
        summary = (
            f"{len(outcome['results']) - len(failed)} of {len(outcome['results'])} expectations met; Data Docs: {index_html}"
        )
        context.log.info(f"{asset_name} expectations: {summary}")
        metadata: dict[str, Any] = {
            "n_expectations": len(outcome["results"]),
            "n_failed_expectations": len(failed),
            "data_docs": dg.MetadataValue.path(str(index_html)),
            "results": dg.MetadataValue.md(markdown_table(outcome["results"], max_chars=80)),
        }
        if outcome["offending_rows"]:
            metadata["offending_rows"] = _table(outcome["offending_rows"])
        return _result(outcome["success"], summary, metadata)

    return _expectations


# Each gate: the assets it needs to exist (target first) and how to build it.
_GATES: tuple[tuple[tuple[str, ...], Callable[[], dg.AssetChecksDefinition]], ...] = (
    *(((name,), lambda name=name: dedup_check(name)) for name in TRAINING_TEXT_FIELDS),
    *(((name, "eval_prompts"), lambda name=name: eval_leak_check(name)) for name in TRAINING_TEXT_FIELDS),
    *(((name,), lambda name=name: expectations_check(name)) for name in DATA_ASSETS),
    (("preference_data",), lambda: length_bias_check),
    (("reward_model",), lambda: rm_margin_check),
    (("ppo_policy",), lambda: ppo_guard_check),
)


@functools.cache
def all_gate_check_keys() -> frozenset[dg.AssetCheckKey]:
    """The key of every gate this module can build, whichever assets are defined."""
    every_asset = {name for needed, _ in _GATES for name in needed}
    return frozenset(key for check in quality_gate_checks(every_asset) for key in check.check_keys)


def quality_gate_checks(assets: Iterable[Any]) -> list[dg.AssetChecksDefinition]:
    """The gate checks whose target and inputs are among `assets` (asset definitions, specs or keys)."""
    present = set()
    for asset in assets:
        keys = getattr(asset, "keys", None) or [getattr(asset, "key", asset)]
        present.update(dg.AssetKey.from_coercible(k).to_user_string() for k in keys)
    return [build() for needed, build in _GATES if set(needed) <= present]
