"""DVC tracks the same artifacts as Dagster, so `dvc status`, `dvc dag`, `dvc push/pull` work on them.

How DVC outs relate to the versioned artifact directories: Dagster writes each materialization to a
new, never-overwritten `<artifacts>/<asset>/<stamp>-<hash>/`. DVC needs one stable path per stage,
so after each materialization the asset's version directory is mirrored (hard links, a copy across
filesystems) to `<artifacts>/<asset>/current`, and the asset's stage in `dvc.yaml` (out:
`<asset>/current`, deps: the `current` of each asset it reads) is `dvc commit`-ted. That puts the
files in the DVC cache (hard-linked, so no extra bytes) and writes the stage's hashes to
`dvc.lock`; the DVC hash is also written to the materialization's metadata (`dvc_md5`), so the two
records can be compared. Older versions stay in the DVC cache and in git history of `dvc.lock`.

When tracking is on: when `$RLHF_DVC_ROOT` names a directory, or when the artifacts root's parent
directory holds `dvc.yaml` (the repository for `make run`; never a test's tmp dir).
`RLHF_DVC=off` turns it off; `RLHF_DVC=on` makes a missing DVC project an error. A project with
`dvc.yaml` but no `.dvc/` is `dvc init`-ed on first use, with a local remote `.dvc-remote/`.

DVC's repository lock allows one writer at a time: every write here holds an exclusive file lock
per DVC root, so parallel Dagster steps record one after another.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.storage.contract import CURRENT_DIR_NAME, DVC_MD5_KEY, DVC_OUT_KEY, DVC_STAGE_KEY

logger = logging.getLogger(__name__)

DVC_YAML = "dvc.yaml"
DVC_LOCK = "dvc.lock"
ENV_SWITCH = "RLHF_DVC"
ENV_ROOT = "RLHF_DVC_ROOT"
DEFAULT_REMOTE_NAME = "local"
DEFAULT_REMOTE_DIR = ".dvc-remote"
# Hard links keep one copy of each file across the version dir, `current` and the DVC cache; DVC
# makes linked files read-only, which suits artifacts that are never modified.
DEFAULT_CACHE_TYPE = "hardlink,copy"
DEFAULT_DVC_CONFIG = f"""[core]
    remote = {DEFAULT_REMOTE_NAME}
    analytics = false
[cache]
    type = "{DEFAULT_CACHE_TYPE}"
['remote "{DEFAULT_REMOTE_NAME}"']
    url = ../{DEFAULT_REMOTE_DIR}
"""
# Not `dagster asset materialize --select`: Dagster's selection parser needs antlr4 4.13 and DVC's
# hydra pins 4.9, so string selections fail in this environment.
STAGE_COMMAND = "rlhf materialize {asset}"

_OFF = {"0", "off", "false", "no"}
_ON = {"1", "on", "true", "yes"}

os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # nothing leaves the machine


class DvcTrackingError(RuntimeError):
    pass


@dataclass(frozen=True)
class DvcRecord:
    stage: str
    out: str  # relative to the DVC root, as in dvc.yaml / dvc.lock
    md5: str | None  # DVC's directory hash ("<md5>.dir"), as in dvc.lock; None under `dvc repro`

    def as_metadata(self) -> dict[str, Any]:
        metadata = {DVC_STAGE_KEY: self.stage, DVC_OUT_KEY: self.out}
        if self.md5 is not None:
            metadata[DVC_MD5_KEY] = self.md5
        return metadata


def find_dvc_project(artifacts_root: Path) -> Path | None:
    """The directory holding the artifacts root, if it has a dvc.yaml.

    Only the direct parent: an artifacts root nested deeper in a DVC project (a scratch dir inside
    the repository) must not rewrite that project's stages.
    """
    parent = Path(artifacts_root).parent
    return parent if (parent / DVC_YAML).is_file() else None


def tracking_for(artifact_path: Path) -> DvcTracking | None:
    """The DVC project that tracks this artifact, or None when tracking is off (see module doc)."""
    switch = os.environ.get(ENV_SWITCH, "auto").strip().lower()
    if switch in _OFF:
        return None
    artifacts_root = Path(artifact_path).resolve().parent.parent
    explicit = os.environ.get(ENV_ROOT)
    root = Path(explicit).resolve() if explicit else find_dvc_project(artifacts_root)
    if root is None:
        if switch in _ON:
            raise DvcTrackingError(
                f"{ENV_SWITCH}={switch} but no dvc.yaml at or above the artifacts root {artifacts_root}; "
                f"set {ENV_ROOT} or write a dvc.yaml there"
            )
        return None
    return DvcTracking(root)


def stage_spec(asset_name: str, upstream_names: Sequence[str], artifacts_dir: str) -> dict[str, Any]:
    """The dvc.yaml stage of one asset: reads its inputs' `current`, writes its own."""
    spec: dict[str, Any] = {"cmd": STAGE_COMMAND.format(asset=asset_name)}
    if upstream_names:
        spec["deps"] = [f"{artifacts_dir}/{name}/{CURRENT_DIR_NAME}" for name in sorted(upstream_names)]
    spec["outs"] = [f"{artifacts_dir}/{asset_name}/{CURRENT_DIR_NAME}"]
    return spec


def dvc_yaml_for_graph(graph: dict[str, Sequence[str]], artifacts_dir: str = "artifacts") -> dict[str, Any]:
    """dvc.yaml contents for an asset graph given as {asset: [assets it reads]} (in that order)."""
    return {"stages": {asset: stage_spec(asset, deps, artifacts_dir) for asset, deps in graph.items()}}


def publish_current(version_dir: Path) -> Path:
    """Mirror a version directory to `<asset dir>/current` (hard links; copies across filesystems)."""
    version_dir = Path(version_dir)
    asset_dir = version_dir.parent
    current = asset_dir / CURRENT_DIR_NAME
    incoming = asset_dir / f".{CURRENT_DIR_NAME}-incoming-{uuid.uuid4().hex}"
    shutil.copytree(version_dir, incoming, copy_function=_link_or_copy)
    if current.exists():
        outgoing = asset_dir / f".{CURRENT_DIR_NAME}-outgoing-{uuid.uuid4().hex}"
        os.rename(current, outgoing)
        os.rename(incoming, current)
        shutil.rmtree(outgoing, ignore_errors=True)
    else:
        os.rename(incoming, current)
    return current


def restore_version(version_dir: Path, expected_hash: str) -> bool:
    """Re-create a missing version directory from `<asset dir>/current` (e.g. after `dvc pull`).

    Only when `current` holds exactly that version (its content hash matches); returns whether the
    version directory exists afterwards.
    """
    from pipeline.storage.artifacts import content_hash

    version_dir = Path(version_dir)
    if version_dir.exists():
        return True
    current = version_dir.parent / CURRENT_DIR_NAME
    if not current.is_dir() or content_hash(current) != expected_hash:
        return False
    incoming = version_dir.parent / f".restore-{uuid.uuid4().hex}"
    shutil.copytree(current, incoming, copy_function=_link_or_copy)
    os.rename(incoming, version_dir)
    return True


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


class DvcTracking:
    """One DVC project (a directory with dvc.yaml) that records the artifacts under it."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def record(self, asset_name: str, version_dir: Path, upstream_names: Sequence[str]) -> DvcRecord:
        """Publish the version as `current`, make its stage match the asset graph, `dvc commit` it."""
        version_dir = Path(version_dir).resolve()
        artifacts_dir = self._relative(version_dir.parent.parent)
        spec = stage_spec(asset_name, upstream_names, artifacts_dir)
        started = time.monotonic()
        with self.writer_lock():
            self.ensure_repo()
            publish_current(version_dir)
            self._sync_stage(asset_name, spec)
            if os.environ.get("DVC_STAGE"):
                # Running under `dvc repro`, which holds the repo lock and commits the stage (and
                # computes its hash) after this command exits.
                return DvcRecord(asset_name, spec["outs"][0], None)
            missing = [dep for dep in spec.get("deps", []) if not (self.root / dep).exists()]
            if missing:
                logger.warning(
                    "DVC stage %s: inputs %s were never recorded with DVC; `dvc status` will show them "
                    "until they are re-materialized with DVC tracking on", asset_name, missing,
                )
            self._with_repo(lambda repo: repo.commit(asset_name, force=True, allow_missing=bool(missing)))
            md5 = self.locked_out_hash(asset_name)
        logger.info("DVC recorded %s (%s) in %.1fs", asset_name, md5, time.monotonic() - started)
        return DvcRecord(asset_name, spec["outs"][0], md5)

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        # In the temp dir, not in .dvc/: it must exist before `dvc init` creates .dvc/.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        lock_path = Path(tempfile.gettempdir()) / f"rlhf-dvc-{digest}.lock"
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                _point_dvc_logging_at_current_streams()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure_repo(self) -> None:
        """`dvc init` (with a local default remote) if this project has no .dvc/ yet."""
        if (self.root / ".dvc").is_dir():
            return
        from dvc.repo import Repo

        git_top = _git_toplevel(self.root)
        Repo.init(str(self.root), no_scm=git_top is None, subdir=git_top is not None and git_top != self.root)
        self._configure_defaults(no_scm=git_top is None)
        if git_top is not None:
            gitignore = self.root / ".gitignore"
            lines = gitignore.read_text().splitlines() if gitignore.exists() else []
            if f"/{DEFAULT_REMOTE_DIR}/" not in lines:
                with open(gitignore, "a") as handle:
                    handle.write(f"/{DEFAULT_REMOTE_DIR}/\n")
        logger.info("initialised a DVC project in %s (remote %s)", self.root, self.root / DEFAULT_REMOTE_DIR)

    def _configure_defaults(self, no_scm: bool) -> None:
        # Written as text: DVC's config API rewrites a relative remote URL against the process's
        # working directory, and relative URLs in the file are resolved against .dvc/.
        config = DEFAULT_DVC_CONFIG
        if no_scm:
            config = config.replace("[core]\n", "[core]\n    no_scm = true\n", 1)
        (self.root / ".dvc" / "config").write_text(config)

    def locked_out_hash(self, stage: str) -> str:
        """The md5 of a stage's out in dvc.lock."""
        lock = self.root / DVC_LOCK
        try:
            return yaml.safe_load(lock.read_text())["stages"][stage]["outs"][0]["md5"]
        except (OSError, KeyError, TypeError, IndexError) as error:
            raise DvcTrackingError(f"{lock} has no out hash for stage {stage!r}") from error

    def push(self, remote: str | None = None) -> int:
        """Upload every tracked artifact to the remote (default: the local `.dvc-remote/`)."""
        with self.writer_lock():
            return self._with_repo(lambda repo: repo.push(remote=remote))

    def pull(self, remote: str | None = None) -> Any:
        """Restore every `current` directory from the remote."""
        with self.writer_lock():
            return self._with_repo(lambda repo: repo.pull(remote=remote, force=True))

    def status(self) -> dict[str, Any]:
        """`dvc status` of the pipeline: {} when every stage is up to date."""
        with self.writer_lock():
            return self._with_repo(lambda repo: repo.status())

    def stage_edges(self) -> set[tuple[str, str]]:
        """(upstream stage, downstream stage) pairs of `dvc dag`, in the asset graph's direction."""

        def edges(repo):
            # DVC's graph points from a stage to the stages it depends on.
            return {(dependency.name, stage.name) for stage, dependency in repo.index.graph.edges}

        with self.writer_lock():
            return self._with_repo(edges)

    def _sync_stage(self, asset_name: str, spec: dict[str, Any]) -> None:
        """Add or correct the asset's stage in dvc.yaml (other stages and their order are kept)."""
        path = self.root / DVC_YAML
        document = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
        stages = document.setdefault("stages", {})
        if stages.get(asset_name) == spec:
            return
        stages[asset_name] = spec
        path.write_text(yaml.safe_dump(document, sort_keys=False))

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            raise DvcTrackingError(
                f"artifacts root {path} is outside the DVC project {self.root}; DVC can only track "
                f"paths inside it (set {ENV_ROOT} to a directory containing the artifacts root, or {ENV_SWITCH}=off)"
            ) from None

    def _with_repo(self, action, attempts: int = 5):
        from dvc.lock import LockError
        from dvc.repo import Repo

        for attempt in range(attempts):
            try:
                with _working_directory(self.root), Repo(str(self.root)) as repo:
                    return action(repo)
            except LockError:
                # Someone outside this pipeline (a `dvc` command) holds the repository lock.
                if attempt == attempts - 1:
                    raise
                time.sleep(2.0 * (attempt + 1))


def _point_dvc_logging_at_current_streams() -> None:
    """`import dvc` binds its log handlers to the sys.stdout/stderr of that moment; a stream swapped
    out since (Dagster's compute-log capture, pytest's capture) would be closed, and DVC raises on a
    failed log write. Re-point them at the current streams before each use."""
    import logging

    import dvc  # noqa: F401  (its import installs the handlers this re-points)

    for name in ("dvc", "dvc_objects", "dvc_data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                # Not setStream(): it flushes the old stream, which may be closed.
                handler.acquire()
                try:
                    handler.stream = sys.stderr if handler.level >= logging.WARNING else sys.stdout
                finally:
                    handler.release()


@contextmanager
def _working_directory(directory: Path) -> Iterator[None]:
    """Run DVC from its root: it resolves stage names and dependency paths against the cwd."""
    previous = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def _git_toplevel(directory: Path) -> Path | None:
    try:
        top = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(top).resolve()
