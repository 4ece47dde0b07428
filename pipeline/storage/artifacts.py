"""Artifact directories: written in a staging place, moved into place only when complete, never overwritten.

Layout under the artifacts root: `<root>/<asset_name>/<UTC timestamp>-<hash prefix>/`. A new
materialization always gets a new directory, so a directory that an earlier materialization points
to is never touched again. A failed write leaves only a staging directory, which is removed; one
left by a killed process (SIGKILL, power loss) is swept by the next `stage` of that asset: each
staging directory is held by an flock on its `.lock` file, which the kernel releases when its
writer dies, so a live writer's staging directory (a concurrent run) is never swept.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pipeline.storage.safety import check_asset_name, confined_path

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


# Final directory -> its content hash, from the commit that created it in this process, so the step
# that wrote an artifact does not hash it a second time for its data version (seconds for a real model).
_COMMITTED_HASHES: dict[Path, str] = {}


def committed_content_hash(path: Path) -> str:
    """The content hash of an artifact: the one computed when this process committed it, else computed now."""
    return _COMMITTED_HASHES.pop(Path(path).resolve(), None) or content_hash(path)


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class ArtifactStore:
    """Versioned, atomically written artifact directories under one root."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def asset_dir(self, asset_name: str) -> Path:
        return confined_path(self.root, check_asset_name(asset_name))

    @contextmanager
    def stage(self, asset_name: str) -> Iterator["StagedArtifact"]:
        """Yield a staging directory to write into; on success it is moved to its final place."""
        parent = self.asset_dir(asset_name)
        parent.mkdir(parents=True, exist_ok=True)
        sweep_abandoned_staging(parent)
        staged = StagedArtifact(parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        # Lock before the directory exists, so a sweep never sees it unlocked.
        lock = hold_lock(_lock_path(staged.staging_dir), blocking=True)
        try:
            staged.staging_dir.mkdir()
            yield staged
            staged.final_dir = self._commit(staged.staging_dir, parent)
        finally:
            if staged.staging_dir.exists():
                shutil.rmtree(staged.staging_dir, ignore_errors=True)
            _lock_path(staged.staging_dir).unlink(missing_ok=True)
            os.close(lock)

    def _commit(self, staging_dir: Path, parent: Path) -> Path:
        digest = content_hash(staging_dir)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        final_dir = parent / f"{stamp}-{digest[:12]}"
        _fsync_tree(staging_dir)
        os.rename(staging_dir, final_dir)  # atomic on one filesystem; final_dir never existed
        _COMMITTED_HASHES[final_dir.resolve()] = digest
        return final_dir


class StagedArtifact:
    def __init__(self, staging_dir: Path):
        self.staging_dir = staging_dir
        self.final_dir: Path | None = None

    @property
    def path(self) -> Path:
        """Where to write now; after the `stage` block ends, where the artifact lives."""
        return self.final_dir or self.staging_dir


def _lock_path(staging_dir: Path) -> Path:
    return staging_dir.with_name(staging_dir.name + ".lock")


def hold_lock(path: Path, blocking: bool) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # a sweep unlinked the file while we waited: lock the new one


def sweep_abandoned_staging(parent: Path) -> list[Path]:
    """Remove staging directories (and their lock files) whose writer is gone; returns what was removed."""
    removed = []
    for staging_dir in sorted(parent.glob(f"{STAGING_PREFIX}*")):
        if staging_dir.name.endswith(".lock") or not staging_dir.is_dir():
            continue
        lock = hold_lock(_lock_path(staging_dir), blocking=False)
        if lock is None:
            continue  # a live writer (another run) holds it
        try:
            shutil.rmtree(staging_dir, ignore_errors=True)
            removed.append(staging_dir)
        finally:
            _lock_path(staging_dir).unlink(missing_ok=True)
            os.close(lock)
    for stale_lock in parent.glob(f"{STAGING_PREFIX}*.lock"):
        if not stale_lock.with_name(stale_lock.name[: -len(".lock")]).exists():
            lock = hold_lock(stale_lock, blocking=False)
            if lock is not None:
                stale_lock.unlink(missing_ok=True)
                os.close(lock)
    return removed


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
