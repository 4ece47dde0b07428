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
directory holds `dvc.yaml` (the repository for `make run`; never a test's tmp dir), and DVC is
installed. `RLHF_DVC=off` turns it off; `RLHF_DVC=on` makes a missing DVC project or a missing DVC an
error (otherwise a warning). A project with `dvc.yaml` but no `.dvc/` is `dvc init`-ed on first use,
with a local remote `.dvc-remote/`.

DVC's repository lock allows one writer at a time: every write here holds an exclusive file lock
per DVC root, so parallel Dagster steps record one after another.

DVC runs as a command, in an environment of its own: `make install` creates `.venv-dvc/` (pinned by
`constraints-dvc.txt`) beside the pipeline's `.venv/`. DVC's hydra/omegaconf pin the antlr4 4.9
runtime, Dagster's asset-selection grammar needs 4.13, so the two cannot share an interpreter
(`dagster asset materialize --select ...` would crash). Every DVC operation here is one `dvc ...`
process, run in the DVC root; `dvc_executable` says which `dvc` that is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
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
ENV_BIN = "RLHF_DVC_BIN"  # the `dvc` executable, when not the repository's .venv-dvc/bin/dvc
TOOL_VENV = ".venv-dvc"  # made by `make install` in the repository
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
# `rlhf materialize` rather than `dagster asset materialize --select`: with no DAGSTER_HOME set (as under
# a bare `dvc repro`) it opens the repository's instance, .dagster/, not a throwaway one.
STAGE_COMMAND = "rlhf materialize {asset}"
# What `dvc` prints (to stderr, exit 255) when another DVC process holds the repository lock.
LOCK_ERROR_MARK = "Unable to acquire lock"
LOCK_ATTEMPTS = 5

_OFF = {"0", "off", "false", "no"}
_ON = {"1", "on", "true", "yes"}


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
    try:
        dvc_executable()
    except DvcTrackingError as error:
        if switch in _ON:
            raise
        logger.warning("DVC tracking is off for %s: %s", root, error)
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
                # DVC cannot commit a stage with a missing dependency (not even through its API's
                # `allow_missing`: its run cache hashes every dependency).
                logger.warning(
                    "DVC stage %s not committed: its inputs %s were never recorded with DVC; `dvc status` "
                    "shows the stage until they and this asset are re-materialized with DVC tracking on",
                    asset_name, missing,
                )
                return DvcRecord(asset_name, spec["outs"][0], None)
            self._dvc("commit", "--force", asset_name)
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
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure_repo(self) -> None:
        """`dvc init` (with a local default remote) if this project has no .dvc/ yet."""
        if (self.root / ".dvc").is_dir():
            return
        git_top = _git_toplevel(self.root)
        flags = ["--no-scm"] if git_top is None else ["--subdir"] if git_top != self.root else []
        self._dvc("init", "--quiet", *flags)
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
        """Upload every tracked artifact to the remote (default: the local `.dvc-remote/`); the number
        of files uploaded."""
        with self.writer_lock():
            output = self._dvc("push", *_remote_flag(remote))
        pushed = re.search(r"(\d+) files? pushed", output)
        return int(pushed.group(1)) if pushed else 0

    def pull(self, remote: str | None = None) -> None:
        """Restore every `current` directory from the remote."""
        with self.writer_lock():
            self._dvc("pull", "--force", *_remote_flag(remote))

    def status(self) -> dict[str, Any]:
        """`dvc status` of the pipeline: {} when every stage is up to date."""
        with self.writer_lock():
            return json.loads(self._dvc("status", "--json") or "{}")

    def stage_edges(self) -> set[tuple[str, str]]:
        """(upstream stage, downstream stage) pairs of `dvc dag`, in the asset graph's direction."""
        with self.writer_lock():
            dot = self._dvc("dag", "--dot")
        # `dvc dag --dot` draws edges from a stage's dependency to the stage: `"toy_data" -> "toy_model";`.
        return set(re.findall(r'^\s*"?([^"\s]+)"?\s*->\s*"?([^"\s;]+)"?', dot, flags=re.MULTILINE))

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

    def _dvc(self, *args: str) -> str:
        """Run `dvc ARGS...` in the DVC root; its stdout."""
        command = [dvc_executable(), *args]
        what = f"dvc {' '.join(args)}"
        for attempt in range(LOCK_ATTEMPTS):
            completed = subprocess.run(command, cwd=self.root, env=_dvc_environment(), capture_output=True, text=True)
            if completed.returncode == 0:
                if completed.stderr.strip():
                    logger.debug("%s: %s", what, completed.stderr.strip())
                return completed.stdout
            # Someone outside this pipeline (a `dvc` command) holds the repository lock; DVC itself
            # has already retried for a few seconds.
            if LOCK_ERROR_MARK in completed.stderr and attempt < LOCK_ATTEMPTS - 1:
                time.sleep(2.0 * (attempt + 1))
                continue
            output = (completed.stderr.strip() or completed.stdout.strip())[-2000:]
            raise DvcTrackingError(f"{what} failed in {self.root} (exit {completed.returncode}):\n{output}")
        raise AssertionError("unreachable")


def dvc_executable() -> str:
    """The `dvc` command: `$RLHF_DVC_BIN` if set, else `.venv-dvc/bin/dvc` of the checkout this code runs
    from (made by `make install`), else a `dvc` on PATH."""
    explicit = os.environ.get(ENV_BIN)
    if explicit:
        return explicit
    checkout = Path(__file__).resolve().parents[2] / TOOL_VENV / "bin" / "dvc"
    if checkout.is_file():
        return str(checkout)
    on_path = shutil.which("dvc")
    if on_path:
        return on_path
    raise DvcTrackingError(
        f"DVC is not installed: `make install` creates {TOOL_VENV}/ with it, or set {ENV_BIN} to a `dvc` "
        f"executable (or {ENV_SWITCH}=off to record nothing in DVC)"
    )


def _dvc_environment() -> dict[str, str]:
    env = dict(os.environ)
    # The pipeline's interpreter settings must not leak into DVC's.
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["DVC_NO_ANALYTICS"] = "1"  # nothing leaves the machine
    return env


def _remote_flag(remote: str | None) -> list[str]:
    return ["--remote", remote] if remote else []


def _git_toplevel(directory: Path) -> Path | None:
    try:
        top = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(top).resolve()
