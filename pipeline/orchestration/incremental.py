"""Incremental re-runs: a stage whose code, config and inputs did not change returns its last artifact.

Every asset starts with

    if (reused := reuse_if_unchanged(context)) is not None:
        return record_in_dvc(context, reused)

and the latest materialization of the asset is reused, without recomputing, when all of these hold:

| what | recorded on the previous materialization | compared with |
|---|---|---|
| code | `dagster/code_version` tag | the asset's explicit `code_version` now |
| config | `config_hash` metadata (`pipeline.orchestration.provenance.config_hash`) | the hash of this run's resolved op config |
| inputs | `dagster/input_data_version/<asset>` tags | each upstream asset's latest data version (what this run reads) |
| artifact | `artifact_path`, `content_hash` metadata | the directory still exists and hashes the same |

An upstream declared with `deps=` loads no input (the training data assets' `eval_prompts`, read only
to drop leaks): never materialized then and now, it is no change, so it does not force a recompute.

A reused materialization returns the same artifact path and the same `DataVersion` (the content
hash), so Dagster's own staleness (code versions + data versions, shown in the web UI) does not
mark anything downstream stale, and downstream stages reuse in turn. It records the metadata of the
materialization it reuses (artifact path, content hash, lineage keys), plus `reused_from_run`: the
run that computed the artifact. Since every artifact directory is content-addressed and never
overwritten, returning an old path is safe.

Config is not part of Dagster's staleness (it belongs to a run, not to the asset), so
`stale_assets` (behind `rlhf status`) adds it, against a given run-config file.

An asset whose config names something outside the pipeline (`source`: a user data file or hub
dataset; `model_name_or_path`: a checkpoint) is always recomputed, because that thing may have
changed under the same config; an unchanged one gives the same content hash, hence the same data
version, and everything downstream is still reused.

To force a recomputation, launch the run with the tag `rlhf/recompute` set to `all` or to a
comma-separated list of asset names.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import DEFAULT_DATA_VERSION  # what Dagster records for a never-materialized upstream

from pipeline.orchestration.materializations import (
    artifact_path_of,
    content_hash_of,
    data_version_of,
    latest_materialization,
    recorded,
)
from pipeline.orchestration.provenance import asset_code_version, config_hash, unloaded_upstream_keys, upstream_keys
from pipeline.storage.artifacts import content_hash
from pipeline.storage.contract import ARTIFACT_PATH_KEY, CONFIG_HASH_KEY, CONFIG_KEY, REUSED_FROM_RUN_KEY

RECOMPUTE_TAG = "rlhf/recompute"
EXTERNAL_INPUT_FIELDS = ("source", "model_name_or_path")


@dataclass
class Staleness:
    """Why an asset would be recomputed (no reasons: its latest materialization is up to date)."""

    asset: str
    reasons: list[str] = field(default_factory=list)
    run_id: str | None = None  # of the latest materialization
    artifact_path: str | None = None
    reused_from_run: str | None = None
    record: dg.EventLogRecord | None = field(default=None, repr=False, compare=False)

    @property
    def stale(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "asset": self.asset, "stale": self.stale, "reasons": list(self.reasons), "run_id": self.run_id,
            ARTIFACT_PATH_KEY: self.artifact_path, REUSED_FROM_RUN_KEY: self.reused_from_run,
        }


def _short(version: str | None) -> str:
    return "none" if version is None else version[:12]


def config_changes(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[str]:
    """`field: old -> new` for each top-level config field that differs."""
    recorded, current = dict(recorded or {}), dict(current or {})
    changes = []
    for name in sorted(set(recorded) | set(current)):
        before, after = recorded.get(name, "<unset>"), current.get(name, "<unset>")
        if before != after:
            changes.append(f"{name}: {before!r} -> {after!r}")
    return changes


def staleness(
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    code_version: str | None,
    config: Mapping[str, Any] | None,
    parent_keys: Sequence[dg.AssetKey],
    verify_artifact: bool = True,
    optional_parents: Collection[dg.AssetKey] = (),
) -> Staleness:
    """Compare the asset's latest materialization with its code version, config and inputs now.

    `optional_parents`: upstream assets declared with `deps=`, which the asset reads only when its
    config says so (`provenance.unloaded_upstream_keys`); one never materialized, then or now, is no change.
    """
    result = Staleness(asset_key.to_user_string())
    record = latest_materialization(instance, asset_key)
    if record is None or record.asset_materialization is None:
        result.reasons.append("never materialized")
        return result
    result.record = record
    result.run_id = record.run_id
    result.artifact_path = recorded(record, ARTIFACT_PATH_KEY)
    result.reused_from_run = recorded(record, REUSED_FROM_RUN_KEY)

    provenance = dg.DataProvenance.from_tags(record.event_log_entry.tags or {})
    recorded_code = provenance.code_version if provenance else None
    if code_version is None:
        result.reasons.append("the asset has no explicit code_version")
    elif recorded_code != code_version:
        result.reasons.append(f"code version changed: {recorded_code} -> {code_version}")

    recorded_hash = recorded(record, CONFIG_HASH_KEY)
    if recorded_hash != config_hash(config):
        changes = config_changes(recorded(record, CONFIG_KEY), config)
        detail = ", ".join(changes) if changes else f"hash {_short(recorded_hash)} -> {_short(config_hash(config))}"
        result.reasons.append(f"config changed ({detail})")

    recorded_inputs = provenance.input_data_versions if provenance else {}
    for parent in parent_keys:
        name = parent.to_user_string()
        upstream = latest_materialization(instance, parent)
        current = data_version_of(upstream) if upstream is not None else None
        before = recorded_inputs.get(parent)
        if current is None:
            if parent in optional_parents and (before is None or before == DEFAULT_DATA_VERSION):
                continue  # absent then and now, and the asset loads nothing from it: no change
            result.reasons.append(f"upstream {name} never materialized")
            continue
        if before is None or before.value != current:
            result.reasons.append(
                f"upstream {name} data version changed: {_short(before.value if before else None)} -> {_short(current)}"
            )

    if verify_artifact:
        result.reasons.extend(_artifact_problems(result.artifact_path, content_hash_of(record)))
    return result


def _artifact_problems(path: str | None, recorded_hash: str | None) -> list[str]:
    if not path or not recorded_hash:
        return ["no artifact_path/content_hash recorded"]
    if not Path(path).exists():
        return [f"artifact missing at {path}"]
    actual = content_hash(Path(path))
    if actual != recorded_hash:
        return [f"artifact at {path} changed on disk (content hash {_short(recorded_hash)} -> {_short(actual)})"]
    return []


def recompute_requested(tags: Mapping[str, str], asset_name: str) -> bool:
    """Whether the run tag `rlhf/recompute` (`all`, `true` or a list of asset names) covers the asset."""
    value = (tags.get(RECOMPUTE_TAG) or "").strip().lower()
    if value in ("all", "true", "1", "yes"):
        return True
    return asset_name.lower() in {name.strip() for name in value.split(",") if name.strip()}


def reused_output(record: dg.EventLogRecord) -> dg.Output:
    """The asset's output re-emitted from an earlier materialization: same path, data version, metadata."""
    metadata = dict(record.asset_materialization.metadata)
    # Point at the run that actually computed the artifact, even after several reuses.
    origin = recorded(record, REUSED_FROM_RUN_KEY) or record.run_id
    metadata[REUSED_FROM_RUN_KEY] = dg.MetadataValue.text(str(origin))
    return dg.Output(
        value=artifact_path_of(record),
        data_version=dg.DataVersion(data_version_of(record) or content_hash_of(record)),
        metadata=metadata,
    )


def reuse_if_unchanged(context: dg.AssetExecutionContext) -> dg.Output | None:
    """The previous materialization's output if nothing it depends on changed; None: compute the asset.

    The asset returns `record_in_dvc(context, reused)`, so that DVC follows the reuse too.
    """
    started = time.perf_counter()
    name = context.asset_key.to_user_string()
    if recompute_requested(context.run.tags, name):
        context.log.info(f"{name}: recomputing (run tag {RECOMPUTE_TAG}={context.run.tags[RECOMPUTE_TAG]})")
        return None
    external = [f for f in EXTERNAL_INPUT_FIELDS if (context.op_config or {}).get(f)]
    if external:
        context.log.info(f"{name}: recomputing, it reads {', '.join(external)} from outside the pipeline")
        return None
    result = staleness(
        context.instance, context.asset_key, asset_code_version(context), context.op_config, upstream_keys(context),
        optional_parents=unloaded_upstream_keys(context.assets_def),
    )
    if result.stale:
        context.log.info(f"{name} is stale, computing it: " + "; ".join(result.reasons))
        return None
    context.log.info(
        f"{name} is up to date: reusing {result.artifact_path} from run "
        f"{result.reused_from_run or result.run_id} (checked in {time.perf_counter() - started:.2f} s)"
    )
    return reused_output(result.record)


def stale_assets(
    instance: dg.DagsterInstance,
    job_def: dg.JobDefinition,
    run_config: Mapping[str, Any] | None = None,
    verify_artifacts: bool = True,
) -> list[Staleness]:
    """Every materializable asset of the job, upstream first, with why it would be recomputed.

    Configs are resolved from `run_config` the way a run of the job resolves them (defaults
    filled in), so the config hashes compare with what the assets recorded. An asset downstream
    of a stale one is reported stale too: it may re-run (unless the upstream recomputes to the
    same content).
    """
    from dagster._core.system_config.objects import ResolvedRunConfig

    resolved = ResolvedRunConfig.build(job_def, dict(run_config or {}))
    graph = job_def.asset_layer.asset_graph
    results: dict[dg.AssetKey, Staleness] = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable or not node.is_executable:
            continue
        op_name = job_def.asset_layer.get_op_output_handle(key).node_handle.name
        op_config = resolved.ops[op_name].config if op_name in resolved.ops else None
        parents = sorted(node.parent_keys, key=lambda k: k.to_user_string())
        result = staleness(
            instance, key, node.code_version, op_config, parents, verify_artifacts, unloaded_upstream_keys(node.assets_def)
        )
        stale_parents = [p.to_user_string() for p in parents if p in results and results[p].stale]
        if stale_parents and not any(r.startswith("never materialized") for r in result.reasons):
            result.reasons.append(f"upstream stale: {', '.join(stale_parents)}")
        results[key] = result
    return list(results.values())


def render_status(results: Sequence[Staleness]) -> str:
    """A plain-text table: asset, up to date or STALE, and why."""
    width = max((len(r.asset) for r in results), default=5)
    lines = []
    for result in results:
        if result.stale:
            lines.append(f"{result.asset:<{width}}  STALE       {result.reasons[0]}")
            lines.extend(f"{'':<{width}}              {reason}" for reason in result.reasons[1:])
        else:
            origin = result.reused_from_run or result.run_id
            lines.append(f"{result.asset:<{width}}  up to date  artifact from run {origin}")
    n_stale = sum(r.stale for r in results)
    lines.append("")
    lines.append(f"{n_stale} of {len(results)} assets stale" + (": a run recomputes only these" if n_stale else ""))
    return "\n".join(lines)
