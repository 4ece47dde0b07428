"""The evaluation report: base vs SFT vs PPO on the held-out `eval_prompts`, and a WARN check for regressions."""


import dataclasses
import json
from pathlib import Path

import dagster as dg

from pipeline.data.records import load_data
from pipeline.orchestration.execution import gpu_op_tags
from pipeline.orchestration.incremental import reuse_if_unchanged
from pipeline.orchestration.materializations import latest_artifact_paths
from pipeline.orchestration.mlflow_tracking import record_in_mlflow
from pipeline.orchestration.outputs import artifact_output, record_in_dvc
from pipeline.orchestration.resources import ArtifactStoreResource
from pipeline.settings import EvaluationSettings, settings_from
from pipeline.storage.contract import (
    EVAL_JSON,
    LENGTH_HISTOGRAMS_PNG,
    PPO_METRICS_FILE,
    PPO_SUMMARY_FILE,
    REPORT_HTML,
    REPORT_MD,
    TRAINING_CURVES_PNG,
    WIN_RATES_PNG,
)


class EvaluationReportConfig(dg.Config, EvaluationSettings):
    pass


def recent_reports(instance: dg.DagsterInstance, asset_key: dg.AssetKey, limit: int) -> list[Path]:
    """eval.json of the latest `limit` materializations of the report, newest first (missing files skipped)."""
    reports = (path / EVAL_JSON for path in latest_artifact_paths(instance, asset_key, limit))
    return [report for report in reports if report.is_file()]


@dg.asset(group_name="evaluation", code_version="1", pool="gpu", op_tags=gpu_op_tags(), kinds={"pytorch"})
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    base_model: Path,
    sft_checkpoint: Path,
    ppo_policy: Path,
    reward_model: Path,
    eval_prompts: Path,
    artifacts: ArtifactStoreResource,
) -> dg.Output:
    """`final_eval.md`, `report.html` with plots, `eval.json`: RM scores, checker accuracy, win rates by three
    judges with 95% intervals, KL of PPO to SFT, and reward-hacking spot checks."""
    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.evaluation.judges import build_judge
    from pipeline.evaluation.report import assessment, compare_with_previous, read_training_metrics, write_report

    settings = settings_from(config, EvaluationSettings)
    records = load_data(eval_prompts)
    judge = build_judge(settings.judge_model, settings.custom_judge, settings.judge_max_new_tokens, settings.device)
    # Looked up before this run's materialization exists, so the latest one is the previous report.
    previous = recent_reports(context.instance, context.asset_key, limit=1)
    result = evaluate(
        {"base": base_model, "sft": sft_checkpoint, "ppo": ppo_policy}, reward_model, records,
        settings, judge, log=context.log.info,
    )
    result = dataclasses.replace(
        result,
        inputs={
            "base_model": str(base_model), "sft_checkpoint": str(sft_checkpoint), "ppo_policy": str(ppo_policy),
            "reward_model": str(reward_model), "eval_prompts": str(eval_prompts),
        },
        settings=settings.model_dump(),
        kl_bound=_ppo_summary(ppo_policy).get("kl_bound"),
    )
    training_rows, training_note = read_training_metrics(ppo_policy / PPO_METRICS_FILE)
    if training_note:
        context.log.warning(training_note)
    comparison = None
    if previous:
        comparison = {
            **compare_with_previous(result.summary_dict(), json.loads(previous[0].read_text())),
            "previous_path": str(previous[0].parent),
        }
    with artifacts.store().stage("evaluation_report") as staged:
        markdown = write_report(result, staged.path, training_rows, training_note, comparison)
    path = staged.path
    models, ppo_vs_sft = result.models, result.win_rates["ppo_vs_sft"]
    metadata = {
        "assessment": assessment(result),
        "ppo_vs_sft_win_rate_rm": ppo_vs_sft.reward_model.rate,
        "ppo_vs_sft_win_rate_checker": ppo_vs_sft.rule_checker.rate,
        "ppo_vs_sft_win_rate_judge": ppo_vs_sft.pairwise_judge.rate,
        "kl_ppo_vs_sft": result.kl.mean if result.kl else None,
        "kl_bound": result.kl_bound,
        "decoding": result.decoding.label,
        "ppo_minus_sft_checker_accuracy": result.checker_accuracy_difference["ppo_vs_sft"].difference,
        "length_ratio_ppo_vs_sft": result.length_ratio("ppo", "sft"),
        **{f"concept_match_{m}": models[m].concept_match_rate for m in models},
        **({"greedy_ppo_vs_sft_win_rate_rm": result.greedy.win_rates["ppo_vs_sft"].reward_model.rate,
            "greedy_ppo_minus_sft_checker_accuracy": result.greedy.checker_accuracy_difference["ppo_vs_sft"].difference}
           if result.greedy else {}),
        "judge": result.judge,
        "n_prompts": result.n_prompts,
        "n_verifiable": result.n_verifiable,
        # Prompts cut from the left to fit a model's context window (the most over the three models).
        "n_prompts_truncated": max(result.prompts_truncated.values(), default=0),
        **{f"rm_score_{m}": models[m].rm_score_mean for m in models},
        **{f"checker_accuracy_{m}": models[m].checker_accuracy for m in models},
        **{f"format_adherence_{m}": models[m].format_adherence for m in models},
        "n_regressions_vs_previous": len(comparison["regressions"]) if comparison else 0,
        "report": dg.MetadataValue.md(markdown),
        "report_md": dg.MetadataValue.path(str(path / REPORT_MD)),
        "report_html": dg.MetadataValue.path(str(path / REPORT_HTML)),
        "eval_json": dg.MetadataValue.path(str(path / EVAL_JSON)),
        "plot_win_rates": dg.MetadataValue.path(str(path / WIN_RATES_PNG)),
        "plot_length_histograms": dg.MetadataValue.path(str(path / LENGTH_HISTOGRAMS_PNG)),
    }
    if (path / TRAINING_CURVES_PNG).is_file():
        metadata["plot_ppo_training_curves"] = dg.MetadataValue.path(str(path / TRAINING_CURVES_PNG))
    # Dagster metadata floats must be numbers; an undefined value (e.g. no verifiable prompts) is left out.
    output = artifact_output(context, path, {k: v for k, v in metadata.items() if v is not None})
    return record_in_dvc(context, record_in_mlflow(context, output))


def _ppo_summary(ppo_policy: Path) -> dict:
    """The PPO stage's summary (its settings' kl_bound among them); empty for a policy trained elsewhere."""
    path = ppo_policy / PPO_SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@dg.asset_check(
    asset=evaluation_report,
    blocking=False,
    description="WARN when a metric of the latest report is worse than the previous report's beyond the 95% intervals",
)
def no_regression_vs_previous_report(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    from pipeline.evaluation.report import compare_with_previous

    reports = recent_reports(context.instance, evaluation_report.key, limit=2)
    if len(reports) < 2:
        return dg.AssetCheckResult(
            passed=True, severity=dg.AssetCheckSeverity.WARN, metadata={"note": "no previous report to compare with"},
        )
    current, previous = (json.loads(p.read_text()) for p in reports)
    comparison = compare_with_previous(current, previous)
    regressions = comparison["regressions"]
    return dg.AssetCheckResult(
        passed=not regressions,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "n_regressions": len(regressions),
            "regressed_metrics": ", ".join(r["metric"] for r in regressions) or "none",
            "regressions": dg.MetadataValue.json(regressions),
            "same_reward_model": comparison["same_reward_model"],
            "current_report": dg.MetadataValue.path(str(reports[0].parent)),
            "previous_report": dg.MetadataValue.path(str(reports[1].parent)),
        },
    )
