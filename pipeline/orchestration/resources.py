"""Dagster resources: where artifacts live, and how an asset finds the artifact of the asset it reads.

An asset's value is the path of its artifact directory. The asset writes that directory itself
(atomically, through `ArtifactStore.stage`) and records the path in its materialization metadata
(`pipeline.orchestration.outputs.artifact_output`). `ArtifactIOManager` stores nothing; to load an
input it reads the upstream asset's latest materialization from the Dagster instance, so a stage
re-run on its own reads exactly the artifact that the event log says its input is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.orchestration.materializations import latest_artifact
from pipeline.storage.artifacts import ArtifactStore


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
        return latest_artifact(context.instance, context.asset_key)


# The training assets' Pipes client for `accelerate launch` (`pipeline.orchestration.launchers`): one
# resource definition, because a job's assets must share a resource key's definition by reference (and
# Dagster would wrap a bare client in a new definition for each asset).
PIPES_SUBPROCESS_CLIENT = dg.ResourceDefinition.hardcoded_resource(dg.PipesSubprocessClient())
