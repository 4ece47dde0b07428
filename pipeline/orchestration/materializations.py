"""Where an asset's artifact is: its materializations in the Dagster instance, and what they record.

The one lookup of "the latest materialization of an asset, and the artifact it points to" that the
IO manager, incremental re-runs, model cards, lineage questions, the `rlhf` CLI and the evaluation
report's regression check all use. The metadata keys and tags it reads are the artifact contract's
(`pipeline.storage.contract`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.storage.contract import ARTIFACT_PATH_KEY, CONTENT_HASH_KEY, DATA_VERSION_TAG


def asset_key(asset: dg.AssetKey | str) -> dg.AssetKey:
    return asset if isinstance(asset, dg.AssetKey) else dg.AssetKey.from_user_string(asset)


def latest_materializations(instance: dg.DagsterInstance, asset: dg.AssetKey | str, limit: int) -> list[dg.EventLogRecord]:
    """The asset's newest `limit` materializations, newest first (one indexed query)."""
    return list(instance.fetch_materializations(asset_key(asset), limit=limit).records)


def latest_materialization(instance: dg.DagsterInstance, asset: dg.AssetKey | str) -> dg.EventLogRecord | None:
    """The asset's newest materialization, or None if it was never materialized in this instance."""
    records = latest_materializations(instance, asset, limit=1)
    return records[0] if records else None


def materialization_in_run(instance: dg.DagsterInstance, asset: dg.AssetKey | str, run_id: str) -> dg.EventLogRecord | None:
    """The asset's materialization in run `run_id` (its last one there), or None."""
    key = asset_key(asset)
    connection = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, ascending=False)
    return next((record for record in connection.records if record.asset_key == key), None)


def materialization_by_storage_id(
    instance: dg.DagsterInstance, asset: dg.AssetKey | str, storage_id: int
) -> dg.EventLogRecord | None:
    """The materialization event with this storage id (what Dagster's input provenance points to)."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset_key(asset), storage_ids=[storage_id]), limit=1)
    return records.records[0] if records.records else None


def metadata_value(entry: Any) -> Any:
    """The plain value of a metadata entry (None when absent)."""
    return None if entry is None else getattr(entry, "value", entry)


def recorded(record: dg.EventLogRecord, key: str) -> Any:
    """The plain value of metadata entry `key` of a materialization (None when absent)."""
    materialization = record.asset_materialization
    return metadata_value(materialization.metadata.get(key)) if materialization is not None else None


def artifact_path_of(record: dg.EventLogRecord) -> Path | None:
    """The artifact directory a materialization records (None when it records none)."""
    path = recorded(record, ARTIFACT_PATH_KEY)
    return Path(str(path)) if path else None


def latest_artifact(instance: dg.DagsterInstance, asset: dg.AssetKey | str) -> Path:
    """The artifact directory of the asset's latest materialization; `dg.Failure` saying what to do when there is none.

    What the IO manager loads as an input, and what a data asset reads for an edge it uses only
    with some config (`eval_prompts`, read by the training data assets when they drop eval leaks).
    """
    name = asset_key(asset).to_user_string()
    record = latest_materialization(instance, asset)
    if record is None or record.asset_materialization is None:
        raise dg.Failure(
            f"asset {name} has never been materialized in this Dagster instance; materialize it (or the whole job) first"
        )
    path = artifact_path_of(record)
    if path is None:
        raise dg.Failure(f"latest materialization of {name} records no {ARTIFACT_PATH_KEY}")
    if not path.exists():
        raise dg.Failure(
            f"artifact of {name} is missing at {path} (run {record.run_id}); "
            f"restore it (dvc pull, then rlhf restore {name}) or re-materialize the asset"
        )
    return path


def content_hash_of(record: dg.EventLogRecord) -> str | None:
    return recorded(record, CONTENT_HASH_KEY)


def data_version_of(record: dg.EventLogRecord) -> str | None:
    """The data version Dagster tagged the materialization with (the artifact's content hash)."""
    return (record.event_log_entry.tags or {}).get(DATA_VERSION_TAG)


def latest_artifact_paths(instance: dg.DagsterInstance, asset: dg.AssetKey | str, limit: int) -> list[Path]:
    """The artifact directories of the asset's newest `limit` materializations, newest first."""
    paths = (artifact_path_of(record) for record in latest_materializations(instance, asset, limit))
    return [path for path in paths if path is not None]
