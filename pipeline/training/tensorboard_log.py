"""TensorBoard event files for every training stage: one writer, used by our loops and handed to HF trainers.

Each training stage logs into `<scratch>/tensorboard/` while it trains and copies that directory into
its artifact (`publish_event_files`) before the artifact is committed, so `artifacts/<stage>/current/tensorboard/`
holds the curves of the run that made the artifact, and a reused stage keeps them.

The scratch is the directory that survives a killed run (the checkpoint directory of
`pipeline.storage.checkpoints`) where a stage resumes, else the staging directory itself. A resumed
run writes a new event file into the same directory with `purge_step` set to the first step it
trains again: TensorBoard then hides what the killed run logged past its last checkpoint, and the
curve continues from there instead of doubling back.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.storage.contract import TENSORBOARD_DIR


class ScalarLog:
    """Scalars of one training run, `tag -> value` at a global step; None and non-numbers are skipped."""

    def __init__(self, scratch: Path, resume_step: int = 0, enabled: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(scratch) / TENSORBOARD_DIR
        self.writer = None
        if not enabled:  # under `accelerate launch`, ranks other than 0 log nothing
            return
        if resume_step:
            _after_existing_event_files(self.log_dir)
        # purge_step: steps the killed run logged at or after it are superseded by this run's.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=resume_step + 1 if resume_step else None, flush_secs=10)

    def log(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self.writer.add_scalar(prefix + name, value, step)
        # On disk now: a run killed later must not lose the steps its last checkpoint covers.
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "ScalarLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _after_existing_event_files(log_dir: Path) -> None:
    """Wait, if needed, until the clock is past the newest event file's second.

    TensorBoard reads a directory's event files in name order, `events.out.tfevents.<unix second>.<host>.<pid>.<n>`,
    and the resumed run's purge must come after the killed run's steps. Files of one second are
    ordered by `<n>` as text (10 before 9), so a resumed file must carry a later second; only a run
    resumed within a second of the last write (a test) ever waits, for under a second.
    """
    seconds = [int(part) for path in log_dir.glob("events.out.tfevents.*")
               if (part := path.name.split(".")[3]).isdigit()]
    if seconds:
        while int(time.time()) <= max(seconds):
            time.sleep(0.05)


def trainer_callback(scratch: Path, resume_step: int = 0):
    """transformers' own TensorBoard callback, writing into `<scratch>/tensorboard/` (the trainer's
    `report_to` would write under its output_dir, and transformers 5 reads the directory from an
    environment variable only). Logs `train/loss`, `train/learning_rate`, `eval/loss`... at the global step."""
    from transformers.integrations import TensorBoardCallback

    main_process = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch` only the main process writes
    callback = TensorBoardCallback(tb_writer=ScalarLog(scratch, resume_step, enabled=main_process).writer)
    # Where it (re)opens a writer, e.g. when the trainer logs after training (the final `evaluate()`).
    callback.logging_dir = str(Path(scratch) / TENSORBOARD_DIR)
    return callback


def publish_event_files(scratch: Path, artifact_dir: Path) -> Path | None:
    """Copy `<scratch>/tensorboard/` into the artifact (nothing to do when the scratch is the artifact)."""
    source, target = Path(scratch) / TENSORBOARD_DIR, Path(artifact_dir) / TENSORBOARD_DIR
    if not source.is_dir():
        return None
    if source.resolve() != target.resolve():
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def read_scalars(log_dir: Path) -> dict[str, list]:
    """tag -> TensorBoard's scalar events (`step`, `value`, `wall_time`) as TensorBoard shows them:
    read by its own `EventAccumulator`, every event kept, the orphaned steps of a killed run purged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: list(accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"]}
