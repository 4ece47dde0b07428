"""Cross-run refusal: a training asset does not start on an input whose latest blocking gate failed.

Dagster's blocking checks stop downstream assets only inside the run that evaluated them. A later
run that materializes just `sft_checkpoint` would otherwise train on the very data a gate rejected,
so each training asset calls `refuse_if_input_gates_failed(context)` first: it looks up, in the
Dagster instance, the latest completed evaluation of every check on the asset's inputs, and raises
`dg.Failure` naming each one that was blocking and failed with ERROR severity.

The checks to look up are this project's gates plus any other check in the run's job. The job
alone is not enough: a run that selects only `sft_checkpoint` has a job without the data checks.

To proceed, fix the input and re-materialize it with its checks (or, to accept the data as it is,
re-run the check with a looser threshold in its config); a passing evaluation lifts the refusal.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import dagster as dg
from dagster import AssetCheckSeverity

from pipeline.evaluation.markdown import markdown_table
from quality_gates.checks import all_gate_check_keys
from quality_gates.reuse import latest_completed_evaluation


def failed_input_gates(
    instance: dg.DagsterInstance, input_keys: set[dg.AssetKey], check_keys: set[dg.AssetCheckKey]
) -> list[dict[str, Any]]:
    """The checks on `input_keys` whose latest completed evaluation was blocking and failed with ERROR severity."""
    failed = []
    for check_key in sorted(check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        if check_key.asset_key not in input_keys:
            continue
        latest = latest_completed_evaluation(instance, check_key)
        if latest is None:
            continue
        record, evaluation = latest
        if evaluation.passed or not evaluation.blocking or evaluation.severity != AssetCheckSeverity.ERROR:
            continue
        failed.append({
            "check": f"{check_key.asset_key.to_user_string()}:{check_key.name}",
            "run_id": record.run_id,
            "evaluated_at": datetime.fromtimestamp(record.create_timestamp, timezone.utc).isoformat(timespec="seconds"),
            "description": evaluation.description or "",
        })
    return failed


def refuse_if_input_gates_failed(context: dg.AssetExecutionContext) -> None:
    """Raise `dg.Failure` if the latest evaluation of a blocking check on one of this asset's inputs failed."""
    input_keys = set(context.assets_def.keys_by_input_name.values())
    check_keys = set(context.job_def.asset_layer.asset_graph.get_check_keys_for_assets(input_keys))
    check_keys |= {key for key in all_gate_check_keys() if key.asset_key in input_keys}
    failed = failed_input_gates(context.instance, input_keys, check_keys)
    if not failed:
        return
    asset_name = context.asset_key.to_user_string()
    names = ", ".join(f["check"] for f in failed)
    raise dg.Failure(
        description=(
            f"{asset_name} refuses to start: the latest evaluation of blocking check{'s' if len(failed) > 1 else ''} "
            f"{names} failed ({failed[0]['description']}; run {failed[0]['run_id']}). Fix the input and "
            "re-materialize it with its checks, or re-run the check with a looser threshold, then retry."
        ),
        metadata={
            "failed_checks": dg.MetadataValue.md(markdown_table(failed, max_chars=200)),
            "n_failed_checks": len(failed),
        },
    )
