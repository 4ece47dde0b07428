"""Lineage questions answered from the Dagster instance (and the artifacts it points to).

- `upstream_tree`: the materialization of an asset (latest, or the one in a given run) and,
  recursively, the exact upstream materializations it read. The links are Dagster's input
  provenance: each materialization event carries, per input, the storage id of the upstream
  materialization event (`dagster/input_event_pointer/<asset>` tags) and its data version.
- `check_evaluations`: recorded asset-check evaluations whose check name contains a substring
  (the eval-prompt leak gates), optionally only those on materializations in a lineage tree.
- `length_drift`: from which PPO step responses started getting longer, from the policy's
  `ppo_train_metrics.jsonl` (per-step `response_length`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.orchestration.materializations import (
    artifact_path_of,
    data_version_of,
    latest_materialization,
    materialization_by_storage_id,
    materialization_in_run,
    metadata_value,
    recorded,
)
from pipeline.storage.contract import (
    ARTIFACT_PATH_KEY,
    CODE_VERSION_KEY,
    CONFIG_HASH_KEY,
    CONTENT_HASH_KEY,
    DVC_MD5_KEY,
    GIT_COMMIT_KEY,
    GIT_DIRTY_KEY,
    REUSED_FROM_RUN_KEY,
)

RESPONSE_LENGTH_FIELD = "response_length"


class LineageError(LookupError):
    pass


@dataclass
class LineageNode:
    asset: str
    run_id: str
    storage_id: int
    timestamp: str
    data_version: str | None
    code_version: str | None
    artifact_path: str | None
    artifact_exists: bool
    content_hash: str | None
    git_commit: str | None
    git_dirty: Any
    config_hash: str | None
    dvc_md5: str | None
    # Set when the run reused an earlier, unchanged artifact instead of recomputing it.
    reused_from_run: str | None = None
    inputs: list[LineageNode] = field(default_factory=list)
    # An input whose materialization Dagster did not record (never materialized when read).
    unknown_inputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def find(self, asset: str) -> list[LineageNode]:
        """Every node for `asset` in this tree (one per distinct materialization)."""
        found: dict[int, LineageNode] = {}
        stack = [self]
        while stack:
            node = stack.pop()
            if node.asset == asset:
                found[node.storage_id] = node
            stack.extend(node.inputs)
        return list(found.values())

    def storage_ids(self) -> set[int]:
        ids = {self.storage_id}
        for node in self.inputs:
            ids |= node.storage_ids()
        return ids


def materialization_record(instance: dg.DagsterInstance, asset: str, run_id: str | None = None) -> dg.EventLogRecord:
    """The latest materialization of `asset`, or its materialization in run `run_id`."""
    if run_id is None:
        record = latest_materialization(instance, asset)
        if record is None:
            raise LineageError(f"asset {asset} has never been materialized in the Dagster instance at {_home(instance)}")
        return record
    if instance.get_run_by_id(run_id) is None:
        raise LineageError(f"no run {run_id} in the Dagster instance at {_home(instance)}")
    record = materialization_in_run(instance, asset, run_id)
    if record is None:
        raise LineageError(f"run {run_id} did not materialize {asset}")
    return record


def upstream_tree(instance: dg.DagsterInstance, asset: str, run_id: str | None = None) -> LineageNode:
    """The materialization's lineage: itself and, recursively, the materializations it read."""
    cache: dict[int, LineageNode] = {}
    return _node(instance, materialization_record(instance, asset, run_id), cache)


def _node(instance: dg.DagsterInstance, record: dg.EventLogRecord, cache: dict[int, LineageNode]) -> LineageNode:
    if record.storage_id in cache:
        return cache[record.storage_id]
    artifact_path = recorded(record, ARTIFACT_PATH_KEY)
    provenance = dg.DataProvenance.from_tags(record.event_log_entry.tags or {})
    node = LineageNode(
        asset=record.asset_key.to_user_string(),
        run_id=record.run_id,
        storage_id=record.storage_id,
        timestamp=iso_timestamp(record.timestamp),
        data_version=data_version_of(record),
        code_version=provenance.code_version if provenance else recorded(record, CODE_VERSION_KEY),
        artifact_path=artifact_path,
        artifact_exists=bool(artifact_path) and Path(artifact_path).exists(),
        content_hash=recorded(record, CONTENT_HASH_KEY),
        git_commit=recorded(record, GIT_COMMIT_KEY),
        git_dirty=recorded(record, GIT_DIRTY_KEY),
        config_hash=recorded(record, CONFIG_HASH_KEY),
        dvc_md5=recorded(record, DVC_MD5_KEY),
        reused_from_run=recorded(record, REUSED_FROM_RUN_KEY),
    )
    cache[record.storage_id] = node
    if provenance is not None:
        for key in sorted(provenance.input_storage_ids, key=lambda k: k.to_user_string()):
            storage_id = provenance.input_storage_ids[key]
            upstream = materialization_by_storage_id(instance, key, storage_id) if storage_id is not None else None
            if upstream is None:
                node.unknown_inputs.append(key.to_user_string())
            else:
                node.inputs.append(_node(instance, upstream, cache))
    return node


def render_tree(node: LineageNode) -> str:
    """A readable tree, one materialization per block, inputs indented below what read them."""
    lines: list[str] = []
    _render(node, lines, prefix="", is_last=True, is_root=True)
    return "\n".join(lines)


def _render(node: LineageNode, lines: list[str], prefix: str, is_last: bool, is_root: bool) -> None:
    branch = "" if is_root else ("└── " if is_last else "├── ")
    reused = f" (reused from run {node.reused_from_run})" if node.reused_from_run else ""
    lines.append(f"{prefix}{branch}{node.asset}  run {node.run_id}{reused}  {node.timestamp}")
    detail_prefix = prefix + ("" if is_root else ("    " if is_last else "│   ")) + ("│   " if node.inputs else "    ")
    dirty = " (dirty)" if node.git_dirty is True else ""
    missing = "" if node.artifact_exists else "  [MISSING: dvc pull, or re-materialize]"
    lines.append(f"{detail_prefix}data version {node.data_version}  code version {node.code_version}")
    lines.append(f"{detail_prefix}artifact {node.artifact_path}{missing}")
    lines.append(f"{detail_prefix}content hash {node.content_hash}  dvc {node.dvc_md5}")
    lines.append(f"{detail_prefix}git {node.git_commit}{dirty}  config hash {node.config_hash}")
    for name in node.unknown_inputs:
        lines.append(f"{detail_prefix}input {name}: no materialization recorded")
    child_prefix = prefix + ("" if is_root else ("    " if is_last else "│   "))
    for index, child in enumerate(node.inputs):
        _render(child, lines, child_prefix, index == len(node.inputs) - 1, is_root=False)


@dataclass(frozen=True)
class CheckEvaluation:
    asset: str
    check_name: str
    passed: bool
    severity: str
    run_id: str
    timestamp: str
    target_run_id: str | None
    target_storage_id: int | None
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_evaluations(
    instance: dg.DagsterInstance, name_contains: str, within: LineageNode | None = None, limit: int = 10_000
) -> list[CheckEvaluation]:
    """The latest recorded evaluation of each matching check (per target materialization when `within`).

    Without `within`: per check, its latest evaluation. With `within`: per check and per
    materialization of the tree, the latest evaluation that targeted that materialization.
    """
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=limit, ascending=False
    )
    tree_ids = within.storage_ids() if within is not None else None
    latest: dict[tuple, CheckEvaluation] = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if name_contains.lower() not in evaluation.check_name.lower():
            continue
        target = evaluation.target_materialization_data
        target_storage_id = target.storage_id if target else None
        if tree_ids is not None and target_storage_id not in tree_ids:
            continue
        group = (evaluation.asset_key, evaluation.check_name) + ((target_storage_id,) if tree_ids is not None else ())
        if group in latest:
            continue  # records come newest first
        latest[group] = CheckEvaluation(
            asset=evaluation.asset_key.to_user_string(),
            check_name=evaluation.check_name,
            passed=evaluation.passed,
            severity=evaluation.severity.value,
            run_id=record.run_id,
            timestamp=iso_timestamp(record.timestamp),
            target_run_id=target.run_id if target else None,
            target_storage_id=target_storage_id,
            metadata={k: _jsonable(metadata_value(v)) for k, v in evaluation.metadata.items()},
        )
    return sorted(latest.values(), key=lambda e: (e.asset, e.check_name, e.timestamp))


@dataclass(frozen=True)
class LengthDrift:
    """Where the trailing-mean response length rose above the baseline and stayed there."""

    metrics_path: str
    n_steps: int
    baseline_length: float
    final_length: float
    threshold: float
    window: int
    onset_step: int | None
    onset_checkpoint: str | None
    onset_length: float | None
    per_step: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def length_drift(metrics_path: Path, threshold: float = 0.1, window: int = 3) -> LengthDrift:
    """From which step responses started getting longer, from per-step `response_length`.

    Baseline: the mean of the first `window` steps. Smoothed length: the trailing mean over
    `window` steps. Onset: the first step from which the smoothed length stays above
    `baseline * (1 + threshold)` until the end of training (a sustained rise, not a blip).
    """
    if threshold < 0 or window < 1:
        raise ValueError(f"threshold must be >= 0 and window >= 1 (got {threshold}, {window})")
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        raise LineageError(f"no PPO training metrics at {metrics_path}")
    rows = []
    with open(metrics_path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if RESPONSE_LENGTH_FIELD not in row:
                raise LineageError(f"{metrics_path} line {line_number}: no {RESPONSE_LENGTH_FIELD!r} field")
            rows.append(row)
    if not rows:
        raise LineageError(f"{metrics_path} has no steps")
    lengths = [float(row[RESPONSE_LENGTH_FIELD]) for row in rows]
    steps = [int(row.get("step", index)) for index, row in enumerate(rows)]
    smoothed = [sum(lengths[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(rows))]
    baseline = sum(lengths[:window]) / len(lengths[:window])
    limit = baseline * (1 + threshold)
    onset = None
    for index in range(len(rows) - 1, -1, -1):
        if smoothed[index] > limit and not math.isclose(smoothed[index], limit):
            onset = index
        else:
            break
    per_step = [
        {"step": s, RESPONSE_LENGTH_FIELD: length, "trailing_mean": round(mean, 3)}
        for s, length, mean in zip(steps, lengths, smoothed)
    ]
    return LengthDrift(
        metrics_path=str(metrics_path),
        n_steps=len(rows),
        baseline_length=baseline,
        final_length=smoothed[-1],
        threshold=threshold,
        window=window,
        onset_step=steps[onset] if onset is not None else None,
        onset_checkpoint=rows[onset].get("checkpoint") if onset is not None else None,
        onset_length=smoothed[onset] if onset is not None else None,
        per_step=per_step,
    )


def artifact_of(instance: dg.DagsterInstance, asset: str, run_id: str | None = None) -> Path:
    """The artifact directory of the latest (or the given run's) materialization of `asset`."""
    record = materialization_record(instance, asset, run_id)
    path = artifact_path_of(record)
    if path is None:
        raise LineageError(f"materialization of {asset} in run {record.run_id} records no {ARTIFACT_PATH_KEY}")
    return path


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def iso_timestamp(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _home(instance: dg.DagsterInstance) -> str:
    return str(getattr(instance, "root_directory", None) or "DAGSTER_HOME")
