"""What every materialization records about where it came from: code, config, git state, inputs.

`provenance_metadata(context)` is part of every asset's output (`pipeline.orchestration.outputs.artifact_output`),
so every asset records the same keys (named in `pipeline.storage.contract`):

| key | what it is |
|---|---|
| `code_version` | the asset's explicit `code_version` (also Dagster's `dagster/code_version` tag) |
| `git_commit`, `git_dirty` | HEAD of the repository holding this code, and whether its tree had changes (`dvc.lock` aside) |
| `config_hash`, `config` | sha256 of the asset's resolved run config (canonical JSON), and the config itself |

`record_in_dvc` adds `dvc_stage`, `dvc_out`, `dvc_md5`: where DVC tracks the artifact and its DVC
hash, as in `dvc.lock` (when DVC tracking is on). Dagster itself adds, as event tags, the data
version (the content hash) and, for each input, the data version and event storage id of the
upstream materialization it read: `pipeline.orchestration.lineage` walks those.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.storage.contract import CODE_VERSION_KEY, CONFIG_HASH_KEY, CONFIG_KEY, GIT_COMMIT_KEY, GIT_DIRTY_KEY

CODE_REPO_ROOT = Path(__file__).resolve().parents[2]
# Bookkeeping that a pipeline run rewrites itself; changes to it do not make the code "dirty".
GIT_DIRTY_EXCLUDES = ("dvc.lock",)


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


def asset_code_version(context: dg.AssetExecutionContext) -> str | None:
    return context.assets_def.code_versions_by_key.get(context.asset_key)


def upstream_keys(context: dg.AssetExecutionContext) -> list[dg.AssetKey]:
    """The assets this asset reads (its dependencies), sorted by key."""
    return sorted(context.assets_def.asset_deps.get(context.asset_key, ()), key=lambda k: k.to_user_string())


def unloaded_upstream_keys(assets_def: dg.AssetsDefinition) -> set[dg.AssetKey]:
    """Upstream assets declared with `deps=` (no input value is loaded): the asset reads them, if at all,
    only when its config says so, as the training data assets read `eval_prompts` to drop leaks."""
    return {
        key for name, key in assets_def.keys_by_input_name.items()
        if assets_def.node_def.input_def_named(name).dagster_type.is_nothing
    }


def provenance_metadata(context: dg.AssetExecutionContext) -> dict[str, Any]:
    """Code version, git state and config hash of the asset being materialized."""
    if asset_code_version(context) is None:
        raise dg.Failure(
            f"asset {context.asset_key.to_user_string()} has no explicit code_version; "
            'set code_version="1" on its @dg.asset so lineage can tell code changes apart'
        )
    git = git_state()  # per materialization: a long-lived process may see new commits
    config = context.op_config
    return {
        CODE_VERSION_KEY: asset_code_version(context),
        GIT_COMMIT_KEY: git.commit,
        GIT_DIRTY_KEY: dg.MetadataValue.bool(bool(git.dirty)) if git.dirty is not None else "unknown",
        CONFIG_HASH_KEY: config_hash(config),
        CONFIG_KEY: dg.MetadataValue.json(config or {}),
    }
