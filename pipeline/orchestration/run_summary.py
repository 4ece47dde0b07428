"""What a run did, in a dozen lines: the closing summary of `make run` (`rlhf summary`).

Read from the Dagster instance's event log after the run, so it describes what was recorded (the
same events the web UI shows) whichever way the run was started: wall time; each stage computed
or reused; every gate's verdict; the evaluation report's headline (PPO vs SFT win rates with their
95% intervals, KL to SFT against its bound); where the report, the lineage command, the UI,
TensorBoard and (when used) MLflow are. For a failed run: which step or gate failed, the reason in
one line, and what was not run because of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.orchestration.materializations import metadata_value
from pipeline.storage.contract import (
    ARTIFACT_PATH_KEY,
    EVAL_JSON,
    MLFLOW_EXPERIMENT_KEY,
    MLFLOW_RUN_ID_KEY,
    REPORT_MD,
    REUSED_FROM_RUN_KEY,
)

INVOCATION_TAG = "rlhf/invocation"  # set by `make run` on the run it starts, so its summary finds that run
REPORT_ASSET = "evaluation_report"
JOB_NAME = "rlhf_pipeline"


@dataclass
class Stage:
    asset: str
    status: str  # computed | reused | failed | not run
    seconds: float | None = None
    reused_from_run: str | None = None
    artifact_path: str | None = None
    mlflow_run_id: str | None = None


@dataclass
class Gate:
    check: str  # asset:check
    verdict: str  # passed | FAILED | WARN | not run
    blocking: bool
    description: str = ""


@dataclass
class Failure:
    step: str
    reason: str


@dataclass
class RunSummary:
    run_id: str
    job_name: str
    status: str
    wall_seconds: float | None
    stages: list[Stage] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    headline: dict[str, Any] | None = None
    report_path: str | None = None
    mlflow_experiment: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS.value

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def find_run(instance: dg.DagsterInstance, run_id: str | None = None, invocation: str | None = None) -> dg.DagsterRun | None:
    """The run with `run_id`, else the one tagged with `invocation`, else the latest run of the job."""
    if run_id:
        return instance.get_run_by_id(run_id)
    tags = {INVOCATION_TAG: invocation} if invocation else {}
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=None if invocation else JOB_NAME, tags=tags), limit=1)
    return runs[0] if runs else None


def summarize_run(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunSummary:
    stats = instance.get_run_stats(run.run_id)
    wall = stats.end_time - stats.start_time if stats.start_time and stats.end_time else None
    planned_assets, planned_checks = _planned(instance, run)
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    failed_steps: list[Failure] = []
    materialized: dict[str, tuple[dg.AssetMaterialization, str]] = {}  # asset -> (materialization, step key)
    evaluations: dict[str, dg.AssetCheckEvaluation] = {}
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        step = event.step_key
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[step] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ended[step] = entry.timestamp
            if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                failed_steps.append(Failure(step, _one_line(event.event_specific_data.error)))
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            materialized[materialization.asset_key.to_user_string()] = (materialization, step)
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            evaluations[f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"] = evaluation

    summary = RunSummary(run.run_id, run.job_name, run.status.value, wall)
    failed_step_keys = {f.step for f in failed_steps}
    for asset, step in planned_assets:
        if asset in materialized:
            materialization, step = materialized[asset]
            metadata = {k: metadata_value(v) for k, v in materialization.metadata.items()}
            reused = metadata.get(REUSED_FROM_RUN_KEY)
            seconds = ended[step] - started[step] if step in started and step in ended else None
            summary.stages.append(Stage(
                asset, "reused" if reused else "computed", seconds, reused, metadata.get(ARTIFACT_PATH_KEY),
                None if reused else metadata.get(MLFLOW_RUN_ID_KEY),
            ))
            summary.mlflow_experiment = summary.mlflow_experiment or metadata.get(MLFLOW_EXPERIMENT_KEY)
        else:
            summary.stages.append(Stage(asset, "failed" if step in failed_step_keys else "not run"))
    for check, step in planned_checks:
        evaluation = evaluations.get(check)
        if evaluation is None:
            summary.gates.append(Gate(check, "not run", blocking=False))
            continue
        verdict = "passed" if evaluation.passed else (
            "FAILED" if evaluation.severity == dg.AssetCheckSeverity.ERROR else "WARN")
        summary.gates.append(Gate(check, verdict, bool(evaluation.blocking), _first_line(evaluation.description or "")))
    # A failed blocking gate's step fails too; its own description is the better reason.
    gate_reasons = {g.check: g.description for g in summary.gates if g.verdict == "FAILED"}
    for failure in failed_steps:
        failing_gates = [check for check, step in planned_checks if step == failure.step and check in gate_reasons]
        if failing_gates:
            failure.step = ", ".join(failing_gates)
            failure.reason = "; ".join(gate_reasons[check] for check in failing_gates) or failure.reason
    summary.failures = failed_steps
    # Stages in the order they ran; those that never started after them, in plan order.
    step_of = dict(planned_assets)
    summary.stages.sort(key=lambda stage: started.get(step_of[stage.asset], float("inf")))

    report = materialized.get(REPORT_ASSET)
    if report is not None:
        path = Path(str(metadata_value(report[0].metadata.get(ARTIFACT_PATH_KEY)) or ""))
        summary.report_path = str(path / REPORT_MD)
        if (path / EVAL_JSON).is_file():
            summary.headline = headline(json.loads((path / EVAL_JSON).read_text()))
    return summary


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """PPO vs SFT by each judge (rate and 95% interval), the KL of PPO to SFT and its bound, the verdict."""
    ppo_vs_sft = report.get("win_rates", {}).get("ppo_vs_sft", {})
    return {
        "win_rates": {
            judge: {"rate": value.get("rate"), "ci95": value.get("ci95"), "n": value.get("n")}
            for judge, value in ppo_vs_sft.items() if isinstance(value, dict) and value.get("n")
        },
        "kl": report.get("kl_ppo_vs_sft"),
        "kl_ci95": report.get("kl_ppo_vs_sft_ci95"),
        "kl_bound": report.get("kl_bound"),
        "decoding": (report.get("decoding") or {}).get("label"),
        "assessment": report.get("assessment"),
    }


def render_summary(summary: RunSummary, python_bin: str = ".venv/bin") -> str:
    ok = summary.succeeded
    wall = f"{summary.wall_seconds:.0f} s" if summary.wall_seconds is not None else "unknown"
    lines = ["", f"=== {summary.job_name}: {'SUCCESS' if ok else summary.status} in {wall} (run {summary.run_id}) ==="]
    by_status: dict[str, list[Stage]] = {}
    for stage in summary.stages:
        by_status.setdefault(stage.status, []).append(stage)
    if by_status.get("computed"):
        lines.append("computed:  " + ", ".join(
            f"{s.asset} ({s.seconds:.0f} s)" if s.seconds is not None else s.asset for s in by_status["computed"]))
    if by_status.get("reused"):
        lines.append("reused:    " + ", ".join(s.asset for s in by_status["reused"]) + "  (unchanged since an earlier run)")
    passed = [g for g in summary.gates if g.verdict == "passed"]
    lines.append(f"gates:     {len(passed)} of {len(summary.gates)} passed")
    by_asset: dict[str, list[Gate]] = {}
    for gate in summary.gates:
        by_asset.setdefault(gate.check.split(":")[0], []).append(gate)
    width = max((len(asset) for asset in by_asset), default=0)
    for asset, gates in by_asset.items():
        lines.append(f"  {asset:<{width}}  " + ", ".join(f"{g.check.split(':', 1)[1]} {g.verdict}" for g in gates))
    failed_steps = {check for failure in summary.failures for check in failure.step.split(", ")}
    for gate in summary.gates:
        if gate.verdict in ("FAILED", "WARN") and gate.check not in failed_steps:  # a failed step says it below
            kind = "blocking" if gate.blocking else "non-blocking"
            lines.append(f"  {gate.verdict} {gate.check} ({kind}): {gate.description}")
    if summary.failures:
        for failure in summary.failures:
            lines.append(f"FAILED:    {failure.step}: {failure.reason}")
        not_run = [s.asset for s in by_status.get("not run", [])]
        gates_not_run = [g.check for g in summary.gates if g.verdict == "not run"]
        if not_run or gates_not_run:
            lines.append("not run because of it: " + (", ".join(not_run) or "no stage")
                         + (f" (and {len(gates_not_run)} gates on them)" if gates_not_run else ""))
    if summary.headline:
        lines.extend(_headline_lines(summary.headline))
    lines.append("where:")
    if summary.report_path:
        lines.append(f"  report     {_shown(summary.report_path)}")
    lines.append(f"  lineage    {python_bin}/rlhf lineage ppo_policy   (which RM and data trained the policy)")
    lines.append("  web UI     make ui -> http://127.0.0.1:3000/runs/" + summary.run_id)
    lines.append("  curves     make tensorboard -> http://127.0.0.1:6006")
    tracked = [s for s in summary.stages if s.mlflow_run_id]
    if tracked:
        lines.append(f"  MLflow     experiment {summary.mlflow_experiment!r}: "
                     + ", ".join(f"{s.asset}={s.mlflow_run_id[:8]}" for s in tracked))
    return "\n".join(lines)


def _headline_lines(headline: dict[str, Any]) -> list[str]:
    names = {"reward_model": "reward model", "rule_checker": "rule checker", "pairwise_judge": "pairwise judge"}
    lines = [f"evaluation: PPO vs SFT win rate ({headline.get('decoding') or 'held-out prompts'})"]
    for judge, value in headline["win_rates"].items():
        low, high = value.get("ci95") or (None, None)
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
        lines.append(f"  {names.get(judge, judge):<15} {value['rate']:.2f}{interval}  (n={value['n']})")
    if headline.get("kl") is not None:
        low, high = headline.get("kl_ci95") or (None, None)
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
        bound = f" (bound {headline['kl_bound']:g})" if headline.get("kl_bound") is not None else ""
        lines.append(f"  KL(PPO || SFT) {headline['kl']:.2f}{interval}{bound}")
    if headline.get("assessment"):
        lines.append(f"  {_first_line(headline['assessment'])}")
    return lines


def _planned(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(asset, step key) and (asset:check, step key) of every output the run planned, in plan order."""
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    assets, checks = [], []
    for step in plan.steps:
        for output in step.outputs:
            properties = output.properties
            if properties is None:
                continue
            if properties.asset_check_key is not None:
                key = properties.asset_check_key
                checks.append((f"{key.asset_key.to_user_string()}:{key.name}", step.key))
            elif properties.asset_key is not None:
                assets.append((properties.asset_key.to_user_string(), step.key))
    return assets, checks


def _shown(path: str) -> str:
    """A path as the user would type it from here: relative when it is below the working directory."""
    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    return str(resolved.relative_to(here)) if resolved.is_relative_to(here) else path


def _one_line(error) -> str:
    """The innermost cause of a step's error, its first line (Dagster wraps the user's exception)."""
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    return _first_line(error.message if error is not None else "unknown error")


def _first_line(text: str, limit: int = 240) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."
