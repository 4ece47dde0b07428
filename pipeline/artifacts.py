"""Artifact directories: written in a staging place, moved into place only when complete, never overwritten.

Layout under the artifacts root: `<root>/<asset_name>/<UTC timestamp>-<hash prefix>/`. A new
materialization always gets a new directory, so a directory that an earlier materialization points
to is never touched again. A failed write leaves only a staging directory, which is removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

STAGING_PREFIX = ".staging-"


def content_hash(path: Path) -> str:
    """sha256 over a file, or over a directory's relative file names and contents (sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class ArtifactStore:
    """Versioned, atomically written artifact directories under one root."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def asset_dir(self, asset_name: str) -> Path:
        if not asset_name or "/" in asset_name or asset_name.startswith("."):
            raise ValueError(f"invalid asset name for an artifact directory: {asset_name!r}")
        return self.root / asset_name

    @contextmanager
    def stage(self, asset_name: str) -> Iterator["StagedArtifact"]:
        """Yield a staging directory to write into; on success it is moved to its final place."""
        parent = self.asset_dir(asset_name)
        parent.mkdir(parents=True, exist_ok=True)
        staged = StagedArtifact(parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        staged.staging_dir.mkdir()
        try:
            yield staged
            staged.final_dir = self._commit(staged.staging_dir, parent)
        finally:
            if staged.staging_dir.exists():
                shutil.rmtree(staged.staging_dir, ignore_errors=True)

    def _commit(self, staging_dir: Path, parent: Path) -> Path:
        digest = content_hash(staging_dir)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        final_dir = parent / f"{stamp}-{digest[:12]}"
        _fsync_tree(staging_dir)
        os.rename(staging_dir, final_dir)  # atomic on one filesystem; final_dir never existed
        return final_dir


class StagedArtifact:
    def __init__(self, staging_dir: Path):
        self.staging_dir = staging_dir
        self.final_dir: Path | None = None

    @property
    def path(self) -> Path:
        """Where to write now; after the `stage` block ends, where the artifact lives."""
        return self.final_dir or self.staging_dir


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
