"""What `accelerate launch` runs on every rank: one training stage from a spec, reported to Dagster by rank 0.

    python -m accelerate.commands.launch ... -m pipeline.orchestration.launch_worker <spec.json>

Started by `pipeline.orchestration.launchers.run_under_accelerate` through Dagster Pipes; the spec format is
written there. Only rank 0 opens the Pipes connection: it streams training progress to the
Dagster event log and sends the stage's metrics as a custom message. Other ranks train silently
(and write nothing: the library functions leave artifacts, checkpoints and logs to the main process).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pipeline.orchestration.launchers import METRICS_MESSAGE


def die_with_parent() -> None:
    """Have the kernel SIGKILL this rank when its launcher dies (Linux).

    torchrun starts each rank in a session of its own, so killing the step's process group (a killed
    Dagster run, the OOM killer) would leave the ranks training on, writing checkpoints and a staging
    directory that nobody will commit.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the call above
        os.kill(os.getpid(), signal.SIGKILL)


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def progress_callback(pipes):
    """A TrainerCallback that forwards the trainer's logged losses to the Dagster event log."""
    from transformers import TrainerCallback

    class PipesProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                values = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
                pipes.log.info(f"step {state.global_step}/{state.max_steps}: {values}")

    return PipesProgress()


def training_scratch_from(spec: dict[str, Any]):
    """The asset's `TrainingScratch` (checkpoint directory, checkpoint to resume from), if it gave one."""
    from pipeline.storage.checkpoints import TrainingScratch

    checkpoints = spec["inputs"].get("checkpoints")
    if not checkpoints:
        return None
    return TrainingScratch(
        directory=Path(checkpoints["directory"]),
        resume_from=Path(checkpoints["resume_from"]) if checkpoints["resume_from"] else None,
        shared=checkpoints["shared"],
    )


def train_sft_stage(spec: dict[str, Any], pipes) -> dict[str, Any]:
    from pipeline.data.records import read_jsonl
    from pipeline.settings import SftSettings
    from pipeline.training.sft import train_sft

    return train_sft(
        Path(spec["inputs"]["base_model"]), read_jsonl(Path(spec["records"])), Path(spec["output_dir"]),
        SftSettings.model_validate(spec["settings"]), training_scratch_from(spec),
        callbacks=[progress_callback(pipes)] if pipes is not None else [],
    )


def train_reward_model_stage(spec: dict[str, Any], pipes) -> dict[str, Any]:
    from pipeline.data.records import read_jsonl
    from pipeline.settings import RewardSettings
    from pipeline.training.reward_model import train_reward_model

    return train_reward_model(
        Path(spec["inputs"]["sft_checkpoint"]), read_jsonl(Path(spec["records"])), Path(spec["output_dir"]),
        RewardSettings.model_validate(spec["settings"]), training_scratch_from(spec),
        callbacks=[progress_callback(pipes)] if pipes is not None else [],
    )


def train_ppo_stage(spec: dict[str, Any], pipes) -> dict[str, Any]:
    from pipeline.data.records import read_jsonl
    from pipeline.ppo.algorithm import progress_line, train_ppo
    from pipeline.settings import PpoSettings

    scratch = training_scratch_from(spec)
    on_step = (lambda record: pipes.log.info(progress_line(record))) if pipes is not None else None
    return train_ppo(
        Path(spec["inputs"]["sft_checkpoint"]), Path(spec["inputs"]["reward_model"]),
        [record["prompt"] for record in read_jsonl(Path(spec["records"]))], Path(spec["output_dir"]),
        PpoSettings.model_validate(spec["settings"]), checkpoint_dir=scratch.directory if scratch else None, on_step=on_step,
    )


# Each stage's training under `accelerate launch`: the same library call its asset makes in process.
STAGES: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
    "sft_checkpoint": train_sft_stage,
    "reward_model": train_reward_model_stage,
    "ppo_policy": train_ppo_stage,
}


def main(argv: list[str] | None = None) -> None:
    from dagster_pipes import open_dagster_pipes

    die_with_parent()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m pipeline.orchestration.launch_worker <spec.json>")
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("stage") not in STAGES:
        raise SystemExit(f"{argv[0]}: stage {spec.get('stage')!r} is not one of {sorted(STAGES)}")
    main_rank = is_main_rank()
    with (open_dagster_pipes() if main_rank else nullcontext()) as pipes:
        if pipes is not None:
            pipes.log.info(f"{spec['stage']}: rank 0 of {os.environ.get('WORLD_SIZE', '1')} started")
        metrics = STAGES[spec["stage"]](spec, pipes)
        if pipes is not None:
            pipes.report_custom_message({"kind": METRICS_MESSAGE, "metrics": metrics})


if __name__ == "__main__":
    main()
