"""One progress bar per long stage (pretraining, SFT, the reward model, PPO, the evaluation), on stderr.

Dagster writes a step's stderr to its compute-log file and mirrors it to the terminal, so a bar
cannot know whether a person is watching: it is always drawn (a log file gets one line per bar,
redrawn in place with carriage returns, at most once a second); `TQDM_DISABLE=1` turns them all
off. The libraries' own bars (weight loading, dataset maps, the
Trainer's train and eval bars) are turned off where the code location loads
(`pipeline.definitions`) and in `trainer_progress`, so a stage draws one bar, not several interleaved.
"""

from __future__ import annotations

from typing import Any


def stage_progress(total: int, description: str, unit: str = "step", initial: int = 0, enabled: bool = True):
    """A tqdm bar for one stage's loop; update it with `.update(n)` and `.set_postfix(...)`, close it at the end.
    `enabled=False` (ranks other than 0 under `accelerate launch`) draws nothing. `disable` is passed only
    then: an explicit argument would override `TQDM_DISABLE=1`, which tqdm reads as the default."""
    from tqdm.auto import tqdm

    off = {} if enabled else {"disable": True}
    return tqdm(total=total, initial=initial, desc=description, unit=unit, mininterval=1.0, dynamic_ncols=True, **off)


def trainer_progress(description: str):
    """A TrainerCallback drawing one bar over a HF Trainer's optimizer steps, the last logged loss beside it.

    Use with `disable_tqdm=True` (the Trainer's own bars) and pass it in `callbacks`; the
    Trainer's `PrinterCallback`, which prints every log dict when its bars are off, is removed
    by `quiet_trainer(trainer)`.
    """
    from transformers import TrainerCallback

    class TrainerProgress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = stage_progress(state.max_steps, description, initial=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainerProgress()


def quiet_trainer(trainer) -> None:
    """Remove the Trainer's PrinterCallback (it prints each log dict when `disable_tqdm` is on)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
