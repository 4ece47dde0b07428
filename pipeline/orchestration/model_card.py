"""Model cards: each checkpoint directory's README.md states which run made it and from what.

A model asset calls `write_model_card(context, staged.path)` inside its `artifacts.store().stage(...)`
block, so the card is part of the artifact (and of its content hash). The inputs listed are the
latest materializations of the asset's dependencies, which is what `ArtifactIOManager` loaded and
what Dagster records as the materialization's input provenance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from pipeline.evaluation.markdown import markdown_table
from pipeline.orchestration.lineage import iso_timestamp
from pipeline.orchestration.materializations import data_version_of, latest_materialization, recorded
from pipeline.orchestration.provenance import asset_code_version, config_hash, git_state, upstream_keys
from pipeline.storage.contract import (
    ARTIFACT_PATH_KEY,
    CODE_VERSION_KEY,
    CONFIG_HASH_KEY,
    CONFIG_KEY,
    CONTENT_HASH_KEY,
    GIT_COMMIT_KEY,
    GIT_DIRTY_KEY,
    MODEL_CARD_FILE,
)
from pipeline.storage.safety import redact_text


@dataclass(frozen=True)
class InputRecord:
    asset: str
    run_id: str
    storage_id: int
    timestamp: str
    data_version: str | None
    content_hash: str | None
    artifact_path: str | None


def input_records(context: dg.AssetExecutionContext) -> list[InputRecord]:
    """The latest materialization of each asset this asset reads."""
    records = []
    for key in upstream_keys(context):
        record = latest_materialization(context.instance, key)
        if record is None:
            raise dg.Failure(f"{key.to_user_string()} has no materialization to name in the model card")
        records.append(InputRecord(
            asset=key.to_user_string(),
            run_id=record.run_id,
            storage_id=record.storage_id,
            timestamp=iso_timestamp(record.timestamp),
            data_version=data_version_of(record),
            content_hash=recorded(record, CONTENT_HASH_KEY),
            artifact_path=recorded(record, ARTIFACT_PATH_KEY),
        ))
    return records


def write_model_card(
    context: dg.AssetExecutionContext, directory: Path, description: str | None = None, changes: Sequence[str] = (),
) -> Path:
    """Write README.md (HF model card) with the lineage of the materialization `context` runs into `directory`.

    `changes` are what the asset did to the checkpoint it was given (tokens added, embeddings grown):
    the card lists them under "Changes to the checkpoint" and in its lineage JSON.
    """
    asset = context.asset_key.to_user_string()
    git = git_state()
    config = context.op_config or {}
    inputs = input_records(context)
    lineage = {
        "asset": asset,
        "run_id": context.run_id,
        "created": iso_timestamp(datetime.now(timezone.utc).timestamp()),
        CODE_VERSION_KEY: asset_code_version(context),
        GIT_COMMIT_KEY: git.commit,
        GIT_DIRTY_KEY: git.dirty,
        CONFIG_HASH_KEY: config_hash(config),
        CONFIG_KEY: config,
        "inputs": [asdict(record) for record in inputs],
    }
    if changes:
        lineage["changes"] = list(changes)
    rows = [
        {"input": r.asset, "run id": r.run_id, "content hash": r.content_hash, "artifact": r.artifact_path}
        for r in inputs
    ]
    card = "\n".join([
        "---",
        "library_name: transformers",
        f"tags: [rlhf, {asset}]",
        "---",
        "",
        f"# {asset}",
        "",
        description or (context.assets_def.descriptions_by_key.get(context.asset_key) or "").strip(),
        "",
        *(["## Changes to the checkpoint", "", *[f"- {change}" for change in changes], ""] if changes else []),
        "## Lineage",
        "",
        f"Made by Dagster run `{context.run_id}` (asset `{asset}`, code version `{lineage[CODE_VERSION_KEY]}`) "
        f"from git commit `{git.commit}`{' with uncommitted changes' if git.dirty else ''}; "
        f"config hash `{lineage[CONFIG_HASH_KEY]}`.",
        "",
        markdown_table(rows, max_chars=400) if rows else "It reads no other asset.",
        "",
        "Ask the pipeline for the full upstream tree: `rlhf lineage " + asset + "`.",
        "",
        "```json",
        json.dumps(lineage, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ])
    path = Path(directory) / MODEL_CARD_FILE
    # The card travels with the checkpoint (DVC remote, the hub): mask secrets as metadata is masked.
    path.write_text(redact_text(card))
    return path

