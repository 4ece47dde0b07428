"""A gate re-run on unchanged inputs re-emits its last verdict instead of evaluating again.

A gate is a function of the artifacts it reads, its check config and the gate code. An incremental
re-run reuses every unchanged artifact (`pipeline.orchestration.incremental`), and without this it would spend
most of its time re-validating data that did not change (the Great Expectations suites alone take
seconds). So each evaluation records a fingerprint of

| what | how |
|---|---|
| gate code | a hash of the `quality_gates` package's source files |
| check | its asset and name |
| config | the check's resolved config |
| inputs | the artifact paths it read: content-addressed directories, never overwritten |

and `reusable_gate` re-emits the latest completed evaluation of the same check when its
fingerprint is the one this evaluation would have: the same passed flag, severity, description and
metadata, plus `reused_from_run`. A failing verdict comes back failing, so it still blocks. A
verdict is evaluated again when a file its metadata points to is gone, or when the run tag
`rlhf/recompute` is `all` or names the checked asset.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    AssetCheckExecutionRecord,
)

from pipeline.orchestration.incremental import recompute_requested
from pipeline.orchestration.materializations import metadata_value
from pipeline.storage.contract import REUSED_FROM_RUN_KEY

FINGERPRINT_KEY = "gate_fingerprint"


@functools.cache
def gate_code_hash() -> str:
    """A hash of this package's source: any change to any gate's code re-evaluates every gate."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def gate_fingerprint(check_key: dg.AssetCheckKey, config: dict[str, Any] | None, inputs: dict[str, str]) -> str:
    payload = {"check": check_key.to_user_string(), "code": gate_code_hash(), "config": config or {}, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def latest_completed_evaluation(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey
) -> tuple[AssetCheckExecutionRecord, dg.AssetCheckEvaluation] | None:
    """The check's latest evaluation that passed or failed (not one planned or in progress), with its record."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=1, status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES
    )
    if not history or history[0].event is None or history[0].event.dagster_event is None:
        return None
    return history[0], history[0].event.dagster_event.event_specific_data


def previous_verdict(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, fingerprint: str):
    """(run id, evaluation) of the check's latest completed evaluation if it has this fingerprint, else None."""
    latest = latest_completed_evaluation(instance, check_key)
    if latest is None:
        return None
    record, evaluation = latest
    if metadata_value(evaluation.metadata.get(FINGERPRINT_KEY)) != fingerprint:
        return None
    for value in evaluation.metadata.values():
        if isinstance(value, dg.PathMetadataValue) and not os.path.exists(value.path):
            return None  # a file the verdict shows (Data Docs, a report) is gone: evaluate again
    origin = metadata_value(evaluation.metadata.get(REUSED_FROM_RUN_KEY)) or record.run_id
    return str(origin), evaluation


def reusable_gate(check_fn):
    """Wrap a check's compute function (under `@dg.asset_check`) so unchanged inputs reuse the last verdict."""

    @functools.wraps(check_fn)
    def evaluate(context: dg.AssetCheckExecutionContext, **kwargs):
        check_key = context.check_specs[0].key
        config = kwargs.get("config")
        fingerprint = gate_fingerprint(
            check_key,
            config.model_dump() if config is not None else None,
            {name: str(value) for name, value in kwargs.items() if isinstance(value, Path)},
        )
        if not recompute_requested(context.run.tags, check_key.asset_key.to_user_string()):
            previous = previous_verdict(context.instance, check_key, fingerprint)
            if previous is not None:
                origin, evaluation = previous
                context.log.info(f"{check_key.to_user_string()}: inputs, config and gate code unchanged; "
                                 f"reusing the verdict of run {origin} ({'passed' if evaluation.passed else 'FAILED'})")
                return dg.AssetCheckResult(
                    passed=evaluation.passed,
                    severity=evaluation.severity,
                    description=evaluation.description,
                    metadata={**evaluation.metadata, REUSED_FROM_RUN_KEY: dg.MetadataValue.text(origin)},
                )
        result = check_fn(context, **kwargs)
        return result._replace(metadata={**result.metadata, FINGERPRINT_KEY: dg.MetadataValue.text(fingerprint)})

    return evaluate
