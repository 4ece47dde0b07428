"""What every materialization records about where it came from: code, config, git state, inputs.

`provenance_metadata` is called by `pipeline.orchestration.resources.artifact_output`, so every asset gets the
same keys without repeating code:

| key | what it is |
|---|---|
| `code_version` | the asset's explicit `code_version` (also Dagster's `dagster/code_version` tag) |
| `git_commit`, `git_dirty` | HEAD of the repository holding this code, and whether its tree had changes (`dvc.lock` aside) |
| `config_hash`, `config` | sha256 of the asset's resolved run config (canonical JSON), and the config itself |
| `dvc_stage`, `dvc_out`, `dvc_md5` | where DVC tracks the artifact and its DVC hash, as in `dvc.lock` (when DVC tracking is on) |

Dagster itself adds, as event tags, the data version (the content hash) and, for each input, the
data version and event storage id of the upstream materialization it read: `pipeline.orchestration.lineage`
walks those.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

CODE_REPO_ROOT = Path(__file__).resolve().parents[1]
# Bookkeeping that a pipeline run rewrites itself; changes to it do not make the code "dirty".
GIT_DIRTY_EXCLUDES = ("dvc.lock",)

CODE_VERSION_KEY = "code_version"
GIT_COMMIT_KEY = "git_commit"
GIT_DIRTY_KEY = "git_dirty"
CONFIG_HASH_KEY = "config_hash"
CONFIG_KEY = "config"


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty: bool | None  # None when the code is not in a git work tree


def git_state(repo_dir: Path = CODE_REPO_ROOT) -> GitState:
    """HEAD commit and dirty flag of the git work tree at `repo_dir` ("unknown" outside git)."""
    try:
        commit = _git(repo_dir, "rev-parse", "HEAD")
        excludes = [f":(exclude){path}" for path in GIT_DIRTY_EXCLUDES]
        changes = _git(repo_dir, "status", "--porcelain", "--", ".", *excludes)
    except (OSError, subprocess.CalledProcessError):
        return GitState(commit="unknown", dirty=None)
    return GitState(commit=commit, dirty=bool(changes))


def _git(repo_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo_dir), *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a (resolved) config; `None` hashes like `{}`."""
    canonical = json.dumps(config or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def current_asset_context() -> dg.AssetExecutionContext | None:
    """The asset execution context in scope, or None when called outside an asset (unit tests)."""
    try:
        return dg.AssetExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return None


def asset_code_version(context: dg.AssetExecutionContext) -> str | None:
    return context.assets_def.code_versions_by_key.get(context.asset_key)


def upstream_keys(context: dg.AssetExecutionContext) -> list[dg.AssetKey]:
    """The assets this asset reads (its dependencies), sorted by key."""
    return sorted(context.assets_def.asset_deps.get(context.asset_key, ()), key=lambda k: k.to_user_string())


def provenance_metadata(artifact_path: Path) -> dict[str, Any]:
    """Code version, git state, config hash and (when on) DVC record of the asset being materialized."""
    context = current_asset_context()
    if context is None:
        return {}
    if asset_code_version(context) is None:
        raise dg.Failure(
            f"asset {context.asset_key.to_user_string()} has no explicit code_version; "
            'set code_version="1" on its @dg.asset so lineage can tell code changes apart'
        )
    git = git_state()  # per materialization: a long-lived process may see new commits
    config = context.op_config
    metadata: dict[str, Any] = {
        CODE_VERSION_KEY: asset_code_version(context),
        GIT_COMMIT_KEY: git.commit,
        GIT_DIRTY_KEY: dg.MetadataValue.bool(bool(git.dirty)) if git.dirty is not None else "unknown",
        CONFIG_HASH_KEY: config_hash(config),
        CONFIG_KEY: dg.MetadataValue.json(config or {}),
    }
    metadata.update(dvc_record_metadata(artifact_path))
    return metadata


def dvc_record_metadata(artifact_path: Path) -> dict[str, Any]:
    """Record the artifact of the asset being materialized with DVC (when tracking is on).

    Also for an output that re-emits an earlier artifact (an incremental run reusing it), so that
    `current/` and dvc.lock follow whatever Dagster's latest materialization points to.
    """
    from pipeline.storage import dvc as dvc_tracking

    context = current_asset_context()
    tracking = dvc_tracking.tracking_for(artifact_path) if context is not None else None
    if tracking is None:
        return {}
    asset_name = context.asset_key.to_user_string()
    context.log.info(f"recording {asset_name} with DVC in {tracking.root}")
    record = tracking.record(asset_name, artifact_path, [k.to_user_string() for k in upstream_keys(context)])
    return record.as_metadata()
