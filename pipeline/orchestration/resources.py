"""Dagster resources: where artifacts live, and how an asset finds the artifact of the asset it reads.

An asset's value is the path of its artifact directory. The asset writes that directory itself
(atomically, through `ArtifactStore.stage`) and records the path in its materialization metadata.
`ArtifactIOManager` stores nothing; to load an input it reads the upstream asset's latest
materialization from the Dagster instance, so a stage re-run on its own reads exactly the artifact
that the event log says its input is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.storage.artifacts import ArtifactStore, committed_content_hash, directory_size
from pipeline.orchestration.provenance import provenance_metadata
from pipeline.storage.safety import redact_metadata

ARTIFACT_PATH_KEY = "artifact_path"
CONTENT_HASH_KEY = "content_hash"


class ArtifactStoreResource(dg.ConfigurableResource):
    """The artifacts root (default `artifacts/`, or $RLHF_ARTIFACTS_ROOT)."""

    root: str = "artifacts"

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root)


class ArtifactIOManager(dg.ConfigurableIOManager):
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not isinstance(obj, (str, Path)) or not Path(obj).exists():
            raise TypeError(f"asset {context.asset_key.to_user_string()} must return the path of its artifact, got {obj!r}")

    def load_input(self, context: dg.InputContext) -> Path:
        asset_key = context.asset_key
        # The newest materialization; one indexed query, a few ms cheaper than get_latest_materialization_event.
        records = context.instance.fetch_materializations(asset_key, limit=1).records
        event = records[0].event_log_entry if records else None
        if event is None or event.asset_materialization is None:
            raise dg.Failure(
                f"asset {asset_key.to_user_string()} has never been materialized in this Dagster instance; "
                "materialize it (or the whole job) first"
            )
        metadata = event.asset_materialization.metadata
        if ARTIFACT_PATH_KEY not in metadata:
            raise dg.Failure(f"latest materialization of {asset_key.to_user_string()} records no {ARTIFACT_PATH_KEY}")
        path = Path(str(metadata[ARTIFACT_PATH_KEY].value))
        if not path.exists():
            raise dg.Failure(
                f"artifact of {asset_key.to_user_string()} is missing at {path} (run {event.run_id}); "
                f"restore it (dvc pull, then rlhf restore {asset_key.to_user_string()}) or re-materialize the asset"
            )
        return path


def artifact_output(path: Path, metadata: dict[str, Any]) -> dg.Output:
    """The asset's return value: the artifact path, with its hash as the data version.

    Also records the lineage keys of `pipeline.orchestration.provenance` (code version, git state, config hash,
    DVC record) for the asset being materialized. Access tokens and other secrets (in the recorded
    config, say) are masked: metadata is shown in the web UI and kept in the instance for good.
    """
    digest = committed_content_hash(path)
    return dg.Output(
        value=path,
        data_version=dg.DataVersion(digest),
        metadata=redact_metadata({
            ARTIFACT_PATH_KEY: dg.MetadataValue.path(str(path)),
            CONTENT_HASH_KEY: digest,
            "size_bytes": directory_size(path),
            **provenance_metadata(path),
            **metadata,
        }),
    )
