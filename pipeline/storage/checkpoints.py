"""Resumable training: a stable scratch directory per (asset, settings, inputs) for trainer checkpoints.

A training asset killed mid-run (SIGKILL, OOM killer, preemption) leaves its checkpoints in
`<artifacts root>/<asset>/.checkpoints/<key>/`, where the key hashes the training settings and the
content of the input artifacts. The next run with the same settings and inputs finds the same
directory and resumes from the newest complete checkpoint instead of starting over; a run with
anything changed gets a different key and starts fresh. The directory is removed once the asset's
artifact is committed.

Two runs with the same key at once (two jobs started together) must not write the same
checkpoints: the first holds an flock on `<key>.lock`; the second trains in a private directory
of its own, without resuming, and removes it afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from pipeline.storage.artifacts import ArtifactStore, hold_lock, content_hash
from pipeline.storage.safety import confined_path

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = ".checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"  # the HF Trainer's name for `checkpoint-<global step>`
TRAINER_STATE_FILE = "trainer_state.json"  # written last in a Trainer checkpoint: present means complete
# `<UTC stamp>-<first 12 hex of the content hash>`, as `ArtifactStore` names committed artifacts.
ARTIFACT_DIR_NAME = re.compile(r"^\d{8}T\d{6}\d*Z-([0-9a-f]{12})$")


def input_identity(path: str | os.PathLike[str]) -> str:
    """What identifies an input artifact's content: the hash in its directory name, else a fresh hash.

    The directory name of a committed artifact already carries its content hash, which spares
    re-hashing a multi-gigabyte model on every run.
    """
    path = Path(path)
    match = ARTIFACT_DIR_NAME.match(path.name)
    return match.group(1) if match else content_hash(path)


def checkpoint_key(settings: Sequence[BaseModel], inputs: Mapping[str, str | os.PathLike[str]]) -> str:
    """A stable key for one training run: every settings model it runs with plus the content of every input artifact."""
    identity = {
        "settings": [model.model_dump(mode="json") for model in settings],
        "inputs": {name: input_identity(path) for name, path in sorted(inputs.items())},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def complete_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint whose trainer state was fully written, oldest first."""
    found = []
    for candidate in directory.glob(f"{CHECKPOINT_PREFIX}*"):
        step = candidate.name[len(CHECKPOINT_PREFIX):]
        if not (candidate.is_dir() and step.isdigit()):
            continue
        try:
            json.loads((candidate / TRAINER_STATE_FILE).read_text())
        except (OSError, ValueError):
            continue  # killed while saving this one
        found.append((int(step), candidate))
    return sorted(found)


@dataclass
class TrainingScratch:
    """Where a trainer writes its checkpoints, and the checkpoint to resume from (if any)."""

    directory: Path
    resume_from: Path | None
    shared: bool  # False: a private directory because another run holds this key

    @property
    def resume_step(self) -> int:
        return int(self.resume_from.name[len(CHECKPOINT_PREFIX):]) if self.resume_from else 0


def _drop_incomplete(directory: Path, newest_step: int) -> None:
    """Remove checkpoints newer than the newest complete one (step -1: none): a half-written one would be resumed from."""
    for candidate in directory.glob(f"{CHECKPOINT_PREFIX}*"):
        step = candidate.name[len(CHECKPOINT_PREFIX):]
        if step.isdigit() and int(step) > newest_step:
            logger.warning(f"removing incomplete checkpoint {candidate} (killed while it was being saved)")
            shutil.rmtree(candidate, ignore_errors=True)


@contextmanager
def training_scratch(store: ArtifactStore, asset_name: str, key: str) -> Iterator[TrainingScratch]:
    """A checkpoint directory for this key, kept if training fails and removed when the block succeeds."""
    root = store.asset_dir(asset_name) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    directory = confined_path(root, key)
    lock_file = root / (key + ".lock")
    lock = hold_lock(lock_file, blocking=False)
    if lock is None:
        directory = confined_path(root, f"{key}-private-{uuid.uuid4().hex[:8]}")
        logger.warning(f"another run is training {asset_name} with the same settings and inputs; "
                       f"checkpointing to {directory} (no resume)")
    directory.mkdir(exist_ok=True)
    checkpoints = complete_checkpoints(directory) if lock is not None else []
    newest_step, resume_from = checkpoints[-1] if checkpoints else (-1, None)
    _drop_incomplete(directory, newest_step)
    scratch = TrainingScratch(directory=directory, resume_from=resume_from, shared=lock is not None)
    try:
        yield scratch
        shutil.rmtree(directory, ignore_errors=True)
        if lock is not None:
            lock_file.unlink(missing_ok=True)
    finally:
        if lock is not None:
            os.close(lock)
        else:
            shutil.rmtree(directory, ignore_errors=True)  # nobody could resume from a private directory
