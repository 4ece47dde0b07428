"""What an asset returns, and the DVC record of its artifact: two steps, each named for what it does.

Every asset ends the same way:

    output = artifact_output(context, staged.path, {...what it measured...})
    return record_in_dvc(context, output)

and returns `record_in_dvc(context, reused)` when it reuses an unchanged artifact
(`pipeline.orchestration.incremental.reuse_if_unchanged`), so that DVC follows whatever Dagster's
latest materialization points to.

- `artifact_output` builds the `dg.Output`: the artifact path as value, its content hash as the data
  version, and the lineage keys of `pipeline.orchestration.provenance` (code version, git state,
  config hash) in the metadata. It writes nothing; it reads the git state.
- `record_in_dvc` is the side effect: when DVC tracking is on (`pipeline.storage.dvc.tracking_for`),
  it mirrors the artifact to `<asset>/current`, brings the asset's stage in `dvc.yaml` in line with
  the asset graph and runs `dvc commit`, then returns the output with the DVC keys added.

Metadata is shown in the web UI and kept in the instance for good, so access tokens and other
secrets (in the recorded config, say) are masked in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.orchestration.provenance import provenance_metadata, upstream_keys
from pipeline.storage import dvc
from pipeline.storage.artifacts import committed_content_hash, directory_size
from pipeline.storage.contract import ARTIFACT_PATH_KEY, CONTENT_HASH_KEY, SIZE_BYTES_KEY
from pipeline.storage.safety import redact_secrets, redact_text, secret_values


def artifact_output(context: dg.AssetExecutionContext, path: Path, metadata: Mapping[str, Any]) -> dg.Output:
    """The asset's return value: the artifact path, its content hash as data version, lineage and `metadata`."""
    digest = committed_content_hash(path)
    return dg.Output(
        value=path,
        data_version=dg.DataVersion(digest),
        metadata=redact_metadata({
            ARTIFACT_PATH_KEY: dg.MetadataValue.path(str(path)),
            CONTENT_HASH_KEY: digest,
            SIZE_BYTES_KEY: directory_size(path),
            **provenance_metadata(context),
            **metadata,
        }),
    )


def record_in_dvc(context: dg.AssetExecutionContext, output: dg.Output) -> dg.Output:
    """Record the output's artifact with DVC (when tracking is on) and return the output with the DVC keys.

    Publishes the artifact as `<asset>/current`, syncs the asset's stage in dvc.yaml and runs
    `dvc commit` (see `pipeline.storage.dvc`). Without DVC tracking it returns `output` unchanged.
    """
    path = Path(output.value)
    tracking = dvc.tracking_for(path)
    if tracking is None:
        return output
    asset_name = context.asset_key.to_user_string()
    context.log.info(f"recording {asset_name} with DVC in {tracking.root}")
    record = tracking.record(asset_name, path, [key.to_user_string() for key in upstream_keys(context)])
    return output.with_metadata({**output.metadata, **redact_metadata(record.as_metadata())})


def redact_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Dagster materialization metadata with secrets masked in text, markdown, JSON and path values."""
    secrets = secret_values()
    redacted: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, dg.MarkdownMetadataValue):
            value = dg.MetadataValue.md(redact_text(value.md_str, secrets))
        elif isinstance(value, dg.JsonMetadataValue):
            value = dg.MetadataValue.json(redact_secrets(value.data, secrets))
        elif isinstance(value, dg.TextMetadataValue):
            value = dg.MetadataValue.text(redact_text(value.text, secrets))
        elif isinstance(value, (str, list, dict)):
            value = redact_secrets(value, secrets)
        redacted[key] = value
    return redacted
